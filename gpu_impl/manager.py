"""The public torch KV-cache manager: TRT-LLM KVCacheManagerV2's per-request capacity protocol
(docs/protocol.md) over device tensors, with batched forms of the per-iteration operations.

Single-request calls are the batch of one, so batched and sequential runs are the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy

from . import context_ops, design, generation_ops, integrity, row_ops, tiering
from .core import ManagerCore
from .kv_store import slot_mapping
from .pages import expand
from .requests import NO_RECORD, RequestLike


class Manager(ManagerCore):
    """Torch implementation of the kvspec manager API (same API as the CPU reference).

    Args:
        config: sizes (pages, requests, tokens per block, resume gate, SWA rewind bound).
        policy: protocol switches used here: ``clear_snapshot_on_failure``,
            ``swa_scratch_reuse``, ``host_tier``, ``draft_record_before_resize``,
            ``revert_clears_before_resize``, ``pop_draft_record_on_update``,
            ``free_branch_rewinds``, ``commit_on_forward``, and the design switches
            ``reserve_context`` / ``gate_before_resume`` (:mod:`kvspec.gpu_impl.design`;
            their ``resize_context`` and ``revert_allocate_context`` run per request in the
            batched and row APIs too).
        device: torch device for the state and KV pool; None -> CUDA if available else CPU.
        kv_width: floats per token in the KV data pools.
        max_pages_per_request: page-table width (default num_gpu_pages, which never limits a
            request). NOTE: with a smaller width, a growth past it fails like an exhausted pool.
        page_moves: ``"compact"`` or ``"fixed"``, how the row API moves single pages
            (:data:`kvspec.gpu_impl.core.PAGE_MOVES`); None picks by device. Same results.

    Request ids are slots ``0..num_requests-1`` (the page-table row). Batches are processed
    in list order; each request is all-or-nothing; a batch that raises changes nothing (but
    the consumed snapshot or record under ``revert_clears_before_resize``).

    Each page is on the GPU or on the host tier (:meth:`get_page_tiers`). With a host tier,
    a growth or a resume that needs more GPU pages than are free demotes the shortfall from
    SUSPENDED caches' GPU pages: the most recently suspended cache first, each from the front
    of its GPU pages (:mod:`kvspec.gpu_impl.tiering`; the CPU reference chooses differently).
    """

    def __init__(self, config: Config, policy: Policy, *, device: str | torch.device | None = None,
                 kv_width: int = 4, max_pages_per_request: int | None = None,
                 page_moves: str | None = None) -> None:
        super().__init__(config, policy, device=device, kv_width=kv_width,
                         max_pages_per_request=max_pages_per_request, page_moves=page_moves)

    # ---- protocol, single request (the batch of one) ---------------------------------------

    def prepare_context(self, req: RequestLike) -> bool:
        """See :func:`tiering.prepare_context`."""
        return tiering.prepare_context(self, req)

    def resize_context(self, req: RequestLike, num_tokens: int) -> bool:
        """Grows capacity to ``pos + num_tokens`` (the caller adds draft_len on the last chunk).
        See :func:`context_ops.resize_context_batch`."""
        return context_ops.resize_context_batch(self, [req], [num_tokens])[0]

    def revert_allocate_context(self, req: RequestLike) -> bool | None:
        """See :func:`context_ops.revert_allocate_context_batch`."""
        return context_ops.revert_allocate_context_batch(self, [req])[0]

    def try_allocate_generation(self, req: RequestLike) -> bool:
        """See :func:`generation_ops.try_allocate_generation_batch`."""
        return generation_ops.try_allocate_generation_batch(self, [req])[0]

    def revert_allocate_generation(self, req: RequestLike) -> None:
        """See :func:`generation_ops.revert_allocate_generation_batch`."""
        generation_ops.revert_allocate_generation_batch(self, [req])

    def update_context_resources(self, reqs: Sequence[RequestLike]) -> None:
        """history = committed = pos for forwarded context requests (already batched)."""
        context_ops.update_context_resources(self, reqs)

    def update_resources(self, reqs: Sequence[RequestLike], accepted: Sequence[int]) -> None:
        """Trims forwarded generation requests (already batched).
        See :func:`generation_ops.update_resources_batch`."""
        generation_ops.update_resources_batch(self, reqs, accepted)

    def suspend_request(self, req: RequestLike) -> None:
        """Suspends an ACTIVE cache; nothing is freed."""
        context_ops.suspend_request_batch(self, [req])

    def resume_request(self, req: RequestLike) -> bool:
        """See :func:`tiering.resume_request`."""
        return tiering.resume_request(self, req)

    def evict_to_host(self, req: RequestLike) -> bool:
        """See :func:`tiering.evict_to_host`."""
        return tiering.evict_to_host(self, req)

    def free_resources(self, req: RequestLike) -> None:
        """See :func:`generation_ops.free_resources_batch`."""
        generation_ops.free_resources_batch(self, [req])

    # ---- protocol, batched ------------------------------------------------------------------

    def resize_context_batch(self, reqs: Sequence[RequestLike],
                             num_tokens: Sequence[int]) -> list[bool]:
        """Batched :meth:`resize_context` (list order, each request all-or-nothing)."""
        return context_ops.resize_context_batch(self, reqs, num_tokens)

    def revert_allocate_context_batch(self, reqs: Sequence[RequestLike]) -> list[bool | None]:
        """Batched :meth:`revert_allocate_context`."""
        return context_ops.revert_allocate_context_batch(self, reqs)

    def try_allocate_generation_batch(self, reqs: Sequence[RequestLike]) -> list[bool]:
        """Batched :meth:`try_allocate_generation`."""
        return generation_ops.try_allocate_generation_batch(self, reqs)

    def revert_allocate_generation_batch(self, reqs: Sequence[RequestLike]) -> None:
        """Batched :meth:`revert_allocate_generation`."""
        generation_ops.revert_allocate_generation_batch(self, reqs)

    def update_resources_batch(self, reqs: Sequence[RequestLike],
                               accepted: Sequence[int]) -> None:
        """Batched :meth:`update_resources` (same as it)."""
        generation_ops.update_resources_batch(self, reqs, accepted)

    def suspend_request_batch(self, reqs: Sequence[RequestLike]) -> None:
        """Batched :meth:`suspend_request`."""
        context_ops.suspend_request_batch(self, reqs)

    def free_resources_batch(self, reqs: Sequence[RequestLike]) -> None:
        """Batched :meth:`free_resources`."""
        generation_ops.free_resources_batch(self, reqs)

    # ---- protocol, row tensors (the hot path; see row_ops) ----------------------------------

    def resize_context_rows(self, rows: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        """:meth:`resize_context_batch` on int64 rows; pos/snapshot in the mirror
        (``self.req``). Returns bool [k] on the device."""
        return row_ops.resize_context_rows(self, rows, num_tokens)

    def revert_allocate_context_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """:meth:`revert_allocate_context_batch` on rows (snapshot/pos in the mirror); None
        without ``free_branch_rewinds``."""
        return row_ops.revert_allocate_context_rows(self, rows)

    def update_context_resources_rows(self, rows: torch.Tensor, pos: torch.Tensor) -> None:
        """:meth:`update_context_resources` on rows with the new positions as a tensor."""
        row_ops.update_context_resources_rows(self, rows, pos)

    def try_allocate_generation_rows(self, rows: torch.Tensor,
                                     draft: torch.Tensor) -> torch.Tensor:
        """:meth:`try_allocate_generation_batch` on rows with their draft lengths."""
        return row_ops.try_allocate_generation_rows(self, rows, draft)

    def revert_allocate_generation_rows(self, rows: torch.Tensor) -> None:
        """:meth:`revert_allocate_generation_batch` on rows."""
        row_ops.revert_allocate_generation_rows(self, rows)

    def update_resources_rows(self, rows: torch.Tensor, accepted: torch.Tensor,
                              draft: torch.Tensor | None = None) -> None:
        """:meth:`update_resources_batch` on rows (draft defaults to the mirror's)."""
        row_ops.update_resources_rows(self, rows, accepted, draft)

    def load_requests(self, reqs: Sequence[RequestLike]) -> None:
        """Copies pos, snapshot and draft_len of request objects into the mirror."""
        if not reqs:
            return
        ids = self.ids(reqs)
        rows, pos, snap, draft = self.transfer.columns(
            ids, [r.context_current_position for r in reqs],
            [-1 if r.py_ctx_pre_resize_cap is None else r.py_ctx_pre_resize_cap for r in reqs],
            [r.draft_len for r in reqs])
        self.req.pos.index_copy_(0, rows, pos)
        self.req.snap.index_copy_(0, rows, snap)
        self.req.draft.index_copy_(0, rows, draft)

    def store_requests(self, reqs: Sequence[RequestLike]) -> None:
        """Copies the mirror's pos and snapshot back into request objects."""
        if not reqs:
            return
        rows = torch.tensor(self.ids(reqs), dtype=torch.int64).to(self.device)
        pos = self.req.pos.index_select(0, rows).tolist()
        snap = self.req.snap.index_select(0, rows).tolist()
        for r, p, s in zip(reqs, pos, snap, strict=True):
            r.context_current_position = p
            r.py_ctx_pre_resize_cap = None if s < 0 else s

    # ---- KV data ----------------------------------------------------------------------------

    def forward_write(self, reqs: Sequence[RequestLike], start_pos: Sequence[int],
                      num_tokens: Sequence[int]) -> None:
        """Writes :func:`kv_store.token_value` for tokens [start, start + n) of each request
        into its GPU slots (slot mapping computed on the device).

        Cost: one H2D copy of 12 B per request, ~15 tensor ops, one scatter of the tokens.
        Raises (nothing written): ProtocolError when a cache is missing or SUSPENDED or the
        tokens pass its capacity; InvalidArgument for negative or mismatched arguments.
        """
        ids = self.ids(reqs)
        if len(start_pos) != len(ids) or len(num_tokens) != len(ids):
            raise InvalidArgument("forward_write needs one start_pos and num_tokens per request")
        if any(s < 0 for s in start_pos) or any(n < 0 for n in num_tokens):
            raise InvalidArgument("start_pos and num_tokens must be >= 0")
        if not ids:
            return
        rows, start, n = self.transfer.columns(ids, start_pos, num_tokens)
        self.require(rows, self.active(rows) & (start + n <= self.cache.capacity[rows]), ids,
                     "forward_write needs an ACTIVE cache with start + n <= capacity")
        seg, j, _ = expand(n)
        self.kv.write(self.gpu.table, rows[seg], rows[seg], start[seg] + j)

    def write_tokens(self, rid: int, start: int, tags: Sequence[int]) -> None:
        """The conformance engine's write: tag ``tags[i]`` (an integer below 2**24) into lane
        0 of token ``start + i`` of ``rid``, through its page table, as a forward writes KV.

        Cost: one slot mapping and one scatter. Raises (nothing written): ProtocolError when
        the cache is missing or not ACTIVE or the tokens pass its capacity; InvalidArgument
        for a negative start or a tag outside 0..2**24-1.
        """
        if start < 0 or any(not 0 <= t < 1 << 24 for t in tags):
            raise InvalidArgument(f"write_tokens: start={start} must be >= 0 and every tag in"
                                  " 0..2**24-1 (exact in float32)")
        row = self.row_id(rid)
        if not tags:
            return
        rows = self.one(row)
        self.require(rows, self.active(rows) & (start + len(tags) <= self.cache.capacity[rows]),
                     [rid], "write_tokens needs an ACTIVE cache with start + n <= capacity")
        pos = torch.arange(start, start + len(tags), dtype=torch.int64, device=self.device)
        slots = slot_mapping(self.gpu.table, torch.full_like(pos, row), pos, self.kv.block)
        lane0 = self.kv.gpu.view(-1, self.kv.width)[:, 0]
        lane0[slots] = torch.tensor(list(tags), dtype=torch.float32, device=self.device)

    def read_tokens(self, rid: int, stop: int) -> list[int]:
        """The lane-0 tags of tokens [0, stop) of ``rid`` (``stop`` <= history), read
        through its page table from the tier holding each page (:meth:`read_kv`)."""
        return [int(x) for x in self.read_kv(rid)[:stop, 0].tolist()]

    def read_kv(self, rid: int) -> torch.Tensor:
        """The KV of the first ``history`` tokens of ``rid``, read through its page table, each
        page from the tier holding it: float32 [history, kv_width] on the manager's device."""
        row = self.row_id(rid)
        if not self.has_cache(row):
            return torch.zeros((0, self.kv.width), dtype=torch.float32, device=self.device)
        history = self.get_history(row)
        split = min(history, self.get_host_pages(row) * self.block)
        host = self.kv.read(self.host.table, row, 0, split, 0, True)
        gpu = self.kv.read(self.gpu.table, row, split, history, split // self.block, False)
        return torch.cat([host.to(self.device), gpu])

    # ---- observations -----------------------------------------------------------------------

    def has_cache(self, rid: int) -> bool:
        """Whether slot ``rid`` holds a cache."""
        return bool(self.cache.has_cache[self.row_id(rid)].item())

    def get_capacity(self, rid: int) -> int:
        """Capacity in tokens (0 for an empty slot)."""
        return int(self.cache.capacity[self.row_id(rid)].item())

    def get_history(self, rid: int) -> int:
        """History length in tokens (0 for an empty slot)."""
        return int(self.cache.history[self.row_id(rid)].item())

    def get_committed(self, rid: int) -> int:
        """Committed tokens (0 for an empty slot)."""
        return int(self.cache.committed[self.row_id(rid)].item())

    def get_status(self, rid: int) -> int:
        """0 ACTIVE, 1 SUSPENDED (an empty slot reads SUSPENDED, as in the model)."""
        return int(self.cache.status[self.row_id(rid)].item())

    def get_host_pages(self, rid: int) -> int:
        """How many of the cache's pages are on the host tier (0 for an empty slot)."""
        return int(self.host.count[self.row_id(rid)].item())

    def is_never_resumed(self, rid: int) -> bool:
        """Whether the cache was created and never resumed."""
        return bool(self.cache.never_resumed[self.row_id(rid)].item())

    def get_draft_record(self, rid: int) -> int | None:
        """``_allocated_draft_lens[rid]``: None or the draft length granted."""
        v = int(self.cache.draft_record[self.row_id(rid)].item())
        return None if v == NO_RECORD else v

    def get_page_table(self, rid: int) -> list[int]:
        """Page ids of the cache, each of the tier :meth:`get_page_tiers` names: its host
        pages first, then its GPU pages (empty for an empty slot)."""
        row = self.row_id(rid)
        table = self.host.row(row) + self.gpu.row(row)
        if row in self.reserved:  # the reserved tail is not in the cache yet
            return table[:len(table) - len(design.reserved_pages(self, row))]
        return table

    def get_page_tiers(self, rid: int) -> tuple[int, ...]:
        """Parallel to :meth:`get_page_table`: 1 for a host page id, 0 for a GPU page id."""
        row = self.row_id(rid)
        h = int(self.host.count[row].item())
        g = int(self.gpu.count[row].item()) - len(design.reserved_pages(self, row))
        return (1,) * h + (0,) * g

    def get_reserved_pages(self, rid: int) -> list[int]:
        """GPU page ids reserved for ``rid`` and not committed (``reserve_context``)."""
        return design.reserved_pages(self, self.row_id(rid))

    def commit_context(self, req: RequestLike) -> None:
        """Phase 2 of the two-phase reservation; see :func:`design.commit`."""
        design.commit(self, req)

    @property
    def num_free_gpu_pages(self) -> int:
        """Free GPU pages (a host-side counter; no device read)."""
        return self.gpu.free

    @property
    def num_free_host_pages(self) -> int:
        """Free host-tier pages (0 when the policy has no host tier)."""
        return self.host.free

    @property
    def num_evictable_gpu_pages(self) -> int:
        """GPU pages of SUSPENDED caches when the policy has a host tier, else 0 (one
        reduction and one read)."""
        return tiering.evictable_pages(self)

    @property
    def h2d_bytes(self) -> int:
        """Control bytes shipped host->device so far (argument columns only)."""
        return self.transfer.h2d_bytes

    def check_integrity(self) -> None:
        """See :func:`integrity.check_integrity`."""
        integrity.check_integrity(self, design.extra_pages(self) if self.reserved else None)

    def snapshot_state(self) -> tuple[object, ...]:
        """See :func:`integrity.snapshot_state`."""
        return integrity.snapshot_state(self) + (tuple(sorted(self.reserved.items())),)
