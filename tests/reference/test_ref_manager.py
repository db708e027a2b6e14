"""ReferenceKVCacheManager: each operation and the protocol's edge cases (docs/protocol.md)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from helpers_ref import admit, ctx_request, make_manager

from kvspec.errors import InvalidArgument, InvariantViolation, ProtocolError
from kvspec.reference import CacheStatus, LlmRequest, PageState, RequestState

ACTIVE, SUSPENDED = CacheStatus.ACTIVE, CacheStatus.SUSPENDED


def test_prepare_creates_suspended_cache_then_resumes() -> None:
    mgr = make_manager()
    req = ctx_request()
    assert mgr.prepare_context(req)
    assert mgr.get_status(0) == ACTIVE
    assert not mgr.is_never_resumed(0)
    assert (mgr.get_capacity(0), mgr.get_history(0), mgr.get_committed(0)) == (0, 0, 0)
    assert mgr.get_page_table(0) == ()
    mgr.check_integrity()


def test_prepare_refused_by_gate_keeps_new_cache_suspended() -> None:
    mgr = make_manager(num_gpu_pages=4, max_util_for_resume=Fraction(1, 2))
    big = ctx_request(rid=1, prompt_len=6, chunk=6)
    assert mgr.prepare_context(big) and mgr.resize_context(big, 6)   # 3 of 4 pages used
    req = ctx_request()
    assert not mgr.prepare_context(req)
    assert mgr.has_cache(0) and mgr.get_status(0) == SUSPENDED and mgr.is_never_resumed(0)


def test_prepare_later_chunk_without_cache_raises() -> None:
    mgr = make_manager()
    with pytest.raises(ProtocolError, match="only a first chunk"):
        mgr.prepare_context(ctx_request(pos=2))
    assert not mgr.has_cache(0)


def test_resize_grows_and_writes_snapshot_only_on_growth() -> None:
    mgr = make_manager()
    req = ctx_request(prompt_len=4, chunk=3)
    mgr.prepare_context(req)
    assert mgr.resize_context(req, 3)
    assert mgr.get_capacity(0) == 3 and len(mgr.get_page_table(0)) == 2
    assert req.py_ctx_pre_resize_cap == 0
    assert mgr.resize_context(req, 2)                # max(cap, target): no growth
    assert mgr.get_capacity(0) == 3 and req.py_ctx_pre_resize_cap is None
    assert mgr.num_free_gpu_pages == 2


@pytest.mark.parametrize("policy, cleared", [("pr13805", False), ("pr13805-reviewed", True)])
def test_failed_first_chunk_suspends_and_snapshot_follows_policy(policy: str,
                                                                 cleared: bool) -> None:
    mgr = make_manager(policy)
    req = ctx_request(prompt_len=10, chunk=10)
    mgr.prepare_context(req)
    req.py_ctx_pre_resize_cap = 7                    # a stale snapshot from earlier
    assert not mgr.resize_context(req, 10)
    assert mgr.get_status(0) == SUSPENDED and mgr.get_capacity(0) == 0
    assert req.py_ctx_pre_resize_cap == (None if cleared else 7)
    mgr.check_integrity()


def test_failed_later_chunk_stays_active() -> None:
    mgr = make_manager(num_gpu_pages=2)
    req = ctx_request(prompt_len=8, chunk=4)
    mgr.prepare_context(req)
    assert mgr.resize_context(req, 4)
    req.context_current_position = 4
    mgr.update_context_resources([req])
    assert not mgr.resize_context(req, 4)
    assert mgr.get_status(0) == ACTIVE and mgr.get_capacity(0) == 4


def test_resize_misuse_raises_without_change() -> None:
    mgr = make_manager()
    req = ctx_request()
    with pytest.raises(ProtocolError, match="has no KV cache"):
        mgr.resize_context(req, 2)
    mgr.prepare_context(req)
    with pytest.raises(InvalidArgument, match="num_tokens=-1"):
        mgr.resize_context(req, -1)
    mgr.suspend_request(req)
    before = mgr.snapshot_state()
    with pytest.raises(ProtocolError, match="SUSPENDED"):
        mgr.resize_context(req, 2)
    assert mgr.snapshot_state() == before


def _resized(mgr_policy: str = "pr13805-reviewed", **kw: object) -> tuple:
    mgr = make_manager(mgr_policy, **kw)
    req = ctx_request(prompt_len=8, chunk=4)
    mgr.prepare_context(req)
    mgr.resize_context(req, 4)
    return mgr, req


def test_revert_without_snapshot_is_noop_true() -> None:
    mgr, req = _resized()
    req.py_ctx_pre_resize_cap = None
    before = mgr.snapshot_state()
    assert mgr.revert_allocate_context(req)
    assert mgr.snapshot_state() == before


def test_revert_shrink_to_zero_stays_active() -> None:
    mgr, req = _resized()
    assert mgr.revert_allocate_context(req)
    assert mgr.get_capacity(0) == 0 and mgr.get_status(0) == ACTIVE
    assert req.py_ctx_pre_resize_cap is None and mgr.num_free_gpu_pages == 4
    mgr.check_integrity()


def test_revert_shrink_to_positive_suspends() -> None:
    mgr, req = _resized()
    req.context_current_position = 4
    mgr.update_context_resources([req])
    assert mgr.resize_context(req, 4) and req.py_ctx_pre_resize_cap == 4
    assert mgr.revert_allocate_context(req)
    assert mgr.get_capacity(0) == 4 and mgr.get_history(0) == 4
    assert mgr.get_status(0) == SUSPENDED
    assert [mgr.get_page_state(p) for p in (1, 2, 3)] == [
        PageState.EVICTABLE, PageState.EVICTABLE, PageState.FREE]


def test_revert_free_branch_drops_cache_and_rewinds() -> None:
    mgr, req = _resized()
    req.context_current_position = 4
    mgr.update_context_resources([req])
    req.py_ctx_pre_resize_cap = 2                   # history 4 > snapshot 2 (stale)
    assert not mgr.revert_allocate_context(req)
    assert not mgr.has_cache(0) and req.context_current_position == 0
    assert req.py_ctx_pre_resize_cap is None and mgr.num_free_gpu_pages == 4


def test_revert_pre_at_least_capacity_and_inactive_are_noops() -> None:
    mgr, req = _resized()
    req.py_ctx_pre_resize_cap = 4
    assert mgr.revert_allocate_context(req) and mgr.get_capacity(0) == 4
    req.py_ctx_pre_resize_cap = 0
    mgr.suspend_request(req)
    assert mgr.revert_allocate_context(req) and mgr.get_capacity(0) == 4
    assert req.py_ctx_pre_resize_cap is None


def test_revert_swa_rewind_raises_before_mutating() -> None:
    mgr, req = _resized("pr13805", max_rewind_len=2)
    before = (mgr.snapshot_state(), req.py_ctx_pre_resize_cap)
    with pytest.raises(InvariantViolation, match="SWA-REWIND") as info:
        mgr.revert_allocate_context(req)
    assert info.value.invariant_id == "SWA-REWIND"
    assert (mgr.snapshot_state(), req.py_ctx_pre_resize_cap) == before


def test_revert_swa_within_window_is_allowed() -> None:
    mgr, req = _resized("pr13805", max_rewind_len=4)
    assert mgr.revert_allocate_context(req) and mgr.get_capacity(0) == 0


def gen_request(mgr, rid: int = 0, prompt_len: int = 2, draft: int = 1) -> LlmRequest:
    req = ctx_request(rid=rid, prompt_len=prompt_len, chunk=prompt_len, draft=draft)
    admit(mgr, req)
    return req


def test_context_last_chunk_reserves_draft() -> None:
    mgr = make_manager()
    gen_request(mgr, prompt_len=2, draft=1)
    assert mgr.get_capacity(0) == 3 and mgr.get_history(0) == 2


def test_generation_grow_forward_trim() -> None:
    mgr = make_manager(num_gpu_pages=8)
    req = gen_request(mgr, prompt_len=2, draft=2)      # cap 4, history 2
    assert mgr.try_allocate_generation(req)
    assert mgr.get_capacity(0) == 7 and mgr.get_draft_record(0) == 2
    mgr.update_resources([req], [1])                   # rewind 1
    assert (mgr.get_capacity(0), mgr.get_history(0), mgr.get_committed(0)) == (6, 4, 4)
    assert mgr.get_draft_record(0) is None
    mgr.check_integrity()


def test_generation_revert() -> None:
    mgr = make_manager(num_gpu_pages=8)
    req = gen_request(mgr, draft=1)
    assert mgr.try_allocate_generation(req)
    mgr.revert_allocate_generation(req)
    assert mgr.get_capacity(0) == 3 and mgr.get_draft_record(0) is None
    mgr.revert_allocate_generation(req)                # no record: no-op
    assert mgr.get_capacity(0) == 3


def test_generation_failure_atomic_and_resumed_stays_active() -> None:
    mgr = make_manager(num_gpu_pages=2)
    req = gen_request(mgr, prompt_len=2, draft=1)      # 2 pages
    mgr.suspend_request(req)
    assert not mgr.try_allocate_generation(req)
    assert mgr.get_status(0) == ACTIVE and mgr.get_capacity(0) == 3
    assert mgr.get_draft_record(0) is None


def test_draft_record_before_resize_leaves_record_on_failure() -> None:
    mgr = make_manager("draft-before-resize", num_gpu_pages=2)
    req = gen_request(mgr, prompt_len=4, draft=0)      # 2 pages, cap 4
    assert not mgr.try_allocate_generation(req)
    assert mgr.get_draft_record(0) == 0
    before = mgr.snapshot_state()
    with pytest.raises(InvariantViolation, match="INV-LEN"):
        mgr.revert_allocate_generation(req)            # 4 - 1 - 0 = 3 < history 4
    assert mgr.snapshot_state() == before


def test_generation_misuse() -> None:
    mgr = make_manager()
    req = ctx_request()
    with pytest.raises(ProtocolError, match="GENERATION_IN_PROGRESS"):
        mgr.try_allocate_generation(req)
    req.state = RequestState.GENERATION_IN_PROGRESS
    with pytest.raises(ProtocolError, match="has no KV cache"):
        mgr.try_allocate_generation(req)


def test_update_resources_validates_whole_batch_first() -> None:
    mgr = make_manager(num_gpu_pages=8)
    a = gen_request(mgr, rid=0, draft=1)
    b = gen_request(mgr, rid=1, draft=1)
    mgr.try_allocate_generation(a)
    mgr.try_allocate_generation(b)
    before = mgr.snapshot_state()
    with pytest.raises(InvalidArgument, match="accepted=2"):
        mgr.update_resources([a, b], [1, 2])
    with pytest.raises(InvalidArgument, match="2 requests but 1"):
        mgr.update_resources([a, b], [1])
    with pytest.raises(InvalidArgument, match="listed twice"):
        mgr.update_resources([a, a], [0, 0])
    assert mgr.snapshot_state() == before


def test_update_context_resources_rejects_bad_position() -> None:
    mgr, req = _resized()
    req.context_current_position = 6
    before = mgr.snapshot_state()
    with pytest.raises(InvariantViolation, match="INV-LEN"):
        mgr.update_context_resources([req])
    assert mgr.snapshot_state() == before


def test_suspend_evict_resume_roundtrip() -> None:
    mgr = make_manager(num_gpu_pages=4, num_host_pages=4)
    req = gen_request(mgr, prompt_len=4, draft=0)      # 2 GPU pages
    gpu_pages = mgr.get_page_table(0)
    with pytest.raises(ProtocolError, match="suspend it first"):
        mgr.evict_to_host(req)
    mgr.suspend_request(req)
    assert mgr.num_evictable_gpu_pages == 2
    assert mgr.evict_to_host(req)
    assert mgr.get_host_pages(0) == 2 and mgr.get_page_tiers(0) == (1, 1)
    assert mgr.num_free_gpu_pages == 4 and mgr.num_free_host_pages == 2
    assert mgr.num_evictable_gpu_pages == 0
    with pytest.raises(ProtocolError, match="no GPU pages"):
        mgr.evict_to_host(req)
    assert mgr.resume_request(req)
    assert mgr.get_host_pages(0) == 0 and mgr.get_page_tiers(0) == (0, 0)
    assert len(mgr.get_page_table(0)) == 2
    assert set(mgr.get_page_table(0)) <= set(range(1, 5)) and gpu_pages
    mgr.check_integrity()


def test_evict_refused_when_host_full_and_without_tier() -> None:
    mgr = make_manager(num_host_pages=1)
    req = gen_request(mgr, prompt_len=4, draft=0)
    mgr.suspend_request(req)
    before = mgr.snapshot_state()
    assert not mgr.evict_to_host(req)
    assert mgr.snapshot_state() == before
    mgr2 = make_manager(get_policy_no_host())
    req2 = gen_request(mgr2, prompt_len=4, draft=0)
    mgr2.suspend_request(req2)
    with pytest.raises(ProtocolError, match="no host tier"):
        mgr2.evict_to_host(req2)


def get_policy_no_host():
    from kvspec.policy import get_policy
    return get_policy("pr14849").replace(host_tier=False)


def test_resume_from_host_needs_free_gpu_pages() -> None:
    mgr = make_manager(num_gpu_pages=2, num_host_pages=2)
    req = gen_request(mgr, prompt_len=4, draft=0)
    mgr.suspend_request(req)
    mgr.evict_to_host(req)
    other = gen_request(mgr, rid=1, prompt_len=2, draft=0)
    assert other and mgr.num_free_gpu_pages == 1
    before = mgr.snapshot_state()
    assert not mgr.resume_request(req)
    assert mgr.snapshot_state() == before


def test_resume_gate_counts_evictable_only_with_host_tier() -> None:
    for policy, expect in (("pr13805-reviewed", True), (get_policy_no_host(), False)):
        mgr = make_manager(policy, num_gpu_pages=4, max_util_for_resume=Fraction(1, 2))
        a = gen_request(mgr, rid=0, prompt_len=6, draft=0)   # 3 of 4 pages
        mgr.suspend_request(a)
        assert mgr.prepare_context(ctx_request(rid=1)) is expect


def test_free_resources_and_double_free() -> None:
    mgr = make_manager()
    req = gen_request(mgr, prompt_len=4, draft=0)
    mgr.try_allocate_generation(req)
    mgr.free_resources(req)
    assert not mgr.has_cache(0) and mgr.get_draft_record(0) is None
    assert mgr.num_free_gpu_pages == 4
    with pytest.raises(ProtocolError, match="has no KV cache"):
        mgr.free_resources(req)


def test_free_host_resident_cache_returns_host_pages() -> None:
    mgr = make_manager()
    req = gen_request(mgr, prompt_len=4, draft=0)
    mgr.suspend_request(req)
    mgr.evict_to_host(req)
    mgr.free_resources(req)
    assert (mgr.num_free_gpu_pages, mgr.num_free_host_pages) == (4, 4)
    mgr.check_integrity()


def test_observations_on_unknown_request_raise() -> None:
    mgr = make_manager()
    for get in (mgr.get_capacity, mgr.get_history, mgr.get_committed, mgr.get_status,
                mgr.get_host_pages, mgr.get_page_table, mgr.get_page_tiers):
        with pytest.raises(ProtocolError, match="request 9 has no KV cache"):
            get(9)
    assert mgr.get_draft_record(9) is None
    with pytest.raises(InvalidArgument):
        mgr.get_page_state(0)


def test_suspend_and_resume_misuse() -> None:
    mgr = make_manager()
    req = ctx_request()
    mgr.prepare_context(req)
    with pytest.raises(ProtocolError, match="already ACTIVE"):
        mgr.resume_request(req)
    mgr.suspend_request(req)
    with pytest.raises(ProtocolError, match="already SUSPENDED"):
        mgr.suspend_request(req)


def test_check_integrity_detects_corruption() -> None:
    mgr = make_manager()
    req = gen_request(mgr, prompt_len=4, draft=0)
    mgr._caches[0].pages.append(mgr._gpu._free[-1])       # a page both free and held
    with pytest.raises(InvariantViolation, match="INV-"):
        mgr.check_integrity()
    assert req


def test_zero_gpu_pages() -> None:
    mgr = make_manager(num_gpu_pages=0)
    req = ctx_request()
    assert mgr.prepare_context(req)                    # utilization 0 when G == 0
    assert not mgr.resize_context(req, 4)
    assert mgr.get_status(0) == SUSPENDED


def test_no_host_tier_means_no_host_pages() -> None:
    mgr = make_manager(get_policy_no_host(), num_host_pages=4)
    assert mgr.num_free_host_pages == 0
