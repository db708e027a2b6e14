"""Torch-manager behaviours the gpu tests left unpinned, found by the mutation run of issue 10
(docs/strength.md): the content oracle's token writes (used by the conformance checks, never by
the other gpu tests) and the default device; and by the second run (session 6): error messages,
integrity-check branches, the row API's int32 rows, run recognition and validated-rows cache,
the fast path at the table width, the staging buffer's doubling. Run on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvariantViolation, ProtocolError
from kvspec.gpu_impl import GpuRequest, Manager, design
from kvspec.gpu_impl.context_ops import grow_context_batch
from kvspec.gpu_impl.kv_store import KVStore
from kvspec.gpu_impl.row_sets import Rows, row_checks
from kvspec.gpu_impl.transfer import Transfer
from kvspec.policy import PRESETS

CFG = Config(tokens_per_block=2, num_gpu_pages=6, num_host_pages=4, num_requests=3)


def test_written_tokens_read_back_through_the_page_table_across_tiers() -> None:
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu", kv_width=3)
    r = GpuRequest(0, prompt_len=5, context_chunk_size=5)
    assert m.prepare_context(r) and m.resize_context(r, 5)
    m.write_tokens(0, 0, [7, 8])                              # the engine writes KV ...
    m.write_tokens(0, 2, [9, 10, 11])                         # ... chunk by chunk
    r.context_current_position = 5
    m.update_context_resources([r])                           # ... then history = 5
    assert m.read_tokens(0, 5) == [7, 8, 9, 10, 11]
    assert m.read_kv(0)[:, 1:].eq(0).all()                    # lane 0 only
    m.suspend_request(r)
    assert m.evict_to_host(r) and m.get_host_pages(0) == 3
    assert m.read_tokens(0, 5) == [7, 8, 9, 10, 11]           # read from the host tier
    assert m.resume_request(r) and m.get_host_pages(0) == 0
    assert m.read_tokens(0, 5) == [7, 8, 9, 10, 11]           # recalled to fresh GPU pages


def test_a_manager_without_a_device_uses_cuda_when_present_else_the_cpu() -> None:
    m = Manager(CFG, PRESETS["pr13805-reviewed"])
    assert m.device.type == ("cuda" if torch.cuda.is_available() else "cpu")  # cuda: "cuda:N"


# ---- the second mutation run (session 6): errors, integrity checks, row API, staging ------


def _ctx(m: Manager, rid: int, tokens: int, draft: int = 0) -> GpuRequest:
    """A request of ``rid`` whose one context chunk of ``tokens`` was prepared, grown (plus
    ``draft`` on the last chunk) and forwarded: ACTIVE, history ``tokens``."""
    r = GpuRequest(rid, prompt_len=tokens, context_chunk_size=tokens, draft_len=draft)
    assert m.prepare_context(r) and m.resize_context(r, tokens + draft)
    r.context_current_position = tokens
    m.update_context_resources([r])
    return r


def _aten_ops(fn: Callable[[], object]) -> list[str]:
    """The aten operators ``fn`` dispatches (metadata reads such as ``numel`` are none)."""
    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                               kwargs: dict[str, Any] | None = None) -> Any:
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def test_errors_name_the_request_and_the_fix() -> None:
    """Unknown ids, forwards past capacity, resumes and context updates of the wrong cache
    raise typed errors whose message names the offending request."""
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu")
    with pytest.raises(ProtocolError, match=r"unknown request id\(s\) \[7\]"):
        m.suspend_request_batch([GpuRequest(0), GpuRequest(7)])
    r0, r1 = _ctx(m, 0, 2), _ctx(m, 1, 2)
    with pytest.raises(ProtocolError, match=r"request\(s\) \[1\]: forward_write needs an "
                                            r"ACTIVE cache with start \+ n <= capacity"):
        m.forward_write([r0, r1], [0, 1], [2, 2])
    with pytest.raises(ProtocolError, match="request 2: resume_request without a cache"):
        m.resume_request(GpuRequest(2))
    m.suspend_request(r1)
    with pytest.raises(ProtocolError, match=r"request\(s\) \[1\]: update_context_resources "
                                            r"needs an ACTIVE cache \(only forwarded"):
        m.update_context_resources([r0, r1])


def test_free_resources_batch_empties_every_listed_slot() -> None:
    """The batched free releases each cache from whichever tier holds it."""
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu")
    r0, r1 = _ctx(m, 0, 3), _ctx(m, 1, 2)
    m.suspend_request(r0)
    assert m.evict_to_host(r0)
    m.free_resources_batch([r0, r1])
    assert not m.has_cache(0) and not m.has_cache(1)
    assert (m.num_free_gpu_pages, m.num_free_host_pages) == (6, 4)
    m.check_integrity()


def test_a_reservation_blocks_suspending_its_request_only() -> None:
    """Under reserve_context, suspending the request that holds a reservation is refused
    (naming it, changing nothing); other requests suspend as usual."""
    m = Manager(CFG, PRESETS["reserve-commit"], device="cpu")
    r0, r1 = (GpuRequest(i, prompt_len=4, context_chunk_size=4) for i in range(2))
    for r in (r0, r1):
        assert m.prepare_context(r) and m.resize_context(r, 4)  # reserved, not committed
    m.commit_context(r1)
    before = m.snapshot_state()
    with pytest.raises(ProtocolError, match=r"\[0\]: suspend_request of a context request "
                                            "holding a reservation"):
        m.suspend_request_batch([r1, r0])
    assert m.snapshot_state() == before
    m.suspend_request(r1)
    assert m.get_status(1) == 1
    m.check_integrity()


def test_the_gated_admission_refuses_a_request_without_a_cache() -> None:
    """design.admit (resize_context under gate_before_resume) raises for a missing cache;
    the manager's batch check refuses it first, with the same fix."""
    m = Manager(CFG, PRESETS["gate-before-resume"], device="cpu")
    r = GpuRequest(0, prompt_len=2, context_chunk_size=2)
    with pytest.raises(ProtocolError, match=r"request 0: resize_context without a cache "
                                            r"\(prepare_context creates it\)$"):
        design.admit(m, r, 2, grow_context_batch)
    with pytest.raises(ProtocolError, match=r"\(prepare_context creates it\)"):
        m.resize_context(r, 2)


def test_suspending_inside_another_default_device_stamps_on_the_managers_device() -> None:
    """A caller inside ``with torch.device(...)`` (as model-loading code runs) suspends a CPU
    manager's caches: the stamps are made on the manager's device, not the default one."""
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu")
    r0, r1 = _ctx(m, 0, 2), _ctx(m, 1, 2)
    clock = m.clock
    with torch.device("meta"):
        m.suspend_request_batch([r1, r0])
    assert m.cache.suspended_at[[1, 0]].tolist() == [clock + 1, clock + 2]
    m.check_integrity()


def test_the_host_tier_stays_on_the_cpu_under_another_default_device() -> None:
    """Host pages, their KV copies and the rows that index them are made on the CPU whatever
    torch's default device is (model-loading code runs inside ``with torch.device(...)``):
    a whole suspend, evict, resume and free cycle works under the meta device."""
    with torch.device("meta"):
        m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu", kv_width=2)
        r = GpuRequest(0, prompt_len=4, context_chunk_size=4)
        assert m.prepare_context(r) and m.resize_context(r, 4)
        m.write_tokens(0, 0, [5, 6, 7, 8])
        r.context_current_position = 4
        m.update_context_resources([r])
        m.suspend_request(r)
        assert m.evict_to_host(r) and m.get_host_pages(0) == 2
        assert m.prepare_context(r) and m.get_host_pages(0) == 0
        assert m.read_tokens(0, 4) == [5, 6, 7, 8]
        m.free_resources_batch([r])
    assert m.kv.host.device.type == "cpu" and m.num_free_host_pages == 4
    m.check_integrity()


def test_integrity_names_committed_tokens_without_commit_on_forward() -> None:
    """Without commit_on_forward, a cache with committed tokens breaks INV-LEN."""
    m = Manager(CFG, PRESETS["trtllm-2026-05"], device="cpu")
    _ctx(m, 0, 3)
    m.check_integrity()
    m.cache.committed[0] = 1                                  # <= history: only this check
    with pytest.raises(InvariantViolation, match="committed tokens without commit_on_forward"):
        m.check_integrity()


def test_integrity_names_an_active_cache_with_host_pages() -> None:
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu")
    r = _ctx(m, 0, 3)
    m.suspend_request(r)
    assert m.evict_to_host(r)
    m.check_integrity()
    m.cache.status[0] = 0                                     # ACTIVE, pages on the host
    with pytest.raises(InvariantViolation, match="an ACTIVE cache has pages on the host tier"):
        m.check_integrity()


def test_integrity_names_a_free_page_marked_as_owned() -> None:
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu")
    _ctx(m, 0, 3)
    m.check_integrity()
    m.gpu.owner[int(m.gpu.stack[0])] = 0                      # a free page owned by row 0
    with pytest.raises(InvariantViolation, match="owner map marks a free page as owned"):
        m.check_integrity()


def test_the_kv_staging_buffer_grows_by_doubling_and_is_reused() -> None:
    """Tier copies stage through one host buffer grown geometrically (a pinned allocation is
    costly on CUDA): 2 pages, then 3 -> room for 4, reused for 4; the data arrives."""
    kv = KVStore(8, 8, 2, 1, torch.device("cpu"), Transfer(torch.device("cpu")))
    kv.gpu[1:, :, 0] = torch.arange(16, dtype=torch.float32).view(8, 2)
    kv.to_host(torch.tensor([1, 2]), torch.tensor([1, 2]))
    kv.to_host(torch.tensor([3, 4, 5]), torch.tensor([3, 4, 5]))
    stage = kv._staging(1)
    assert stage.untyped_storage().nbytes() == 4 * 2 * 1 * 4  # 4 pages of 2 x 1 float32
    kv.to_host(torch.tensor([5, 6, 7, 8]), torch.tensor([5, 6, 7, 8]))
    assert kv._staging(4).data_ptr() == stage.data_ptr()
    assert torch.equal(kv.host[1:], kv.gpu[1:])


def test_row_api_takes_int32_rows_like_int64_rows() -> None:
    """A rows tensor of int32 (a common index dtype) is converted to an index: the same
    results and state as int64 rows, on the fast paths and on a duplicate check."""
    ms = []
    for dtype in (torch.int64, torch.int32):
        m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu")
        reqs = [GpuRequest(i, prompt_len=2, context_chunk_size=2) for i in range(3)]
        for q in reqs:
            assert m.prepare_context(q)
        m.load_requests(reqs)
        assert m.resize_context_rows(torch.tensor([2, 0], dtype=dtype), [2, 2]).all()
        assert m.resize_context_rows(torch.tensor([0, 1], dtype=dtype), [2, 1]).all()
        with pytest.raises(InvalidArgument):
            m.resize_context_rows(torch.tensor([1, 1], dtype=dtype), [1, 1])
        ms.append(m.snapshot_state())
    assert ms[0] == ms[1]


def test_row_growth_to_exactly_the_table_width_takes_the_fast_path() -> None:
    """A growth filling the page table (blocks == max_pages_per_request) is in bounds: the
    fast path takes it, shipping no control bytes (the object fallback ships its columns)."""
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu", max_pages_per_request=2)
    reqs = [GpuRequest(i, prompt_len=4, context_chunk_size=4) for i in range(2)]
    for q in reqs:
        assert m.prepare_context(q)
    m.load_requests(reqs)
    shipped = m.h2d_bytes
    assert m.resize_context_rows(torch.tensor([0, 1]), torch.tensor([4, 3])).all()
    assert m.h2d_bytes == shipped
    assert (m.get_capacity(0), len(m.get_page_table(0))) == (4, 2)
    assert not m.resize_context_rows(torch.tensor([0]), torch.tensor([5])).any()  # past it


def test_row_update_with_explicit_drafts_uses_them_on_the_fallback() -> None:
    """update_resources_rows with ``draft`` given: a row without a draft record takes the
    object fallback, which trims by those drafts (not the mirror's); a count mismatch names
    the accepted argument."""
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu")
    _ctx(m, 0, 4, draft=2)                                    # capacity 6, history 4, no record
    with pytest.raises(InvalidArgument, match="1 accepted for 2 rows"):
        m.update_resources_rows(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1, 1]))
    m.update_resources_rows(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    assert (m.get_capacity(0), m.get_history(0)) == (5, 5)    # rewind 1 - 0 (mirror's 0: none)
    m.check_integrity()


def test_row_checks_know_a_run_of_slots_and_its_slices() -> None:
    """A rows tensor that is a run of slots is recognised as one on first sight (fields are
    then read through slices), remembered with no op on the next call, and its slices and
    the slices of a remembered permutation know their own first slot (or none)."""
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu")
    run = torch.arange(1, 3)
    first, pending = row_checks(m, run)
    assert first is not None and first.start == 1 and not pending
    again: list[Rows | None] = []
    assert _aten_ops(lambda: again.append(row_checks(m, run)[0])) == []
    assert again[0] is not None and again[0].start == 1
    tail = row_checks(m, run[1:])[0]
    assert tail is not None and tail.start == 2
    perm = torch.tensor([2, 0, 1])
    mixed = row_checks(m, perm)[0]
    assert mixed is not None and mixed.start is None
    part = perm[1:]
    assert _aten_ops(lambda: again.append(row_checks(m, part)[0])) == []
    assert again[1] is not None and again[1].start is None
