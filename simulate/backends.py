"""The managers a simulation runs on, behind the executor's manager interface, with the few
counters the executor's results do not carry (self-evictions, resume refusals).

``reference``: the CPU reference manager. ``torch``: the torch manager (CPU torch, or CUDA when
asked), whose request ids are slots ``0..num_requests-1``: :class:`TorchSlots` maps the
simulation's request ids to free slots (a slot is taken by a request's first
``prepare_context`` and given back when its cache is closed) and adds the scheduler queries
the torch manager lacks (``num_available_gpu_pages``, ``generation_pages_needed``,
``pop_demoted``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument, ProtocolError
from kvspec.policy import Policy
from kvspec.reference import LlmRequest, ReferenceKVCacheManager
from kvspec.reference.cache import CacheStatus

BACKENDS = ("reference", "torch")


@dataclass
class Counters:
    """Events counted by a backend since the last :meth:`take` (per rank).

    self_evictions: a request suspended for its own growth (the executor suspends the
    requester when no victim makes room), told apart from victim suspensions as the
    suspension of the request whose room was queried last.
    resume_refusals: a ``prepare_context`` or ``try_allocate_generation`` that found the cache
    SUSPENDED (or created it) and left it SUSPENDED: the resume gate or the host recall said no.
    """

    self_evictions: int = 0
    resume_refusals: int = 0

    def take(self) -> tuple[int, int]:
        """(self_evictions, resume_refusals), then zero them."""
        out = (self.self_evictions, self.resume_refusals)
        self.self_evictions = self.resume_refusals = 0
        return out


class ObservedReference(ReferenceKVCacheManager):
    """The reference manager plus :class:`Counters` and :meth:`cache_pages`. The protocol
    behaviour is the reference's, unchanged (each override calls it and only counts)."""

    def __init__(self, config: Config, policy: Policy) -> None:
        super().__init__(config, policy)
        self.counters = Counters()
        self._asked: int | None = None

    def num_available_gpu_pages(self, exclude: int | None = None) -> int:
        self._asked = exclude
        return super().num_available_gpu_pages(exclude)

    def suspend_request(self, req: LlmRequest) -> None:
        super().suspend_request(req)
        if req.request_id == self._asked:
            self.counters.self_evictions += 1

    def prepare_context(self, req: LlmRequest) -> bool:
        ok = super().prepare_context(req)
        if not ok:
            self.counters.resume_refusals += 1
        return ok

    def try_allocate_generation(self, req: LlmRequest) -> bool:
        cache = self._caches.get(req.request_id)
        was_suspended = cache is not None and cache.status is CacheStatus.SUSPENDED
        ok = super().try_allocate_generation(req)
        if was_suspended and self._caches[req.request_id].status is CacheStatus.SUSPENDED:
            self.counters.resume_refusals += 1
        return ok

    def cache_pages(self) -> Iterator[tuple[int, int, int, int]]:
        """(request id, GPU pages, host pages, pages past the history) of every cache. GPU
        pages include those reserved for it and not yet committed (``reserve_context``:
        taken from the pool, not in the page table). The last is the pages allocated for
        tokens not yet written: blocks(capacity) - blocks(history), plus the reserved ones.
        O(caches)."""
        tpb = self._tpb
        for rid, c in self._caches.items():
            n = len(c.pages) + len(self.get_reserved_pages(rid))
            yield rid, n - c.num_host, c.num_host, n - -(-c.history // tpb)


class _Slotted:
    """A request seen by the torch manager: the real request with its slot as request_id.
    Reads and writes of the protocol fields go to the real request."""

    __slots__ = ("_r", "request_id")

    def __init__(self, req: LlmRequest, slot: int) -> None:
        self._r = req
        self.request_id = slot

    prompt_len = property(lambda self: self._r.prompt_len)
    context_chunk_size = property(lambda self: self._r.context_chunk_size)
    draft_len = property(lambda self: self._r.draft_len)
    state = property(lambda self: self._r.state)

    @property
    def context_current_position(self) -> int:
        return self._r.context_current_position

    @context_current_position.setter
    def context_current_position(self, value: int) -> None:
        self._r.context_current_position = value

    @property
    def py_ctx_pre_resize_cap(self) -> int | None:
        return self._r.py_ctx_pre_resize_cap

    @py_ctx_pre_resize_cap.setter
    def py_ctx_pre_resize_cap(self, value: int | None) -> None:
        self._r.py_ctx_pre_resize_cap = value


class TorchSlots:
    """The torch manager (``kvspec.gpu_impl.Manager``) behind the executor's manager interface.

    Request ids are mapped to slots: a request takes the lowest free slot at its first
    ``prepare_context`` and gives it back when its cache is closed (``free_resources``, or the
    FREE branch of ``revert_allocate_context``). Cost: one dict lookup per call on top of the
    manager's own; the queries read a few scalars from the device.

    Args:
        device: torch device name (``"cpu"`` default; ``"cuda"`` needs a CUDA build).
        max_pages_per_request: page-table width; the simulation passes the largest request's
            pages so the table is not ``num_requests x num_gpu_pages``.
    """

    def __init__(self, config: Config, policy: Policy, *, device: str = "cpu",
                 max_pages_per_request: int | None = None) -> None:
        from kvspec.gpu_impl import Manager

        self.config = config
        self.policy = policy
        self.m = Manager(config, policy, device=device, kv_width=1,
                         max_pages_per_request=max_pages_per_request)
        self.counters = Counters()
        self._cols = _Columns(self.m)
        self._slot: dict[int, int] = {}
        self._free = list(range(config.num_requests - 1, -1, -1))
        self._asked: int | None = None

    # ---- id mapping ------------------------------------------------------------------------

    def _req(self, req: LlmRequest, create: bool = False) -> _Slotted:
        slot = self._slot.get(req.request_id)
        if slot is None:
            if not create:
                raise ProtocolError(
                    f"request {req.request_id} has no KV cache (no slot); call prepare_context"
                    " on its first chunk first")
            if not self._free:
                raise ProtocolError(
                    f"request {req.request_id}: all {self.config.num_requests} slots hold a"
                    " cache; admit at most Config.num_requests requests per rank")
            slot = self._slot[req.request_id] = self._free.pop()
        return _Slotted(req, slot)

    def _release_if_closed(self, rid: int) -> None:
        slot = self._slot.get(rid)
        if slot is not None and not self.m.has_cache(slot):
            del self._slot[rid]
            self._free.append(slot)

    # ---- the protocol ----------------------------------------------------------------------

    def prepare_context(self, req: LlmRequest) -> bool:
        ok = self.m.prepare_context(self._req(req, create=True))
        if not ok:
            self.counters.resume_refusals += 1
        return ok

    def resize_context(self, req: LlmRequest, num_tokens: int) -> bool:
        return self.m.resize_context(self._req(req), num_tokens)

    def revert_allocate_context(self, req: LlmRequest) -> bool | None:
        out = self.m.revert_allocate_context(self._req(req))
        self._release_if_closed(req.request_id)
        return out

    def try_allocate_generation(self, req: LlmRequest) -> bool:
        r = self._req(req)
        was_suspended = self.m.get_status(r.request_id) == CacheStatus.SUSPENDED
        ok = self.m.try_allocate_generation(r)
        if was_suspended and self.m.get_status(r.request_id) == CacheStatus.SUSPENDED:
            self.counters.resume_refusals += 1
        return ok

    def try_allocate_generation_batch(self, reqs: Sequence[LlmRequest]) -> list[bool]:
        """One vectorized call (the executor batches the growths that need no new page); a
        SUSPENDED cache is resumed inside, as in the single call, and a refusal counted.
        Cost: the manager's batch call plus one or two reads of the slots' statuses."""
        rs = [self._req(q) for q in reqs]
        slots = [r.request_id for r in rs]
        status = self._cols.status
        was = status[slots].tolist()
        ok = self.m.try_allocate_generation_batch(rs)
        if CacheStatus.SUSPENDED in was:
            now = status[slots].tolist()
            self.counters.resume_refusals += sum(
                1 for w, n in zip(was, now, strict=True)
                if w == n == CacheStatus.SUSPENDED)
        return ok

    def revert_allocate_generation(self, req: LlmRequest) -> None:
        self.m.revert_allocate_generation(self._req(req))

    def update_context_resources(self, reqs: Sequence[LlmRequest]) -> None:
        self.m.update_context_resources([self._req(q) for q in reqs])

    def update_resources(self, reqs: Sequence[LlmRequest], accepted: Sequence[int]) -> None:
        self.m.update_resources([self._req(q) for q in reqs], accepted)

    def suspend_request(self, req: LlmRequest) -> None:
        self.m.suspend_request(self._req(req))
        if req.request_id == self._asked:
            self.counters.self_evictions += 1

    def free_resources(self, req: LlmRequest) -> None:
        self.m.free_resources(self._req(req))
        self._release_if_closed(req.request_id)

    def commit_context(self, req: LlmRequest) -> None:
        """Phase 2 of ``reserve_context`` (the executor calls it for the queued batch)."""
        self.m.commit_context(self._req(req))

    # ---- queries the executor makes ---------------------------------------------------------

    def has_cache(self, rid: int) -> bool:
        return rid in self._slot

    def get_status(self, rid: int) -> int:
        return int(self._cols.status[self._slot_of(rid)])

    def get_capacity(self, rid: int) -> int:
        return int(self._cols.capacity[self._slot_of(rid)])

    def get_history(self, rid: int) -> int:
        return self.m.get_history(self._slot_of(rid))

    def get_host_pages(self, rid: int) -> int:
        return self.m.get_host_pages(self._slot_of(rid))

    def get_reserved_pages(self, rid: int) -> tuple[int, ...]:
        return tuple(self.m.get_reserved_pages(self._slot_of(rid)))

    def _slot_of(self, rid: int) -> int:
        slot = self._slot.get(rid)
        if slot is None:
            raise ProtocolError(f"request {rid!r} has no KV cache; check has_cache first")
        return slot

    def generation_pages_needed(self, req: LlmRequest) -> int:
        """Growth pages of ``try_allocate_generation`` plus the recall of host pages."""
        slot = self._slot_of(req.request_id)
        cols = self._cols
        cap, host = int(cols.capacity[slot]), int(cols.host_count[slot])
        b = self.config.blocks
        return b(cap + 1 + req.draft_len) - b(cap) + host

    def num_available_gpu_pages(self, exclude: int | None = None) -> int:
        """Free GPU pages plus min(evictable GPU pages of other caches, free host pages)."""
        self._asked = exclude
        free = self.m.num_free_gpu_pages
        if not self.policy.host_tier:
            return free
        others = self.m.num_evictable_gpu_pages
        slot = None if exclude is None else self._slot.get(exclude)
        if slot is not None and self.m.get_status(slot) == CacheStatus.SUSPENDED:
            others -= int(self.m.gpu.count[slot].item())
        return free + min(others, self.m.num_free_host_pages)

    def pop_demoted(self) -> tuple[int, ...]:
        """Not tracked by the torch manager: always empty (``evictions`` read 0)."""
        return ()

    @property
    def num_free_gpu_pages(self) -> int:
        return self.m.num_free_gpu_pages

    @property
    def num_free_host_pages(self) -> int:
        return self.m.num_free_host_pages

    @property
    def num_evictable_gpu_pages(self) -> int:
        return self.m.num_evictable_gpu_pages

    def check_integrity(self) -> None:
        self.m.check_integrity()

    def cache_pages(self) -> Iterator[tuple[int, int, int, int]]:
        """As :meth:`ObservedReference.cache_pages` (the torch manager keeps reserved pages
        at the tail of the row, so the GPU count includes them); reads three per-slot
        columns once."""
        if not self._slot:
            return
        rids = list(self._slot)
        slots = [self._slot[r] for r in rids]
        cols = self._cols
        gpu = cols.gpu_count[slots].tolist()
        host = cols.host_count[slots].tolist()
        hist = cols.history[slots].tolist()
        b = self.config.blocks
        for rid, g, h, hi in zip(rids, gpu, host, hist, strict=True):
            yield rid, int(g), int(h), int(g) + int(h) - b(int(hi))


class _Columns:
    """A torch manager's per-slot columns for the executor's per-request queries, read-only
    by convention: NumPy views of the tensors on the CPU (the same memory: the manager
    updates its tensors in place and never replaces them; an element read costs ~0.1 us
    against ~5 us for a checked ``.item()`` through the manager), the tensors themselves
    elsewhere (a CUDA tensor has no view; each read is a device read). Both index the same
    way: ``int(col[slot])``, ``col[slots].tolist()``."""

    __slots__ = ("capacity", "gpu_count", "history", "host_count", "status")

    def __init__(self, m: Any) -> None:
        def view(t: Any) -> Any:
            return t.numpy() if t.device.type == "cpu" else t

        self.capacity = view(m.cache.capacity)
        self.history = view(m.cache.history)
        self.status = view(m.cache.status)
        self.gpu_count = view(m.gpu.count)
        self.host_count = view(m.host.count)


def manager_factory(backend: str, max_pages_per_request: int | None = None,
                    device: str = "cpu") -> Callable[[Config, Policy], Any]:
    """The executor's ``manager_factory`` for ``backend`` (``reference`` or ``torch``).

    Raises:
        InvalidArgument: an unknown backend.
    """
    if backend == "reference":
        return ObservedReference
    if backend == "torch":
        def make(config: Config, policy: Policy) -> TorchSlots:
            return TorchSlots(config, policy, device=device,
                              max_pages_per_request=max_pages_per_request)
        return make
    raise InvalidArgument(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
