"""Per-page residency and implicit eviction in the torch manager (docs/gpu_impl.md): partial
demotion by another cache's growth and recall by resume with the KV contents intact, the MRU
victim choice (against the reference's LRU one), resumes that need room, failure atomicity,
batches that evict equal the single calls, and the integrity checks."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from gpu_helpers import DEVICES, expected_kv

from kvspec.config import Config
from kvspec.errors import InvariantViolation, ProtocolError
from kvspec.gpu_impl import GpuRequest, Manager
from kvspec.policy import PRESETS
from kvspec.reference import LlmRequest, ReferenceKVCacheManager

POLICY = PRESETS["pr13805-reviewed"]
CFG = Config(tokens_per_block=2, num_gpu_pages=4, num_host_pages=4, num_requests=4,
             max_util_for_resume=Fraction(1))
WIDTH = 3


def make(cfg: Config = CFG, device: str = "cpu") -> Manager:
    return Manager(cfg, POLICY, device=device, kv_width=WIDTH)


def written(m: Manager, rid: int, tokens: int, suspend: bool = True) -> GpuRequest:
    """A request whose first ``tokens`` tokens are written and forwarded (history = tokens),
    then suspended."""
    q = GpuRequest(rid, prompt_len=tokens + 1, context_chunk_size=tokens)
    assert m.prepare_context(q) and m.resize_context(q, tokens)
    m.forward_write([q], [0], [tokens])
    q.context_current_position = tokens
    m.update_context_resources([q])
    if suspend:
        m.suspend_request(q)
    return q


def grown(m: Manager, rid: int, tokens: int) -> GpuRequest:
    q = GpuRequest(rid, prompt_len=tokens, context_chunk_size=tokens)
    assert m.prepare_context(q) and m.resize_context(q, tokens)
    return q


def intact(m: Manager, *rids: int) -> None:
    for rid in rids:
        want = expected_kv(rid, m.get_history(rid), WIDTH)
        assert torch.equal(m.read_kv(rid).cpu(), want), f"KV of request {rid} changed"


def tiers(m: Manager, rid: int) -> tuple[int, ...]:
    t = m.get_page_tiers(rid)
    assert len(t) == len(m.get_page_table(rid)) and sum(t) == m.get_host_pages(rid)
    return t


@pytest.mark.parametrize("device", DEVICES)
def test_partial_demotion_and_recall_keep_the_contents(device: str) -> None:
    m = make(device=device)
    a = written(m, 0, 6)                                      # 3 pages, suspended
    table = m.get_page_table(0)
    d2h = m.transfer.d2h_kv_bytes
    grown(m, 1, 4)                                            # 2 pages, 1 free: shortfall 1
    assert tiers(m, 0) == (1, 0, 0) and m.get_page_table(0)[1:] == table[1:]
    assert m.transfer.d2h_kv_bytes - d2h == 2 * WIDTH * 4     # one page of 2 tokens
    assert (m.num_free_gpu_pages, m.num_free_host_pages, m.num_evictable_gpu_pages) == (0, 3, 2)
    intact(m, 0)                                              # read across both tiers
    m.check_integrity()
    m.free_resources(GpuRequest(1))
    assert m.resume_request(a)
    assert tiers(m, 0) == (0, 0, 0) and m.get_page_table(0)[1:] == table[1:]
    assert (m.num_free_gpu_pages, m.num_free_host_pages) == (1, 4)
    intact(m, 0)
    m.check_integrity()


def _three_suspended_then_growth(m: Manager | ReferenceKVCacheManager) -> None:
    """Requests 0, 1, 2 (2 pages each) suspended in that order; request 3 grows by 5 pages
    with 2 free: 3 pages are demoted."""
    for rid in range(3):
        q = (GpuRequest(rid, prompt_len=4, context_chunk_size=4) if isinstance(m, Manager)
             else LlmRequest(rid, prompt_len=4, context_chunk_size=4))
        assert m.prepare_context(q) and m.resize_context(q, 4)
        m.suspend_request(q)
    q = (GpuRequest(3, prompt_len=10, context_chunk_size=10) if isinstance(m, Manager)
         else LlmRequest(3, prompt_len=10, context_chunk_size=10))
    assert m.prepare_context(q) and m.resize_context(q, 10)


def test_victims_most_recently_suspended_first_from_the_front_unlike_the_reference() -> None:
    cfg = CFG.replace(num_gpu_pages=8, num_host_pages=8)
    m = make(cfg)
    ref = ReferenceKVCacheManager(cfg, POLICY)
    _three_suspended_then_growth(m)
    _three_suspended_then_growth(ref)
    assert [tiers(m, r) for r in range(3)] == [(0, 0), (1, 0), (1, 1)]
    assert [ref.get_page_tiers(r) for r in range(3)] == [(1, 1), (0, 1), (0, 0)]
    for mgr in (m, ref):                                      # what the protocol fixes
        assert (mgr.num_free_gpu_pages, mgr.num_free_host_pages) == (0, 5)
        assert sum(mgr.get_host_pages(r) for r in range(3)) == 3
        mgr.check_integrity()


def test_resume_evicts_others_never_itself() -> None:
    m = make()
    written(m, 0, 2)                                          # 1 page, suspended first
    a = written(m, 1, 6)                                      # 3 pages, the most recent
    grown(m, 2, 2)                                            # shortfall 1: a's front page
    assert (tiers(m, 0), tiers(m, 1)) == ((0,), (1, 0, 0))
    assert m.resume_request(a)                                # a is excluded: 0's page goes
    assert (tiers(m, 0), tiers(m, 1)) == ((1,), (0, 0, 0))
    intact(m, 0, 1)
    m.check_integrity()


def test_resume_needs_host_room_for_the_shortfall_up_front() -> None:
    m = make(CFG.replace(num_gpu_pages=2, num_host_pages=2))
    a = written(m, 0, 4)
    assert m.evict_to_host(a)                                 # host full
    written(m, 1, 4)                                          # GPU full, evictable
    before = m.snapshot_state()
    assert not m.resume_request(a)                            # shortfall 2 > host free 0
    assert m.snapshot_state() == before
    intact(m, 0, 1)


def test_failed_growth_changes_nothing_when_evictable_or_host_is_short() -> None:
    m = make(CFG.replace(num_host_pages=1))
    written(m, 0, 4)                                          # 2 evictable, host room for 1
    q = GpuRequest(1, prompt_len=12, context_chunk_size=12)
    assert m.prepare_context(q)
    q.context_current_position = 1                            # a later chunk: stays ACTIVE
    before = m.snapshot_state()
    assert not m.resize_context(q, 9)                         # 5 pages > 2 free + 2 evictable
    assert not m.resize_context(q, 7)                         # shortfall 2 > host free 1
    assert m.snapshot_state() == before
    intact(m, 0)
    assert m.resize_context(q, 5) and tiers(m, 0) == (1, 0)  # shortfall 1 fits
    intact(m, 0)


def test_no_host_tier_nothing_is_evictable() -> None:
    m = Manager(CFG, POLICY.replace(host_tier=False), device="cpu", kv_width=WIDTH)
    written(m, 0, 4)
    q = GpuRequest(1, prompt_len=6, context_chunk_size=6)
    assert m.prepare_context(q)
    q.context_current_position = 1
    before = m.snapshot_state()
    assert m.num_evictable_gpu_pages == 0 and not m.resize_context(q, 5)
    assert m.snapshot_state() == before


def test_evict_to_host_of_a_partly_demoted_cache() -> None:
    m = make()
    a = written(m, 0, 6)                                      # 3 pages
    grown(m, 1, 4)                                            # one of them demoted
    assert tiers(m, 0) == (1, 0, 0)
    small = Manager(CFG.replace(num_host_pages=2), POLICY, device="cpu", kv_width=WIDTH)
    b = written(small, 0, 6)
    grown(small, 1, 4)
    before = small.snapshot_state()
    assert not small.evict_to_host(b)                         # 2 GPU pages, host has 1 free
    assert small.snapshot_state() == before
    assert m.evict_to_host(a) and tiers(m, 0) == (1, 1, 1)
    intact(m, 0)
    with pytest.raises(ProtocolError):
        m.evict_to_host(a)                                    # all on the host
    m.free_resources(a)                                       # pages back to their tiers
    assert (m.num_free_gpu_pages, m.num_free_host_pages) == (2, 4)
    m.check_integrity()


def test_free_of_a_partly_demoted_cache() -> None:
    m = make()
    a = written(m, 0, 8)                                      # 4 pages
    grown(m, 1, 4)                                            # 2 demoted from the front
    assert tiers(m, 0) == (1, 1, 0, 0)
    m.free_resources(a)
    assert (m.num_free_gpu_pages, m.num_free_host_pages) == (2, 4)
    m.check_integrity()


def _state_after(batch: bool) -> tuple[object, ...]:
    """Requests 0 and 1 suspended with pages; a batch of three context growths (the second
    needs an eviction, the third is a first chunk with pages that fails), then a batch of
    generation growths where a later row needs an eviction."""
    cfg = Config(tokens_per_block=2, num_gpu_pages=10, num_host_pages=6, num_requests=6,
                 max_util_for_resume=Fraction(1))
    m = Manager(cfg, POLICY, device="cpu", kv_width=WIDTH)
    written(m, 0, 4)
    written(m, 1, 4)
    r2 = GpuRequest(2, prompt_len=20, context_chunk_size=2)
    r3 = GpuRequest(3, prompt_len=20, context_chunk_size=10)
    r4 = GpuRequest(4, prompt_len=20, context_chunk_size=20)
    for q in (r2, r3, r4):
        assert m.prepare_context(q)
    assert m.resize_context(r4, 2)                            # a first chunk holding a page
    reqs, tokens = [r2, r3, r4], [2, 10, 20]
    out = m.resize_context_batch(reqs, tokens) if batch else [
        m.resize_context(q, n) for q, n in zip(reqs, tokens, strict=True)]
    assert out == [True, True, False]
    assert m.get_status(4) == 1 and m.get_host_pages(0) + m.get_host_pages(1) == 1
    for q, n in ((r2, 2), (r3, 10)):
        m.forward_write([q], [0], [n])
        q.context_current_position = n
        q.draft_len = 1
    m.update_context_resources([r2, r3])
    gen = [r2, r3]
    for q in gen:
        q.state = 2
    out = m.try_allocate_generation_batch(gen) if batch else [
        m.try_allocate_generation(q) for q in gen]
    assert out == [True, True]
    assert (tiers(m, 0), tiers(m, 1), tiers(m, 4)) == ((0, 0), (1, 1), (1,))
    intact(m, 0, 1, 2, 3)
    m.check_integrity()
    return m.snapshot_state()


def test_batches_that_evict_equal_the_single_calls() -> None:
    assert _state_after(batch=True) == _state_after(batch=False)


def test_integrity_detects_corrupt_tiers_and_stamps() -> None:
    m = make()
    written(m, 0, 6)
    grown(m, 1, 4)
    m.check_integrity()
    m.cache.suspended_at[1] = 7                               # an ACTIVE row with a stamp
    with pytest.raises(InvariantViolation, match="INV-TIER"):
        m.check_integrity()
    m.cache.suspended_at[1] = 0
    m.host.count[1] = 1                                       # pages != blocks(capacity)
    with pytest.raises(InvariantViolation):
        m.check_integrity()
