"""The reference manager and executor under the design-space presets (docs/design-space.md):
the two-phase reservation (reserve-commit) and PR 13805's rejected alternative
(gate-before-resume)."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from kvspec.config import Config
from kvspec.errors import ProtocolError
from kvspec.policy import get_policy
from kvspec.reference import CacheStatus, LlmRequest, ReferenceKVCacheManager, RequestState
from kvspec.reference.executor import IterationResult, ReferenceExecutor


def config(**kw: object) -> Config:
    base = dict(tokens_per_block=4, num_gpu_pages=24, num_host_pages=24, num_requests=8,
                max_num_tokens=64, max_batch_size=8, attention_dp=False,
                batch_wait_timeout_iters=2, batch_wait_max_tokens_ratio=Fraction(1, 2),
                max_rewind_len=0)
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def run(policy: str, seed: int = 1, n: int = 24) -> tuple[ReferenceExecutor,
                                                          list[IterationResult]]:
    """A mixed workload to completion; integrity checked after every iteration, and every
    reservation settled (committed or released) by the end of it."""
    ex = ReferenceExecutor(config(), get_policy(policy), seed=seed)
    rng = random.Random(seed)
    reqs = [LlmRequest(i, prompt_len=rng.randint(1, 20), context_chunk_size=6,
                       draft_len=rng.randint(0, 2), max_new_tokens=rng.randint(1, 10))
            for i in range(n)]
    for q in reqs:
        ex.add_request(q)
    out: list[IterationResult] = []
    while ex.num_unfinished() and len(out) < 600:
        out.extend(ex.step())
        for mgr in ex.managers:
            mgr.check_integrity()
            assert all(not mgr.get_reserved_pages(r) for r in range(n))
    assert ex.num_unfinished() == 0
    assert all(q.state == RequestState.GENERATION_COMPLETE for q in reqs)
    return ex, out


def test_reserve_commit_runs_to_completion_with_deferrals_and_no_scratch_rewind() -> None:
    # max_rewind_len 0 with scratch reuse on: any context shrink would raise SWA-REWIND
    _, results = run("reserve-commit")
    assert any(r.dropped for r in results), "the workload must exercise batch waiting"
    assert any(r.reverted for r in results)


def test_gate_before_resume_runs_to_completion() -> None:
    _, results = run("gate-before-resume")
    assert any(r.dropped for r in results)


def test_the_pr_shape_raises_where_reserve_commit_does_not() -> None:
    with pytest.raises(Exception, match="SWA-REWIND"):
        run("pr13805-reviewed-swa")


def _manager(policy: str, **kw: object) -> tuple[ReferenceKVCacheManager, LlmRequest]:
    mgr = ReferenceKVCacheManager(config(**kw), get_policy(policy))
    return mgr, LlmRequest(0, prompt_len=10, context_chunk_size=8, draft_len=0,
                           max_new_tokens=1)


def test_a_reservation_is_outside_the_page_table_until_committed() -> None:
    mgr, req = _manager("reserve-commit")
    assert mgr.prepare_context(req)
    free = mgr.num_free_gpu_pages
    assert mgr.resize_context(req, req.context_resize_tokens())
    assert mgr.get_capacity(0) == 0 and len(mgr.get_reserved_pages(0)) == 2
    assert mgr.num_free_gpu_pages == free - 2 and req.py_ctx_pre_resize_cap is None
    mgr.check_integrity()
    assert mgr.resize_context(req, req.context_resize_tokens())   # idempotent, as resize is
    assert len(mgr.get_reserved_pages(0)) == 2 and mgr.num_free_gpu_pages == free - 2
    mgr.commit_context(req)
    assert mgr.get_capacity(0) == 8 and len(mgr.get_page_table(0)) == 2
    assert mgr.get_reserved_pages(0) == () and mgr.num_free_gpu_pages == free - 2
    mgr.check_integrity()


def test_a_released_reservation_leaves_the_cache_as_it_was() -> None:
    mgr, req = _manager("reserve-commit")
    mgr.prepare_context(req)
    before = mgr.snapshot_state()
    mgr.resize_context(req, req.context_resize_tokens())
    assert mgr.revert_allocate_context(req) is True
    after = mgr.snapshot_state()                   # capacity 0: stays ACTIVE, nothing moved
    assert sorted(after[0]) == sorted(before[0]) and after[1:] == before[1:]
    assert mgr.get_status(0) == CacheStatus.ACTIVE


def test_commit_context_is_refused_without_reservations() -> None:
    mgr, req = _manager("pr13805-reviewed-swa")
    mgr.prepare_context(req)
    with pytest.raises(ProtocolError, match="reserve_context off"):
        mgr.commit_context(req)


def test_the_gate_nominates_and_the_admission_after_the_decision_can_fail() -> None:
    mgr, req = _manager("gate-before-resume", num_gpu_pages=1, num_host_pages=0)
    assert mgr.prepare_context(req) is True
    assert mgr.get_status(0) == CacheStatus.SUSPENDED       # no resume before the decision
    before = mgr.snapshot_state()
    assert mgr.resize_context(req, req.context_resize_tokens()) is False   # needs 2 pages
    assert mgr.snapshot_state() == before                   # all or nothing
    assert mgr.resize_context(req, 4) is True               # a 1-page chunk fits
    assert mgr.get_status(0) == CacheStatus.ACTIVE and mgr.get_capacity(0) == 4
