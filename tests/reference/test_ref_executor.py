"""ReferenceExecutor: arrivals to completion, delay batching, ADP consistency, reverts."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from kvspec.config import Config
from kvspec.errors import InvalidArgument, ProtocolError
from kvspec.policy import Policy, get_policy
from kvspec.reference import CacheStatus, LlmRequest, ReferenceKVCacheManager, RequestState
from kvspec.reference.balance import AdpCounters, RankLoad, adp_balance
from kvspec.reference.executor import ReferenceExecutor


def config(**kw: object) -> Config:
    base = dict(tokens_per_block=4, num_gpu_pages=64, num_host_pages=64, num_requests=16,
                max_num_tokens=64, max_batch_size=8, attention_dp=False)
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def workload(ex: ReferenceExecutor, n: int, seed: int = 0, start: int = 0) -> list[LlmRequest]:
    rng = random.Random(seed)
    reqs = [LlmRequest(start + i, prompt_len=rng.randint(1, 24), context_chunk_size=8,
                       draft_len=rng.randint(0, 2), max_new_tokens=rng.randint(1, 12))
            for i in range(n)]
    for q in reqs:
        ex.add_request(q)
    return reqs


def pinned(mgr: ReferenceKVCacheManager, rid: int) -> int:
    """GPU pages the request pins (ACTIVE, or any GPU-resident page without a host tier)."""
    if not mgr.has_cache(rid):
        return 0
    if mgr.policy.host_tier and mgr.get_status(rid) != CacheStatus.ACTIVE:
        return 0
    return len(mgr.get_page_table(rid)) - mgr.get_host_pages(rid)


def run_checked(ex: ReferenceExecutor, max_iters: int) -> list:
    out = []
    while ex.num_unfinished() and len(out) < max_iters:
        out.append(ex.step())
        for mgr in ex.managers:
            mgr.check_integrity()
    return out


@pytest.mark.parametrize("policy", ["pr13805-reviewed", "pr14849", "stale-snapshot",
                                    "pre-pr13104"])
def test_requests_arrive_run_and_finish(policy: str) -> None:
    ex = ReferenceExecutor(config(), get_policy(policy), seed=3)
    reqs = workload(ex, 30)
    results = run_checked(ex, 500)
    assert ex.num_unfinished() == 0
    assert all(q.state == RequestState.GENERATION_COMPLETE for q in reqs)
    finished = [rid for step in results for r in step for rid in r.finished]
    assert sorted(finished) == list(range(30))
    mgr = ex.managers[0]
    assert mgr.num_free_gpu_pages == 64 and mgr.num_free_host_pages == 64
    assert mgr.request_ids() == ()


def test_budgets_are_respected() -> None:
    ex = ReferenceExecutor(config(max_batch_size=3, max_num_tokens=10), get_policy("pr14849"))
    workload(ex, 12)
    for step in run_checked(ex, 500):
        (r,) = step
        assert len(r.scheduled) <= 3


def test_memory_pressure_with_host_tier_evicts_and_finishes() -> None:
    ex = ReferenceExecutor(config(num_gpu_pages=12, num_host_pages=40),
                           get_policy("pr13805-reviewed"), seed=1)
    workload(ex, 20, seed=5)
    results = run_checked(ex, 2000)
    assert ex.num_unfinished() == 0
    assert any(r.suspended for step in results for r in step)


def test_gpu_only_pressure_uses_recompute_pause_and_finishes() -> None:
    pol = get_policy("pr14849").replace(host_tier=False)
    ex = ReferenceExecutor(config(num_gpu_pages=12), pol, seed=2)
    workload(ex, 20, seed=7)
    results = run_checked(ex, 2000)
    assert ex.num_unfinished() == 0
    assert any(r.recompute_paused for step in results for r in step)


def test_same_seed_same_run() -> None:
    def trace(seed: int) -> list:
        ex = ReferenceExecutor(config(), get_policy("pr13805"), seed=seed)
        workload(ex, 10, seed=1)
        return ex.run(300)
    assert trace(4) == trace(4)
    assert trace(4) != trace(5)


def test_batch_waiting_waits_at_most_timeout_iterations() -> None:
    timeout = 3
    ex = ReferenceExecutor(config(batch_wait_timeout_iters=timeout,
                                  batch_wait_max_tokens_ratio=Fraction(1)),
                           get_policy("pr14849"))
    ex.add_request(LlmRequest(0, prompt_len=4, context_chunk_size=8, max_new_tokens=40))
    ex.step()                                             # 0 prefills, then generates
    for i in range(1, 6):
        ex.add_request(LlmRequest(i, prompt_len=4, context_chunk_size=8, max_new_tokens=2))
    streak = longest = waits = 0
    for _ in range(40):
        (r,) = ex.step()
        streak = streak + 1 if r.waited else 0
        longest = max(longest, streak)
        waits += r.waited
        if r.waited:
            assert r.dropped and not set(r.dropped) & set(r.forwarded)
    assert longest == timeout and waits >= timeout


def test_adp_balance_function_rules() -> None:
    load = RankLoad
    both = [load(1, 1, 2, 1), load(1, 1, 2, 1)]
    assert adp_balance(both, AdpCounters(), 8, 50, 2) == (True, AdpCounters(0, 1))
    assert adp_balance(both, AdpCounters(0, 2), 8, 50, 2) == (False, AdpCounters(0, 0))
    one_ctx = [load(1, 1, 2, 1), load(0, 1, 1, 1)]
    assert adp_balance(one_ctx, AdpCounters(), 8, 3, 2) == (True, AdpCounters(1, 0))
    assert adp_balance(one_ctx, AdpCounters(2, 0), 8, 3, 2) == (False, AdpCounters(0, 0))
    no_gen = [load(1, 0, 1, 0), load(0, 1, 1, 1)]
    assert adp_balance(no_gen, AdpCounters(), 8, 3, 2)[0] is False


def test_adp_decisions_are_rank_consistent() -> None:
    cfg = config(attention_dp=True, num_gpu_pages=24)
    ex = ReferenceExecutor(cfg, get_policy("pr13805-reviewed"), num_ranks=3, seed=9,
                           adp_timeout_iters=4, adp_batching_wait_iters=2)
    rng = random.Random(2)
    rid = 0
    waited = False
    for _ in range(120):
        if rng.random() < 0.5:
            ex.add_request(LlmRequest(rid, prompt_len=rng.randint(1, 20), context_chunk_size=8,
                                      draft_len=rng.randint(0, 1),
                                      max_new_tokens=rng.randint(1, 10)))
            rid += 1
        step = ex.step()
        assert len({r.waited for r in step}) == 1
        assert len({r.can_queue for r in step}) == 1
        waited |= step[0].waited
        for mgr in ex.managers:
            mgr.check_integrity()
    assert waited
    run_checked(ex, 2000)
    assert ex.num_unfinished() == 0


def _deferred_hold(policy: str) -> list[tuple[int, int, int]]:
    """(rid, pinned at iteration start, pinned after) for every dropped request."""
    cfg = config(attention_dp=True, num_gpu_pages=40)
    ex = ReferenceExecutor(cfg, get_policy(policy), num_ranks=2, seed=4,
                           adp_timeout_iters=5, adp_batching_wait_iters=3)
    rng = random.Random(11)
    rid, out = 0, []
    for _ in range(150):
        if rng.random() < 0.4:
            ex.add_request(LlmRequest(rid, prompt_len=rng.randint(1, 30), context_chunk_size=8,
                                      draft_len=rng.randint(0, 2),
                                      max_new_tokens=rng.randint(1, 15)))
            rid += 1
        before = [{q.request_id: pinned(m, q.request_id) for q in ex.live_requests(i)}
                  for i, m in enumerate(ex.managers)]
        for r in ex.step():
            mgr = ex.managers[r.rank]
            out += [(d, before[r.rank].get(d, 0), pinned(mgr, d)) for d in r.dropped]
    return out


def test_reviewed_reverts_leave_deferred_requests_no_more_pinned_pages() -> None:
    held = _deferred_hold("pr13805-reviewed")
    assert held, "the workload must defer some context requests"
    assert all(after <= start for _, start, after in held)


def test_pr14849_deferred_requests_keep_their_growth() -> None:
    held = _deferred_hold("pr14849")
    assert any(after > start for _, start, after in held)


def test_can_queue_false_reverts_generation_growth() -> None:
    cfg = config(attention_dp=True)
    ex = ReferenceExecutor(cfg, get_policy("pr13805-reviewed"), num_ranks=2)
    a = LlmRequest(0, prompt_len=4, context_chunk_size=8, draft_len=1, max_new_tokens=50)
    b = LlmRequest(1, prompt_len=4, context_chunk_size=8, max_new_tokens=50)
    ex.add_request(a, rank=0)
    ex.add_request(b, rank=1)
    ex.step()
    assert a.is_generation
    cap = ex.managers[0].get_capacity(0)
    ex.managers[1].suspend_request(b)       # rank 1 cannot schedule: its batch is empty
    ex._ranks[1].requests[0].state = RequestState.GENERATION_COMPLETE
    (r0, r1) = ex.step()
    assert not r0.can_queue and not r1.can_queue
    assert 0 in r0.reverted and ex.managers[0].get_capacity(0) == cap
    assert ex.managers[0].get_draft_record(0) is None


def test_executor_level_revert_the_policy_forbids_raises() -> None:
    ex = ReferenceExecutor(config(), get_policy("pr14849"))
    q = LlmRequest(0, prompt_len=8, context_chunk_size=4)
    mgr = ex.managers[0]
    mgr.prepare_context(q)
    mgr.resize_context(q, 4)
    before = (mgr.snapshot_state(), q.py_ctx_pre_resize_cap)
    with pytest.raises(ProtocolError, match="revert_deferred_context"):
        ex.revert_context(0, q, "deferred")
    with pytest.raises(ProtocolError, match="unknown"):
        ex.revert_context(0, q, "whatever")
    assert (mgr.snapshot_state(), q.py_ctx_pre_resize_cap) == before
    no_gen = ReferenceExecutor(config(), get_policy("pre-pr13104"))
    with pytest.raises(ProtocolError, match="revert_generation_on_skip"):
        no_gen.revert_generation(0, q)


def test_add_request_misuse() -> None:
    ex = ReferenceExecutor(config(), get_policy("pr14849"))
    ex.add_request(LlmRequest(0, prompt_len=4, context_chunk_size=4))
    with pytest.raises(ProtocolError, match="already queued"):
        ex.add_request(LlmRequest(0, prompt_len=4, context_chunk_size=4))
    with pytest.raises(InvalidArgument, match="exceeds max_num_tokens"):
        ex.add_request(LlmRequest(1, prompt_len=4, context_chunk_size=65))
    with pytest.raises(InvalidArgument, match="rank=3"):
        ex.add_request(LlmRequest(2, prompt_len=4, context_chunk_size=4), rank=3)
    with pytest.raises(InvalidArgument, match="num_ranks=2"):
        ReferenceExecutor(config(), get_policy("pr14849"), num_ranks=2)


def test_victims_are_never_scheduled_in_the_same_iteration() -> None:
    for policy in ("pr13805-reviewed", get_policy("pr14849").replace(host_tier=False)):
        pol = get_policy(policy) if isinstance(policy, str) else policy
        ex = ReferenceExecutor(config(num_gpu_pages=10), pol, seed=6)
        workload(ex, 25, seed=8)
        for step in run_checked(ex, 3000):
            for r in step:
                victims = set(r.suspended) | set(r.recompute_paused)
                assert not victims & set(r.scheduled)
        assert ex.num_unfinished() == 0


def test_pr13805_reverting_deferred_context_under_swa_hits_the_assertion() -> None:
    from kvspec.errors import InvariantViolation
    cfg = config(attention_dp=True, max_rewind_len=2)
    ex = ReferenceExecutor(cfg, get_policy("pr13805"), num_ranks=2, adp_timeout_iters=5)
    ex.add_request(LlmRequest(0, prompt_len=4, context_chunk_size=8, max_new_tokens=50), rank=0)
    ex.add_request(LlmRequest(1, prompt_len=4, context_chunk_size=8, max_new_tokens=50), rank=1)
    ex.step()
    ex.add_request(LlmRequest(2, prompt_len=16, context_chunk_size=8), rank=0)
    with pytest.raises(InvariantViolation) as info:
        for _ in range(10):             # a deferred chunk of 8 > max_rewind_len 2 is reverted
            ex.step()
    assert info.value.invariant_id == "SWA-REWIND"


class _Batched(ReferenceKVCacheManager):
    """The reference manager with a ``try_allocate_generation_batch`` that records its calls
    (as the torch manager's: one call for a list)."""

    def __init__(self, config: Config, policy: Policy) -> None:
        super().__init__(config, policy)
        self.batches: list[tuple[int, ...]] = []
        self.refuse: set[int] = set()

    def try_allocate_generation_batch(self, reqs: list[LlmRequest]) -> list[bool]:
        self.batches.append(tuple(q.request_id for q in reqs))
        return [q.request_id not in self.refuse and self.try_allocate_generation(q)
                for q in reqs]


BUSY = [dict(), dict(tokens_per_block=1, num_gpu_pages=60),
        dict(tokens_per_block=2, num_gpu_pages=30, num_host_pages=0)]
"""Pools for the batched-growth tests: the busy executor's, then tighter ones where several
growths of one pass compete for the last free pages (with and without a host tier)."""


def _busy(factory: object, batch: bool = True, **changes: object) -> ReferenceExecutor:
    """busy_executor's executor and requests (config ``changes`` applied), on managers made
    by ``factory``."""
    cfg = Config(tokens_per_block=4, num_gpu_pages=12, num_host_pages=40, num_requests=16,
                 max_num_tokens=64, max_batch_size=8).replace(**changes)
    ex = ReferenceExecutor(cfg, get_policy("pr13805-reviewed"), seed=1,
                           batch_growth=batch,
                           manager_factory=factory)  # type: ignore[arg-type]
    rng = random.Random(5)
    for i in range(20):
        ex.add_request(LlmRequest(i, prompt_len=rng.randint(1, 24), context_chunk_size=8,
                                  draft_len=rng.randint(0, 2), max_new_tokens=rng.randint(1, 12)))
    return ex


def _run_busy(factory: object, batch: bool = True, **changes: object) -> list[object]:
    ex = _busy(factory, batch, **changes)
    return [ex.run(400), [m.snapshot_state() for m in ex.managers]]


@pytest.mark.parametrize("changes", BUSY)
def test_growths_from_free_pages_go_to_batch_calls_with_the_same_run(
        changes: dict[str, object]) -> None:
    """Runs of growths that the free pages cover are one batch call each (the torch
    manager's vectorized call), and the run, pages included, is the one the single calls
    in list order give, under pressure (suspends, evictions, recompute pauses)."""
    made: list[_Batched] = []

    def batched(config: Config, policy: Policy) -> _Batched:
        made.append(_Batched(config, policy))
        return made[0]

    run = _run_busy(batched, **changes)
    assert run == _run_busy(None, **changes) == _run_busy(None, batch=False, **changes)
    batches = made[0].batches
    assert batches and max(map(len, batches)) > 1
    assert all(len(set(b)) == len(b) for b in batches)


def test_a_refused_growth_from_free_pages_is_a_manager_bug() -> None:
    ex = _busy(_Batched)
    mgr = ex.managers[0]
    assert isinstance(mgr, _Batched)
    mgr.refuse = set(range(20))
    with pytest.raises(ProtocolError, match="fit in the"):
        ex.run(400)


def test_a_request_with_no_new_tokens_finishes_with_its_context() -> None:
    """max_new_tokens=0: the last context chunk's token is the only one; the request
    finishes in that iteration, never grows for generation, and is freed at the next start."""
    ex = ReferenceExecutor(Config(tokens_per_block=4, num_gpu_pages=8, num_requests=4,
                                  max_num_tokens=64, attention_dp=False),
                           get_policy("pr14849"))
    req = LlmRequest(0, prompt_len=6, context_chunk_size=4, max_new_tokens=0)
    ex.add_request(req)
    first, last = ex.step()[0], ex.step()[0]
    assert first.finished == () and last.finished == (0,) and last.forwarded == (0,)
    mgr = ex.managers[0]
    assert mgr.get_capacity(0) == 6 and mgr.num_free_gpu_pages == 6
    ex.step()
    assert ex.num_unfinished() == 0 and mgr.num_free_gpu_pages == 8
    assert req.state is RequestState.GENERATION_COMPLETE and req.num_generated_tokens == 0
    with pytest.raises(InvalidArgument, match="max_new_tokens=-1"):
        LlmRequest(1, prompt_len=2, context_chunk_size=2, max_new_tokens=-1)
