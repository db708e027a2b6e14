"""Reference behaviours the rest of the suite left unpinned, found by the mutation run of issue 10
(docs/strength.md): what the integrity check reports for each kind of corruption, the messages
of refused calls, and executor details. Each test is about the behaviour, not about a mutant."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers_ref import admit, busy_executor, ctx_request, make_manager

from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvariantViolation, ProtocolError
from kvspec.policy import get_policy
from kvspec.reference import CacheStatus, LlmRequest, ReferenceKVCacheManager, RequestState
from kvspec.reference.executor import ReferenceExecutor

Corrupt = Callable[[ReferenceKVCacheManager], None]


def _partly_demoted() -> ReferenceKVCacheManager:
    """B=2, G=4, H=4: request 0 suspended with 2 pages, one demoted by request 1's growth to
    3 pages (ACTIVE); no GPU page free."""
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4)
    a = ctx_request(rid=0, prompt_len=4, chunk=4)
    admit(mgr, a)
    mgr.suspend_request(a)
    b = ctx_request(rid=1, prompt_len=6, chunk=6)
    assert mgr.prepare_context(b) and mgr.resize_context(b, 6)
    assert mgr.get_page_tiers(0) == (0, 1) and mgr.num_free_gpu_pages == 0
    mgr.check_integrity()
    return mgr


def _free_gpu(mgr: ReferenceKVCacheManager) -> list[int]:
    return mgr._gpu._free


def _set_pages(rid: int, index: int, page: int) -> Corrupt:
    def corrupt(mgr: ReferenceKVCacheManager) -> None:
        mgr._caches[rid].pages[index] = page
    return corrupt


def _free_one_held_page(mgr: ReferenceKVCacheManager) -> None:
    _free_gpu(mgr).append(mgr._caches[1].pages[0])          # free and held at once


def _lose_free_page(mgr: ReferenceKVCacheManager) -> None:
    mgr._host._free.pop()                                    # a host page neither free nor held


def _grow_capacity(mgr: ReferenceKVCacheManager) -> None:
    mgr._caches[1].capacity += 2                             # 3 pages for capacity 8 (B = 2)


def _commit_past_history(mgr: ReferenceKVCacheManager) -> None:
    cache = mgr._caches[0]
    cache.committed = cache.history + 1


def _drop_tiers(mgr: ReferenceKVCacheManager) -> None:
    mgr._caches[0].tiers = None                              # 1 host page, no per-page tiers


def _activate_demoted(mgr: ReferenceKVCacheManager) -> None:
    mgr._caches[0].status = CacheStatus.ACTIVE               # ACTIVE with a page on the host


def _miscount_suspended(mgr: ReferenceKVCacheManager) -> None:
    mgr._num_suspended_gpu_pages += 1


def _unlist_suspended(mgr: ReferenceKVCacheManager) -> None:
    mgr._suspended.pop(0)


#: corruption -> (invariant id, fragments the message must hold: the object and the value)
CORRUPTIONS: dict[str, tuple[Corrupt, str, tuple[str, ...]]] = {
    "free id out of range": (lambda m: _free_gpu(m).append(9), "INV-CONSERVE",
                             ("gpu free list holds page id 9 outside 1..4",)),
    "held id out of range": (_set_pages(1, 0, 9), "INV-CONSERVE",
                             ("request 1 holds gpu page id 9 outside 1..4",)),
    "held and free": (_free_one_held_page, "INV-CONSERVE",
                      ("is held by request 1 and is also free",)),
    "leaked host page": (_lose_free_page, "INV-CONSERVE",
                         ("host pages [", "are neither free nor held (leak)")),
    "table longer than capacity": (_grow_capacity, "INV-LEN",
                                   ("request 1: page table has 3 pages for capacity 8",
                                    "(tokens_per_block 2)")),
    "committed past history": (_commit_past_history, "INV-LEN",
                               ("request 0: committed 5 <= history 4 <= capacity 4",
                                "does not hold")),
    "host pages without tiers": (_drop_tiers, "INV-TIER",
                                 ("request 0: 1 host pages but no per-page tiers",)),
    "ACTIVE cache on the host": (_activate_demoted, "INV-LOCK",
                                 ("request 0: ACTIVE cache has 1 pages on the host",)),
    "suspended page counter": (_miscount_suspended, "INV-CONSERVE",
                               ("suspended-on-GPU page counter 2 != 1 GPU pages held by"
                                " SUSPENDED caches",)),
    "suspension order": (_unlist_suspended, "INV-CONSERVE",
                         ("suspension order [] does not list exactly the SUSPENDED caches [0]",)),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_integrity_names_the_invariant_and_the_object_of_each_corruption(kind: str) -> None:
    corrupt, invariant, fragments = CORRUPTIONS[kind]
    mgr = _partly_demoted()
    corrupt(mgr)
    with pytest.raises(InvariantViolation) as info:
        mgr.check_integrity()
    assert info.value.invariant_id == invariant
    for fragment in fragments:
        assert fragment in str(info.value)


def test_integrity_reports_a_page_held_by_two_caches() -> None:
    mgr = _partly_demoted()
    mgr._caches[1].pages[0] = mgr._caches[0].pages[0]        # request 0's GPU page, twice
    with pytest.raises(InvariantViolation) as info:
        mgr.check_integrity()
    assert info.value.invariant_id == "INV-CONSERVE"
    assert "is held by request 1 and is also held by request 0" in str(info.value)


def test_integrity_reports_a_page_twice_in_the_free_list() -> None:
    mgr = make_manager(num_gpu_pages=4)
    free = _free_gpu(mgr)
    free[0] = free[1]
    with pytest.raises(InvariantViolation) as info:
        mgr.check_integrity()
    assert info.value.invariant_id == "INV-CONSERVE"
    assert f"gpu page {free[1]} is in the free list twice" in str(info.value)


# ----------------------------------------------------------------------------------------------
# refused calls: the message names the call, the request and the fix (kvspec/errors.py)

def _suspended_ctx(mgr: ReferenceKVCacheManager) -> LlmRequest:
    """Request 0 in its context phase with an ACTIVE cache, then suspended."""
    req = ctx_request(rid=0, prompt_len=8, chunk=4)
    assert mgr.prepare_context(req) and mgr.resize_context(req, 4)
    req.context_current_position = 4
    mgr.update_context_resources([req])
    mgr.suspend_request(req)
    return req


def test_manager_refusals_say_what_to_do() -> None:
    mgr = make_manager(num_gpu_pages=8)
    req = _suspended_ctx(mgr)
    with pytest.raises(ProtocolError) as info:
        mgr.resize_context(req, 2)
    assert str(info.value) == (
        "resize_context: request 0's cache is SUSPENDED; call prepare_context (which resumes"
        " it) and resize only when it returns True")
    with pytest.raises(ProtocolError) as info:
        mgr.suspend_request(req)
    assert str(info.value) == (
        "suspend_request: request 0's cache is already SUSPENDED; suspend only ACTIVE victims")
    with pytest.raises(InvalidArgument) as info:
        mgr.update_resources([req], [0, 0])
    assert str(info.value) == (
        "update_resources: 1 requests but 2 accepted counts; pass one count per request")
    with pytest.raises(ProtocolError) as info:
        mgr.free_resources(ctx_request(rid=5))
    assert str(info.value).startswith("free_resources: request 5 has no KV cache")
    with pytest.raises(ProtocolError) as info:
        mgr.generation_pages_needed(ctx_request(rid=6))
    assert str(info.value).startswith("generation_pages_needed: request 6 has no KV cache")


def test_executor_refusals_say_what_to_do() -> None:
    ex = ReferenceExecutor(Config(), get_policy("pr14849"))
    ex.add_request(ctx_request(rid=0))
    with pytest.raises(ProtocolError) as info:
        ex.add_request(ctx_request(rid=0))
    assert str(info.value) == (
        "add_request: request id 0 is already queued or live; use a new id")
    with pytest.raises(ProtocolError) as info:
        ex.add_request(ctx_request(rid=1, pos=2))
    assert str(info.value) == (
        "add_request: request 1 has started; add new requests at position 0 in CONTEXT_INIT")
    with pytest.raises(ProtocolError) as info:
        ex.revert_context(0, ctx_request(rid=0), "because")
    assert "for reason 'because' (switch unknown is off); do not call it" in str(info.value)
    keeps = ReferenceExecutor(Config(), get_policy("pre-pr13104"))
    assert not keeps.policy.revert_generation_on_skip
    with pytest.raises(ProtocolError) as info:
        keeps.revert_generation(0, ctx_request(rid=0))
    assert str(info.value) == (
        "revert_generation: policy 'pre-pr13104' has revert_generation_on_skip off;"
        " generation growth is kept on a can_queue skip")


# ----------------------------------------------------------------------------------------------
# resumes

def test_a_resume_demotes_other_caches_never_its_own_pages() -> None:
    mgr = _partly_demoted()                                  # 0: 1 GPU + 1 host, least recent
    b = mgr._caches[1]
    req_b = ctx_request(rid=1, prompt_len=6, chunk=6)
    req_b.context_current_position = 6
    mgr.update_context_resources([req_b])
    mgr.suspend_request(req_b)                               # 1: 3 GPU pages, evictable
    mgr.pop_demoted()
    req_a = ctx_request(rid=0, prompt_len=4, chunk=4)
    req_a.context_current_position = 4
    req_a.state = RequestState.GENERATION_IN_PROGRESS
    own_gpu_page = mgr.get_page_table(0)[0]
    assert mgr.resume_request(req_a)                         # recall 1 page, none free
    assert mgr.get_status(0) == CacheStatus.ACTIVE and mgr.get_page_tiers(0) == (0, 0)
    assert mgr.get_page_table(0)[0] == own_gpu_page          # its GPU entry stayed put
    assert mgr.get_page_tiers(1) == (0, 0, 1) and b.num_host == 1
    assert mgr.pop_demoted() == (1,)
    mgr.check_integrity()


def test_the_resume_gate_holds_on_a_one_page_pool() -> None:
    mgr = make_manager(num_gpu_pages=1, num_host_pages=0)     # max_util_for_resume = 3/4
    admit(mgr, ctx_request(rid=0, prompt_len=2, chunk=2))    # the one page, ACTIVE
    late = ctx_request(rid=1, prompt_len=2, chunk=2)
    assert not mgr.prepare_context(late)                     # 1 of 1 pages in use > 3/4
    assert mgr.get_status(1) == CacheStatus.SUSPENDED
    mgr.check_integrity()


# ----------------------------------------------------------------------------------------------
# the executor's iteration report

def test_iteration_results_account_for_every_request() -> None:
    ex, reqs = busy_executor(attention_dp=False)
    finished: list[int] = []
    suspended: set[int] = set()
    while ex.num_unfinished() and ex.iteration < 2000:
        (r,) = ex.step()
        assert (r.iteration, r.rank) == (ex.iteration, 0)
        assert set(r.forwarded) <= set(r.scheduled) and set(r.finished) <= set(r.forwarded)
        assert {rid for rid, _ in r.accepted} <= set(r.forwarded)
        assert r.forwarded or not r.can_queue or not r.scheduled or r.waited
        finished += r.finished
        suspended |= set(r.suspended)
    assert sorted(finished) == list(range(20))               # each finishes exactly once
    assert suspended and suspended <= set(range(20))         # the pool was under pressure


def test_context_requests_fill_at_most_max_batch_size_slots() -> None:
    cfg = Config(tokens_per_block=2, num_gpu_pages=64, num_host_pages=0, num_requests=8,
                 max_num_tokens=64, max_batch_size=2, attention_dp=False)
    ex = ReferenceExecutor(cfg, get_policy("pr13805-reviewed"))
    for i in range(5):
        ex.add_request(LlmRequest(i, prompt_len=2, context_chunk_size=2, max_new_tokens=1))
    (first,) = ex.step()
    assert first.scheduled == (0, 1)                          # two slots, in arrival order
    while ex.num_unfinished() and ex.iteration < 50:
        (r,) = ex.step()
        assert len(r.scheduled) <= 2
    assert ex.num_unfinished() == 0


def test_a_generation_request_that_cannot_grow_suspends_itself() -> None:
    cfg = Config(tokens_per_block=2, num_gpu_pages=2, num_host_pages=4, num_requests=2,
                 max_num_tokens=64, max_batch_size=8, attention_dp=False)
    ex = ReferenceExecutor(cfg, get_policy("pr13805-reviewed"))
    ex.add_request(LlmRequest(0, prompt_len=4, context_chunk_size=4, max_new_tokens=8))
    (ctx,) = ex.step()                                        # the prompt takes both pages
    assert ctx.forwarded == (0,)
    (gen,) = ex.step()                                        # token 5 needs a third page
    assert gen.suspended == (0,) and gen.scheduled == ()      # no victim: self-eviction
    assert ex.managers[0].get_status(0) == CacheStatus.SUSPENDED


def test_an_adp_skip_reverts_context_growth_and_failed_resizes_are_rolled_back() -> None:
    # rank 1's only request can never fit (4 pages of 2): its rank schedules nothing, so no
    # rank may queue (ADP: every rank forwards or none), and rank 0 gives back its growth
    cfg = Config(tokens_per_block=2, num_gpu_pages=2, num_host_pages=2, num_requests=2,
                 max_num_tokens=64, max_batch_size=8, attention_dp=True)
    pol = get_policy("stale-snapshot")
    assert pol.revert_context_on_skip and pol.rollback_failed_resize
    ex = ReferenceExecutor(cfg, pol, num_ranks=2)
    ex.add_request(LlmRequest(0, prompt_len=2, context_chunk_size=2, max_new_tokens=1), rank=0)
    ex.add_request(LlmRequest(1, prompt_len=8, context_chunk_size=8, max_new_tokens=1), rank=1)
    r0, r1 = ex.step()
    assert (r0.can_queue, r1.can_queue) == (False, False)
    assert r0.scheduled == (0,) and r0.reverted == (0,) and r0.forwarded == ()
    assert r1.failed_resize == (1,) and r1.reverted == (1,) and r1.scheduled == ()
    assert ex.managers[0].get_capacity(0) == 0               # the growth was given back


# ---- the second mutation run (session 6): executor budgets and batching, messages ---------


def test_a_leak_report_names_the_missing_page_ids() -> None:
    mgr = make_manager(num_gpu_pages=4)
    _free_gpu(mgr).remove(1)                                  # page 1: neither free nor held
    with pytest.raises(InvariantViolation, match=r"gpu pages \[1\] are neither free nor held"):
        mgr.check_integrity()


def test_refusal_messages_name_the_call_and_the_fix() -> None:
    mgr = make_manager(get_policy("pr14849").replace(host_tier=False))
    with pytest.raises(ProtocolError, match="suspended caches stay on GPU"):
        mgr.evict_to_host(ctx_request(rid=0))
    with pytest.raises(ProtocolError, match="^try_allocate_generation: request 0 is in state"):
        mgr.try_allocate_generation(ctx_request(rid=0))
    with pytest.raises(ProtocolError, match="free; check num_free_pages before allocating$"):
        mgr._gpu.allocate_n(9)
    reserving = make_manager("reserve-commit")
    q = ctx_request(rid=0, prompt_len=4, chunk=4)
    assert reserving.prepare_context(q) and reserving.resize_context(q, 4)
    with pytest.raises(ProtocolError, match="^revert_allocate_generation: request"):
        reserving.revert_allocate_generation(q)


def test_update_without_growth_names_inv_len() -> None:
    mgr = make_manager("pr14849")
    q = ctx_request(rid=0, prompt_len=2, chunk=2)
    admit(mgr, q)
    with pytest.raises(InvariantViolation) as info:
        mgr.update_resources([q], [0])                        # no try_allocate_generation
    assert info.value.invariant_id == "INV-LEN"


def test_a_fully_prefilled_request_is_valid_and_a_bad_field_is_named() -> None:
    done = LlmRequest(0, prompt_len=3, context_chunk_size=2, context_current_position=3)
    assert done.context_current_position == done.prompt_len
    with pytest.raises(InvalidArgument, match=r"\.draft_len=-1 must be an integer >= 0"):
        LlmRequest(1, prompt_len=2, context_chunk_size=2, draft_len=-1)


def test_requests_go_to_the_rank_with_the_fewest() -> None:
    ex = ReferenceExecutor(Config(attention_dp=True, num_requests=4), get_policy("pr14849"),
                           num_ranks=2)
    ranks = [ex.add_request(ctx_request(rid=i, prompt_len=2, chunk=2)) for i in range(4)]
    assert ranks == [0, 1, 0, 1]


def test_context_tokens_count_against_the_budget() -> None:
    """Two 8-token context chunks and a 10-token budget: one is scheduled, not both."""
    ex = ReferenceExecutor(Config(tokens_per_block=4, num_gpu_pages=16, num_requests=4,
                                  max_num_tokens=10, max_batch_size=4, attention_dp=False,
                                  max_prompt_len=16), get_policy("pr14849"))
    for i in range(2):
        ex.add_request(LlmRequest(i, prompt_len=8, context_chunk_size=8, max_new_tokens=1))
    (res,) = ex.step()
    assert res.scheduled == (0,)


def test_a_first_chunk_that_fits_the_free_pages_suspends_no_one() -> None:
    """Request 0's first chunk needs exactly the free pages; the started request 1 behind it
    is not suspended to make room."""
    ex = ReferenceExecutor(Config(tokens_per_block=4, num_gpu_pages=4, num_host_pages=4,
                                  num_requests=4, max_num_tokens=64, max_batch_size=4,
                                  attention_dp=False, max_prompt_len=16),
                           get_policy("pr13805-reviewed"))
    first = LlmRequest(0, prompt_len=8, context_chunk_size=8, max_new_tokens=1)
    started = LlmRequest(1, prompt_len=16, context_chunk_size=8, max_new_tokens=1)
    ex.add_request(started)
    ex.step()                                # request 1: its first chunk, 2 of 4 pages
    ex._ranks[0].requests.insert(0, first)   # request 0 ahead of it in the list
    ex._ids.add(0)
    mgr = ex.managers[0]
    assert mgr.num_free_gpu_pages == 2 and mgr.get_status(1) == CacheStatus.ACTIVE
    (res,) = ex.step()
    assert res.suspended == () and 0 in res.scheduled


def test_a_cleared_snapshot_is_none() -> None:
    """Under a policy that clears snapshots at iteration start, a request the pass did not
    resize carries None (not another false value) after the step."""
    policy = get_policy("pr13805-reviewed")
    assert policy.clear_snapshot_at_iteration_start
    ex = ReferenceExecutor(Config(tokens_per_block=4, num_gpu_pages=16, num_requests=4,
                                  max_num_tokens=64, max_batch_size=1, attention_dp=False,
                                  max_prompt_len=16), policy)
    reqs = [LlmRequest(i, prompt_len=8, context_chunk_size=4, max_new_tokens=1)
            for i in range(2)]
    for q in reqs:
        ex.add_request(q)
    ex.step()
    ex.step()
    (res,) = ex.step()
    idle = [q for q in reqs if q.request_id not in res.scheduled]
    assert idle and all(q.py_ctx_pre_resize_cap is None for q in idle)


def test_a_growth_that_takes_the_last_free_pages_joins_the_batch() -> None:
    """Two generating requests, each needing one page, and exactly two free: one batch call."""
    calls: list[tuple[int, ...]] = []

    class Batched(ReferenceKVCacheManager):
        def try_allocate_generation_batch(self, reqs: list[LlmRequest]) -> list[bool]:
            calls.append(tuple(q.request_id for q in reqs))
            return [self.try_allocate_generation(q) for q in reqs]

    ex = ReferenceExecutor(Config(tokens_per_block=1, num_gpu_pages=6, num_host_pages=0,
                                  num_requests=4, max_num_tokens=64, max_batch_size=4,
                                  attention_dp=False, max_prompt_len=4), get_policy("pr14849"),
                           manager_factory=Batched)
    for i in range(2):
        ex.add_request(LlmRequest(i, prompt_len=2, context_chunk_size=2, max_new_tokens=3))
    ex.step()
    assert ex.managers[0].num_free_gpu_pages == 2
    ex.step()
    assert calls == [(0, 1)]
