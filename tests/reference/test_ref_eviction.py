"""Per-page residency and implicit eviction in the reference manager (docs/reference.md):
partial demotion by another cache's growth, the LRU victim choice, resumes that need room,
failure atomicity, explicit eviction of a partly demoted cache, and the integrity checks."""

from __future__ import annotations

from fractions import Fraction

import pytest
from helpers_ref import admit, busy_executor, ctx_request, make_manager

from kvspec.errors import InvariantViolation, ProtocolError
from kvspec.reference import CacheStatus, LlmRequest, ReferenceKVCacheManager, RequestState

ACTIVE, SUSPENDED = CacheStatus.ACTIVE, CacheStatus.SUSPENDED


def suspended(mgr: ReferenceKVCacheManager, rid: int, tokens: int) -> LlmRequest:
    """A generating request holding blocks(tokens) GPU pages, then suspended."""
    req = ctx_request(rid=rid, prompt_len=tokens, chunk=tokens)
    admit(mgr, req)
    mgr.suspend_request(req)
    return req


def grow_context(mgr: ReferenceKVCacheManager, rid: int, tokens: int) -> LlmRequest:
    req = ctx_request(rid=rid, prompt_len=tokens, chunk=tokens)
    assert mgr.prepare_context(req)
    assert mgr.resize_context(req, tokens)
    return req


def tiers(mgr: ReferenceKVCacheManager, rid: int) -> tuple[int, ...]:
    t = mgr.get_page_tiers(rid)
    assert len(t) == len(mgr.get_page_table(rid)) and sum(t) == mgr.get_host_pages(rid)
    return t


def test_growth_demotes_the_shortfall_from_the_end_of_a_suspended_cache() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4)      # B = 2
    a = suspended(mgr, 0, 4)                                  # 2 GPU pages, evictable
    gpu_a = mgr.get_page_table(0)
    grow_context(mgr, 1, 6)                                   # needs 3, 2 free: shortfall 1
    assert tiers(mgr, 0) == (0, 1) and mgr.get_host_pages(0) == 1
    assert mgr.get_page_table(0)[0] == gpu_a[0]               # the front entry stays
    assert (mgr.num_free_gpu_pages, mgr.num_free_host_pages) == (0, 3)
    assert mgr.num_evictable_gpu_pages == 1
    assert mgr.get_status(0) == SUSPENDED and mgr.pop_demoted() == (0,)
    mgr.check_integrity()
    mgr.free_resources(LlmRequest(1, prompt_len=6, context_chunk_size=6))
    assert mgr.resume_request(a)                              # recall the host page
    assert tiers(mgr, 0) == (0, 0) and mgr.get_page_table(0)[0] == gpu_a[0]
    assert (mgr.num_free_gpu_pages, mgr.num_free_host_pages) == (2, 4)
    mgr.check_integrity()


def test_victims_least_recently_suspended_first_each_from_the_end() -> None:
    mgr = make_manager(num_gpu_pages=8, num_host_pages=8)
    for rid in (0, 1, 2):
        suspended(mgr, rid, 4)                                # suspended in order 0, 1, 2
    grow_context(mgr, 3, 10)                                  # 5 pages, 2 free: shortfall 3
    assert [tiers(mgr, r) for r in (0, 1, 2)] == [(1, 1), (0, 1), (0, 0)]
    assert mgr.pop_demoted() == (0, 1) and mgr.pop_demoted() == ()
    mgr.check_integrity()


def test_resume_moves_the_cache_to_the_back_of_the_lru() -> None:
    mgr = make_manager(num_gpu_pages=6, num_host_pages=6)
    a = suspended(mgr, 0, 4)
    suspended(mgr, 1, 4)
    assert mgr.resume_request(a)
    mgr.suspend_request(a)                                    # now 1 is the older one
    grow_context(mgr, 2, 6)                                   # 3 pages, 2 free: shortfall 1
    assert (tiers(mgr, 0), tiers(mgr, 1)) == ((0, 0), (0, 1))


def test_resume_needs_room_excluding_itself_and_evicts_others() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4, max_util_for_resume=Fraction(1))
    a = suspended(mgr, 0, 4)
    assert mgr.evict_to_host(a) and tiers(mgr, 0) == (1, 1)
    suspended(mgr, 1, 8)                                      # all 4 GPU pages, evictable
    assert mgr.num_free_gpu_pages == 0
    assert mgr.resume_request(a)                              # 2 victims of request 1
    assert tiers(mgr, 0) == (0, 0) and tiers(mgr, 1) == (0, 0, 1, 1)
    assert (mgr.num_free_gpu_pages, mgr.num_free_host_pages) == (0, 2)
    assert mgr.get_status(0) == ACTIVE
    mgr.check_integrity()


def test_resume_gate_counts_the_resuming_cache_own_gpu_pages_as_evictable() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4, max_util_for_resume=Fraction(1, 2))
    a = suspended(mgr, 0, 6)                                  # 3 of 4 pages, suspended
    assert mgr.resume_request(a)                              # used = 4 - 1 - 3 = 0


def test_resume_refused_when_host_lacks_room_for_the_shortfall_up_front() -> None:
    """The victims are demoted before the resuming cache's host pages are released, so the
    host needs room for the shortfall even though the resume frees more host pages."""
    mgr = make_manager(num_gpu_pages=2, num_host_pages=2, max_util_for_resume=Fraction(1))
    a = suspended(mgr, 0, 4)
    assert mgr.evict_to_host(a)                               # host full, GPU empty
    suspended(mgr, 1, 4)                                      # 2 GPU pages, evictable
    before = mgr.snapshot_state()
    assert not mgr.resume_request(a)                          # shortfall 2 > host free 0
    assert mgr.snapshot_state() == before


@pytest.mark.parametrize("first_chunk", [False, True])
def test_failed_growth_atomic_when_evictable_is_short(first_chunk: bool) -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4)
    suspended(mgr, 0, 4)                                      # 2 evictable pages, 2 free
    req = ctx_request(rid=1, prompt_len=10, chunk=10)
    assert mgr.prepare_context(req)
    req.context_current_position = 0 if first_chunk else 1
    before = mgr.snapshot_state()
    assert not mgr.resize_context(req, 9)                     # 5 pages > 2 free + 2
    if first_chunk:                                           # the documented side effect
        assert mgr.get_status(1) == SUSPENDED
        mgr.resume_request(req)
    assert mgr.snapshot_state() == before and tiers(mgr, 0) == (0, 0)


def test_failed_growth_atomic_when_host_is_short() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=1)
    suspended(mgr, 0, 4)                                      # 2 evictable, host room for 1
    req = ctx_request(rid=1, prompt_len=8, chunk=8)
    assert mgr.prepare_context(req)
    req.context_current_position = 1
    before = mgr.snapshot_state()
    assert not mgr.resize_context(req, 7)                     # 4 pages: shortfall 2 > host 1
    assert mgr.snapshot_state() == before
    assert mgr.resize_context(req, 5)                         # 3 pages: shortfall 1 fits
    assert tiers(mgr, 0) == (0, 1)


def test_failed_generation_growth_after_an_evicting_resume_keeps_the_resume() -> None:
    mgr = make_manager(num_gpu_pages=3, num_host_pages=4, max_util_for_resume=Fraction(1))
    g = ctx_request(rid=0, prompt_len=4, chunk=4, draft=2)    # cap 6: 3 pages
    admit(mgr, g)
    mgr.free_resources(g)
    g = ctx_request(rid=0, prompt_len=2, chunk=2, draft=2)    # cap 4: 2 pages
    admit(mgr, g)
    mgr.suspend_request(g)
    assert mgr.evict_to_host(g)                               # host: 2 of 4 used
    suspended(mgr, 1, 6)                                      # 3 pages: GPU full
    assert not mgr.try_allocate_generation(g)                 # resume evicts 2 of 1's pages,
    assert mgr.get_status(0) == ACTIVE and tiers(mgr, 0) == (0, 0)   # growth (2) then fails
    assert tiers(mgr, 1) == (0, 1, 1) and mgr.get_capacity(0) == 4
    assert mgr.get_draft_record(0) is None
    mgr.check_integrity()


def test_no_host_tier_nothing_is_evictable() -> None:
    pol = make_manager().policy.replace(host_tier=False)
    mgr = make_manager(pol, num_gpu_pages=4, num_host_pages=4)
    suspended(mgr, 0, 4)
    assert mgr.num_evictable_gpu_pages == 0 and mgr.num_available_gpu_pages() == 2
    req = ctx_request(rid=1, prompt_len=6, chunk=6)
    assert mgr.prepare_context(req)
    before = mgr.snapshot_state()
    req.context_current_position = 1
    assert not mgr.resize_context(req, 5)
    assert mgr.snapshot_state() == before and tiers(mgr, 0) == (0, 0)


def test_evict_to_host_demotes_the_rest_of_a_partly_demoted_cache() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4)
    a = suspended(mgr, 0, 8)                                  # 4 pages
    mgr.free_resources(a)
    a = suspended(mgr, 0, 6)                                  # 3 pages
    grow_context(mgr, 1, 4)                                   # 2 pages, 1 free: shortfall 1
    assert tiers(mgr, 0) == (0, 0, 1)
    host_page = mgr.get_page_table(0)[2]
    assert mgr.evict_to_host(a)
    assert tiers(mgr, 0) == (1, 1, 1) and mgr.get_page_table(0)[2] == host_page
    assert (mgr.num_free_gpu_pages, mgr.num_free_host_pages) == (2, 1)
    with pytest.raises(ProtocolError, match="no GPU pages"):
        mgr.evict_to_host(a)
    mgr.check_integrity()


def test_evict_to_host_refused_when_host_lacks_the_gpu_pages() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=2)
    suspended(mgr, 0, 2)                                      # 1 page
    a = suspended(mgr, 1, 6)                                  # 3 pages
    grow_context(mgr, 2, 2)                                   # 1 page, 0 free: 1 victim of 0
    assert tiers(mgr, 0) == (1,)
    before = mgr.snapshot_state()
    assert not mgr.evict_to_host(a)                           # 3 GPU pages, host has 1 free
    assert mgr.snapshot_state() == before
    empty = ctx_request(rid=3)
    mgr.prepare_context(empty)
    mgr.suspend_request(empty)
    with pytest.raises(ProtocolError, match="no GPU pages"):
        mgr.evict_to_host(empty)                              # an empty cache: nothing to evict


def test_free_returns_each_page_to_its_own_tier() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4)
    a = suspended(mgr, 0, 8)                                  # 4 pages
    b = grow_context(mgr, 1, 4)                               # 2 of them demoted
    assert tiers(mgr, 0) == (0, 0, 1, 1)
    mgr.free_resources(a)
    assert (mgr.num_free_gpu_pages, mgr.num_free_host_pages) == (2, 4)
    mgr.free_resources(b)
    assert (mgr.num_free_gpu_pages, mgr.num_free_host_pages) == (4, 4)
    mgr.check_integrity()


def test_generation_growth_and_resume_evict() -> None:
    mgr = make_manager(num_gpu_pages=5, num_host_pages=4, max_util_for_resume=Fraction(1))
    g = ctx_request(rid=0, prompt_len=2, chunk=2, draft=0)
    admit(mgr, g)                                             # 1 page
    a = suspended(mgr, 1, 8)                                  # 4 pages: GPU full
    assert mgr.generation_pages_needed(g) == 1 and mgr.num_available_gpu_pages(0) == 4
    assert mgr.try_allocate_generation(g) and tiers(mgr, 1) == (0, 0, 0, 1)
    mgr.suspend_request(g)
    assert mgr.num_available_gpu_pages(1) == 2               # 0's 2 pages, host 3 free: 2
    assert mgr.resume_request(a)                             # recall 1: evicts 0's last page
    assert tiers(mgr, 0) == (0, 1) and tiers(mgr, 1) == (0, 0, 0, 0)
    assert mgr.generation_pages_needed(g) == 1 + 0           # recall 1, no growth needed
    mgr.check_integrity()


def test_integrity_detects_tier_corruption() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4)
    suspended(mgr, 0, 4)
    grow_context(mgr, 1, 6)
    cache = mgr._caches[0]
    assert cache.tiers is not None
    cache.tiers[1] = 0                                        # a host id listed as GPU
    with pytest.raises(InvariantViolation, match="INV-"):
        mgr.check_integrity()
    cache.tiers[1] = 1
    cache.num_host = 2
    with pytest.raises(InvariantViolation, match="INV-TIER"):
        mgr.check_integrity()
    cache.num_host = 1
    mgr._suspended.pop(0)
    with pytest.raises(InvariantViolation, match="suspension order"):
        mgr.check_integrity()


def test_executor_reports_implicit_evictions() -> None:
    ex, reqs = busy_executor()
    evicted = []
    while ex.num_unfinished() and ex.iteration < 2000:
        (r,) = ex.step()
        evicted += r.evicted
        ex.managers[0].check_integrity()
    assert ex.num_unfinished() == 0 and evicted
    assert all(q.state == RequestState.GENERATION_COMPLETE for q in reqs)
