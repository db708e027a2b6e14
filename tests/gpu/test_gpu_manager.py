"""Unit tests of the torch manager: protocol points, misuse, the page pool's batched fit, and
the same scenario on every available device."""

from __future__ import annotations

import pytest
import torch
from budget import scaled
from gpu_helpers import DEVICES, expected_kv
from hypothesis import given, settings
from hypothesis import strategies as st

from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvariantViolation, ProtocolError
from kvspec.gpu_impl import GpuRequest, Manager
from kvspec.gpu_impl.pages import PagePool
from kvspec.policy import PRESETS

CFG = Config(tokens_per_block=2, num_gpu_pages=6, num_host_pages=4, num_requests=3,
             max_rewind_len=1)
REVIEWED = PRESETS["pr13805-reviewed"]


def make(policy_name: str = "pr13805-reviewed", cfg: Config = CFG,
         device: str = "cpu") -> Manager:
    return Manager(cfg, PRESETS[policy_name], device=device, kv_width=2)


def admit(m: Manager, rid: int, tokens: int, prompt: int = 8) -> GpuRequest:
    r = GpuRequest(rid, prompt_len=prompt, context_chunk_size=tokens, draft_len=1)
    assert m.prepare_context(r)
    assert m.resize_context(r, tokens)
    return r


def test_new_cache_is_resumed_and_snapshot_written() -> None:
    m = make()
    r = admit(m, 0, 3)
    assert (m.get_capacity(0), m.get_status(0), m.is_never_resumed(0)) == (3, 0, False)
    assert r.py_ctx_pre_resize_cap == 0 and m.get_page_table(0) == [1, 2]
    assert m.num_free_gpu_pages == 4
    assert m.resize_context(r, 3) and r.py_ctx_pre_resize_cap is None  # idempotent: no growth


@pytest.mark.parametrize(("policy", "cleared"), [("pr13805", False), ("pr13805-reviewed", True)])
def test_failed_first_chunk_suspends_and_snapshot_rule(policy: str, cleared: bool) -> None:
    m = make(policy, CFG.replace(max_util_for_resume=1))  # the full pool must not gate resume
    admit(m, 0, 12)  # all 6 pages
    r = GpuRequest(1, prompt_len=4, context_chunk_size=4)
    assert m.prepare_context(r)
    r.py_ctx_pre_resize_cap = 7  # a stale snapshot
    before = m.get_page_table(1)
    assert not m.resize_context(r, 4)
    assert m.get_status(1) == 1 and m.get_page_table(1) == before
    assert r.py_ctx_pre_resize_cap == (None if cleared else 7)


def test_revert_context_free_and_shrink_branches() -> None:
    m = make()
    r = admit(m, 0, 2)
    r.context_current_position = 2
    m.update_context_resources([r])
    assert m.resize_context(r, 3) and r.py_ctx_pre_resize_cap == 2
    assert m.revert_allocate_context(r)  # SHRINK: capacity 2, suspended since pre > 0
    assert (m.get_capacity(0), m.get_status(0), m.num_free_gpu_pages) == (2, 1, 5)
    assert r.py_ctx_pre_resize_cap is None and m.revert_allocate_context(r)
    q = admit(m, 1, 4)
    q.context_current_position = 3
    m.update_context_resources([q])
    q.py_ctx_pre_resize_cap = 2  # history 3 > pre 2: FREE branch
    assert not m.revert_allocate_context(q)
    assert not m.has_cache(1) and q.context_current_position == 0
    m.check_integrity()


def test_swa_rewind_raises_before_mutating() -> None:
    m = make("pr13805")  # swa_scratch_reuse with max_rewind_len 1
    r = admit(m, 0, 4)
    before = m.snapshot_state()
    with pytest.raises(InvariantViolation) as info:
        m.revert_allocate_context(r)  # cap 4 - 1 > history 0
    assert info.value.invariant_id == "SWA-REWIND"
    assert m.snapshot_state() == before and r.py_ctx_pre_resize_cap == 0


def test_generation_grow_revert_trim() -> None:
    m = make()
    r = admit(m, 0, 3, prompt=3)
    r.context_current_position = 3
    m.update_context_resources([r])
    assert m.try_allocate_generation(r) and m.get_capacity(0) == 5
    assert m.get_draft_record(0) == 1
    m.revert_allocate_generation(r)
    assert (m.get_capacity(0), m.get_draft_record(0)) == (3, None)
    assert m.try_allocate_generation(r)
    m.update_resources([r], [0])  # rewind 1: capacity 4, history 4
    assert (m.get_capacity(0), m.get_history(0), m.get_committed(0)) == (4, 4, 4)


def test_resume_gate_counts_evictable_pages() -> None:
    cfg = CFG.replace(max_util_for_resume=0.5)
    m = make(cfg=cfg)
    a = admit(m, 0, 4)  # 2 of 6 pages
    m.suspend_request(a)
    b = admit(m, 1, 4)  # used = 6 - 2 - 2 evictable = 2 -> 1/3 <= 1/2 -> resumed
    m.suspend_request(b)
    assert m.resume_request(a)  # used 6 - 2 - 2 = 2
    c = GpuRequest(2, prompt_len=4, context_chunk_size=4)
    assert m.prepare_context(c) and m.resize_context(c, 4)
    assert not m.resume_request(b)  # used 6 - 0 - 2 = 4 > 3: refused, nothing changed
    assert m.get_status(1) == 1


def test_evict_and_resume_move_kv_data() -> None:
    m = make()
    r = admit(m, 0, 5)
    m.forward_write([r], [0], [5])
    r.context_current_position = 5
    m.update_context_resources([r])
    m.suspend_request(r)
    assert m.evict_to_host(r) and m.get_host_pages(0) == 3 and m.get_page_tiers(0) == (1, 1, 1)
    assert (m.num_free_gpu_pages, m.num_free_host_pages) == (6, 1)
    assert torch.equal(m.read_kv(0), expected_kv(0, 5, 2))
    admit(m, 1, 12)  # fill the GPU with another request
    assert not m.resume_request(r)  # pages on host, no free GPU pages
    m.free_resources(GpuRequest(1))
    assert m.resume_request(r) and m.get_host_pages(0) == 0
    assert torch.equal(m.read_kv(0), expected_kv(0, 5, 2))
    m.check_integrity()


def test_misuse_raises_and_changes_nothing() -> None:
    m = make()
    r = admit(m, 0, 2)
    before = m.snapshot_state()
    with pytest.raises(ProtocolError):
        m.resize_context(GpuRequest(1), 1)  # no cache
    with pytest.raises(ProtocolError):
        m.prepare_context(GpuRequest(7))  # unknown slot
    with pytest.raises(InvalidArgument):
        m.resize_context(r, -1)
    with pytest.raises(ProtocolError):
        m.free_resources(GpuRequest(2))  # double free / never allocated
    with pytest.raises(InvalidArgument):
        m.resize_context_batch([r, r], [1, 1])
    m.suspend_request(r)
    with pytest.raises(ProtocolError):
        m.resize_context(r, 4)  # suspended
    with pytest.raises(ProtocolError):
        m.evict_to_host(admit(m, 1, 1))  # ACTIVE
    no_tier = Manager(CFG, REVIEWED.replace(host_tier=False), device="cpu")
    q = admit(no_tier, 0, 2)
    no_tier.suspend_request(q)
    with pytest.raises(ProtocolError):
        no_tier.evict_to_host(q)
    assert no_tier.num_free_host_pages == 0
    m.resume_request(r)
    m.free_resources(GpuRequest(1))
    assert m.snapshot_state() == before


def _sequential_fit(need: list[int], eligible: list[bool], free: int) -> list[bool]:
    out = []
    for n, e in zip(need, eligible, strict=True):
        ok = e and n <= free
        free -= n if ok else 0
        out.append(ok)
    return out


@settings(max_examples=scaled(200), deadline=None)
@given(need=st.lists(st.integers(0, 6), max_size=30), free=st.integers(0, 20),
       data=st.data())
def test_fit_equals_sequential_first_fit(need: list[int], free: int,
                                         data: st.DataObject) -> None:
    eligible = data.draw(st.lists(st.booleans(), min_size=len(need), max_size=len(need)))
    pool = PagePool(free, 1, 1, torch.device("cpu"))
    got = pool.fit(torch.tensor(need, dtype=torch.int64), torch.tensor(eligible, dtype=torch.bool))
    assert got.tolist() == _sequential_fit(need, eligible, free)


@pytest.mark.parametrize("device", DEVICES)
def test_scenario_on_device(device: str) -> None:
    """Batched grow / revert / trim, suspend, evict and resume on one device; state tensors
    live there; KV reads back exactly; only diffs are shipped host->device."""
    cfg = Config(tokens_per_block=4, num_gpu_pages=64, num_host_pages=32, num_requests=16,
                 max_draft_len=2)
    m = Manager(cfg, REVIEWED, device=device, kv_width=8)
    assert m.gpu.table.device.type == device and m.kv.gpu.device.type == device
    reqs = [GpuRequest(i, prompt_len=5, context_chunk_size=5, draft_len=2) for i in range(16)]
    for q in reqs:
        assert m.prepare_context(q)
    assert all(m.resize_context_batch(reqs, [7] * 16))
    m.forward_write(reqs, [0] * 16, [5] * 16)
    for q in reqs:
        q.context_current_position = 5
    m.update_context_resources(reqs)
    shipped = m.h2d_bytes
    grown = m.try_allocate_generation_batch(reqs)
    assert sum(grown) == 16
    assert m.h2d_bytes - shipped == 16 * 8  # (row, draft_len) int32 per request, no table rows
    m.revert_allocate_generation_batch(reqs[:8])
    m.forward_write(reqs[8:], [5] * 8, [3] * 8)
    m.update_resources_batch(reqs[8:], [1] * 8)
    for rid in range(16):
        assert torch.equal(m.read_kv(rid).cpu(), expected_kv(rid, 5 if rid < 8 else 7, 8))
    m.suspend_request(reqs[3])
    assert m.evict_to_host(reqs[3])
    assert m.try_allocate_generation_batch(reqs[:5]) == [True] * 5  # resumes 3 from host
    assert torch.equal(m.read_kv(3).cpu(), expected_kv(3, 5, 8))
    m.check_integrity()
