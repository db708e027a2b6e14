"""The design space of PR 13805 (docs/design-space.md): the rejected alternative loses what the
PR said it loses, the two-phase reservation keeps every property; found, not stated."""

from __future__ import annotations

import json

from kvspec.config import Config
from kvspec.policy import get_policy
from kvspec.spec.invariants import PROPERTY_IDS, get_property
from kvspec.spec.model import Model
from kvspec.spec.prove import bmc, houdini, recheck_certificate
from kvspec.spec.state import ACTIVE, SUSPENDED, State
from kvspec.spec.trace import Trace, replay

NEW = ("DECISION-IS-ADMISSION", "BUDGET-CONSISTENT")


def test_gate_before_resume_loses_decision_and_budget_consistency() -> None:
    pol = get_policy("gate-before-resume")
    found = bmc(Config(), pol, [get_property(p) for p in NEW], 6)
    assert sorted(found) == sorted(NEW)
    budget = [s.action for s in found["BUDGET-CONSISTENT"].steps]
    assert budget == ["arrive", "prepare_context", "decide"]   # the gate counts a candidate
    decision = found["DECISION-IS-ADMISSION"]
    names = [s.action for s in decision.steps]
    # the decision comes first; the survivor's resume + resize then fails: not forwarded
    assert names.index("decide") < names.index("resize_context")
    assert "forward" not in names and names[-1] == "end_iteration"
    resize = next(s for s in decision.steps if s.action == "resize_context")
    assert resize.result is False


def test_every_property_is_inductive_under_reserve_commit() -> None:
    pol = get_policy("reserve-commit")
    ind = houdini(Config(), pol)
    assert ind.complete and set(ind.properties) == set(PROPERTY_IDS)
    assert recheck_certificate(Config(), pol, ind.certificate).unsat


def _grow_and_defer(name: str, wait: bool, can_queue: bool) -> tuple[Model, State, State]:
    m = Model(Config(max_rewind_len=0, num_gpu_pages=4), get_policy(name))
    s = m.step(m.initial(), "arrive", 0, prompt_len=5, chunk_size=4, draft_len=0).state
    s = m.step(s, "prepare_context", 0).state
    s = m.step(s, "resize_context", 0).state
    return m, s, m.step(s, "decide", 0, wait=wait, can_queue=can_queue).state


def test_reserve_commit_releases_a_deferred_reservation_without_shrinking() -> None:
    m, grown, s = _grow_and_defer("reserve-commit", wait=True, can_queue=False)
    q = grown.reqs[0]
    assert (q.capacity, q.reserved, grown.gpu_free) == (0, 2, 2)  # reserved, not in the cache
    out = m.step(s, "revert_allocate_context", 0)
    q = out.state.reqs[0]
    assert out.result is True and (q.capacity, q.reserved, out.state.gpu_free) == (0, 0, 4)
    assert q.status == ACTIVE                    # pre-resize capacity 0: not suspended
    end = m.step(out.state, "end_iteration", 0).state
    assert m.violations(end) == []               # SWA-REWIND with max_rewind_len 0 included


def test_reserve_commit_commits_only_for_a_queued_kept_request() -> None:
    m, _, s = _grow_and_defer("reserve-commit", wait=False, can_queue=True)
    q = s.reqs[0]
    assert (q.capacity, q.reserved, q.kept) == (4, 0, True)
    s = m.step(s, "forward", 0, accepted=0).state
    s = m.step(s, "end_iteration", 0).state
    assert m.violations(s) == [] and s.reqs[0].pos == 4


def test_the_pr_shape_under_swa_is_refused_where_reserve_commit_is_not() -> None:
    m, _, s = _grow_and_defer("pr13805-reviewed-swa", wait=True, can_queue=False)
    s = m.step(s, "revert_allocate_context", 0).state
    assert "SWA-REWIND" in m.violations(s)


def test_gate_before_resume_nominates_without_resuming() -> None:
    m = Model(Config(), get_policy("gate-before-resume"))
    s = m.step(m.initial(), "arrive", 0, prompt_len=2, chunk_size=2, draft_len=0).state
    out = m.step(s, "prepare_context", 0)
    q = out.state.reqs[0]
    assert out.result is True and q.has_cache and q.status == SUSPENDED and q.prepared
    assert not m.enabled(out.state, "resize_context", 0)       # not before the decision
    s = m.step(out.state, "decide", 0, wait=False, can_queue=True).state
    out = m.step(s, "resize_context", 0)
    assert out.result is True and out.state.reqs[0].status == ACTIVE


def test_a_trace_written_before_the_design_switches_still_loads_with_them_off() -> None:
    pol = get_policy("pr14849").replace(name="custom")
    trace = bmc(Config(), pol, [get_property("NO-DEFERRED-HOLD")], 6)["NO-DEFERRED-HOLD"]
    lines = trace.to_jsonl().splitlines()
    header = json.loads(lines[0])
    for switch in ("gate_before_resume", "reserve_context"):
        del header["policy"][switch]
    old = Trace.from_jsonl("\n".join([json.dumps(header), *lines[1:]]))
    assert old.policy == pol
    assert "NO-DEFERRED-HOLD" in replay(old).final_violations
