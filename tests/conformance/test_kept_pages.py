"""The kept-page oracle: a manager that releases the wrong pages on a shrink keeps counts,
ids and conservation consistent; only comparing each page table with the previous step's
catches it."""

from __future__ import annotations

from typing import Any

from kvspec.config import Config
from kvspec.conformance import broken, impls
from kvspec.conformance.lockstep import Lockstep
from kvspec.policy import Policy, get_policy

releases_the_head = broken.releases_the_head


CONFIG = Config(tokens_per_block=1, num_gpu_pages=10, num_requests=1, max_prompt_len=2,
                max_draft_len=2)
# a generation growth of 1 + 2 drafts, then the can_queue skip reverts it: a shrink by 3
STEPS: list[tuple[str, int, dict[str, Any]]] = [
    ("arrive", 0, dict(prompt_len=2, chunk_size=2, draft_len=2)),
    ("prepare_context", 0, {}), ("resize_context", 0, {}),
    ("decide", 0, dict(wait=False, can_queue=True)), ("forward", 0, dict(accepted=0)),
    ("end_iteration", 0, {}),
    ("try_allocate_generation", 0, {}), ("decide", 0, dict(wait=False, can_queue=False)),
    ("revert_allocate_generation", 0, {}),
]


def _run(factory: Any) -> Any:
    lock = Lockstep(factory, CONFIG, get_policy("pr13805-reviewed"))
    for name, r, args in STEPS:
        div = lock.step(name, r, args)
        if div is not None:
            return div
    return lock.final_check()


def test_the_reference_keeps_its_pages() -> None:
    assert _run(impls.reference) is None


def test_releasing_the_wrong_pages_is_caught_at_the_shrink() -> None:
    div = _run(releases_the_head)
    assert div is not None
    text = div.render()
    assert div.action.startswith("revert_allocate_generation")
    assert "page-table entry 0 (tokens of block 0) changed from GPU page" in text
    # nothing else differs: counts, ids and conservation are consistent
    assert {d.name for d in div.diffs} == {"structure"}


def test_the_torch_manager_keeps_every_forwarded_token_through_demotion_and_recall() -> None:
    from sample_traces import EVICTION_CONFIG, EVICTION_PROLOGUE

    lock = Lockstep(impls.gpu, EVICTION_CONFIG, get_policy("pr14849"))
    assert lock.driver.contents  # write_tokens / read_tokens offered: the content oracle runs
    for st in EVICTION_PROLOGUE:
        assert lock.step(st.action, st.r, dict(st.args)) is None
    assert lock.step("resize_context", 2, {}) is None  # demotes 2 of r0's and r1's pages
    for r in (0, 1):
        assert lock.step("resume_request", r, {}) is None  # recalls them
    assert lock.driver.tags[0] and lock.driver.tags[1]
    assert lock.final_check() is None


def _forgets_on_recall(config: Config, policy: Policy) -> Any:
    """The torch manager, except that a recall from the host copies nothing back."""
    m = impls.gpu(config, policy)
    m.kv.to_gpu = lambda host_pages, gpu_pages: None
    return m


def test_a_recall_that_loses_the_kv_is_caught_by_the_content_oracle() -> None:
    from sample_traces import EVICTION_CONFIG, EVICTION_PROLOGUE

    lock = Lockstep(_forgets_on_recall, EVICTION_CONFIG, get_policy("pr14849"))
    for st in EVICTION_PROLOGUE:
        assert lock.step(st.action, st.r, dict(st.args)) is None
    assert lock.step("resize_context", 2, {}) is None
    victim = next(r for r in (0, 1) if lock.state.reqs[r].host_pages)
    div = lock.step("resume_request", victim, {})
    assert div is not None
    text = div.render()
    assert f"slot {victim}: token" in text and "the forward wrote" in text
    assert {d.name for d in div.diffs} == {"structure"}  # counts and tables all agree
