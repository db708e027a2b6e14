"""Coverage in every report (issue 10, deliverable 5): branches reached, witnesses hit, a
warning for what was never reached, the model's own violations in both tiers."""

from __future__ import annotations

from kvspec.config import Config
from kvspec.conformance import impls
from kvspec.conformance.check import run_check
from kvspec.policy import get_policy
from kvspec.spec.coverage import BRANCHES, Coverage, branches_taken
from kvspec.spec.model import Model

POLICY = get_policy("pr13805-reviewed")
CONFIG = Config(num_requests=1, tokens_per_block=1, num_gpu_pages=4, num_host_pages=1,
                max_prompt_len=2, max_draft_len=0)
# a request grows, is deferred (batch waiting) and reverted, then runs its prompt
STEPS = [("arrive", 0, dict(prompt_len=2, chunk_size=2, draft_len=0)),
         ("prepare_context", 0, {}), ("resize_context", 0, {}),
         ("decide", 0, dict(wait=True, can_queue=True)), ("revert_allocate_context", 0, {}),
         ("end_iteration", 0, {})]


def _covered(steps: list[tuple[str, int, dict[str, object]]]) -> Coverage:
    m = Model(CONFIG, POLICY)
    cov = Coverage()
    cov.ran(POLICY, (CONFIG,))
    s = m.initial()
    for name, r, args in steps:
        out = m.step(s, name, r, **args)
        cov.add(m.ctx, name, r, s, out.state, None if out.result is None else bool(out.result))
        s = out.state
    return cov


def test_each_transition_names_the_branches_it_took() -> None:
    cov = _covered(STEPS)
    assert cov.branches["prepare_context/creates the cache"] == 1
    assert cov.branches["resize_context/grows"] == 1
    assert cov.branches["decide/waits (batch waiting)"] == 1
    # the revert of a growth from 0 lands on capacity 0 and keeps the cache ACTIVE
    assert cov.branches["revert_allocate_context/SHRINK branch to 0"] == 1
    assert cov.branches["end_iteration/called"] == 1  # no declared branch: one, "called"
    assert cov.steps == len(STEPS)
    assert cov.witnesses["REVERT-FLOOR"] == 1  # "a revert shrinks a cache"


def test_branches_never_reached_are_listed_and_warned_about() -> None:
    cov = _covered(STEPS)
    missing = cov.missing()
    assert "resize_context/fails" in missing and "resize_context/grows" not in missing
    # batch waiting is reachable only under a config with a batch-wait timeout
    assert ("decide/waits (batch waiting)" in cov.expected()) is (
        CONFIG.batch_wait_timeout_iters > 0)
    lines = cov.lines()
    assert lines[0].startswith(f"coverage: {len(STEPS)} steps")
    assert any("branches never reached" in ln and "resize_context/fails" in ln for ln in lines)


def test_branch_keys_are_unique_and_name_an_action() -> None:
    keys = [b.key for b in BRANCHES]
    assert len(keys) == len(set(keys))
    names = {a.name for a in Model(CONFIG, POLICY).actions}
    assert {b.action for b in BRANCHES} <= names
    assert branches_taken("no_such_action", 0, Model(CONFIG, POLICY).initial(),
                          Model(CONFIG, POLICY).initial(), None) == ["no_such_action/called"]


def test_a_check_report_shows_coverage_and_warns_about_gaps() -> None:
    tiny = run_check(impls.reference, POLICY, examples=1, walk_length=5, tiers=("walker",),
                     config=CONFIG)
    text = tiny.render()
    assert tiny.ok and "coverage: 5 steps" in text
    assert "warning: branches never reached" in text
    full = run_check(impls.reference, POLICY, examples=40, hypothesis_examples=10)
    cov = full.coverage
    assert cov.steps == full.steps and set(cov.policies) == {POLICY}
    assert len(cov.configs) == 8  # the built-in configs, cycled by both tiers
    reached = [k for k in cov.expected() if cov.branches[k]]
    assert len(reached) > len(_covered(STEPS).expected()) // 2
    warning = [ln for ln in full.render().splitlines() if "branches never reached" in ln]
    assert warning == ([] if not cov.missing() else
                       ["    warning: branches never reached (an OK says nothing about"
                        " them): " + ", ".join(cov.missing())])


def test_the_hypothesis_tier_lists_the_models_own_violations() -> None:
    rep = run_check(impls.reference, "pr14849", examples=30, tiers=("hypothesis",),
                    hypothesis_examples=30, seed=1)
    assert rep.ok
    assert rep.tiers[0].model_violations == {"NO-DEFERRED-HOLD"}
    assert rep.tiers[0].coverage.steps > 0
