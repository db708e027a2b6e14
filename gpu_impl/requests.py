"""Request objects (duck-typed, TRT-LLM LlmRequest field names) and the per-row cache state
tensors the manager keeps on its device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

#: dtype of every per-row field (capacities, positions, counts, statuses): int32, as the
#: KV managers of TensorRT-LLM and vLLM keep them; row and page indices are int64
FIELD = torch.int32

ACTIVE, SUSPENDED = 0, 1
CONTEXT = 1  # request state CONTEXT_INIT (TRT LlmRequestState value used by kvspec)
NO_RECORD = -1  # encodes None for the draft record


class RequestLike(Protocol):
    """What the manager reads from a request; it writes ``py_ctx_pre_resize_cap`` (resize and
    revert) and ``context_current_position`` (the FREE branch of the context revert)."""

    request_id: int
    prompt_len: int
    context_chunk_size: int
    draft_len: int
    context_current_position: int
    py_ctx_pre_resize_cap: int | None


@dataclass
class GpuRequest:
    """A minimal request: slot ``request_id`` in ``0..num_requests-1``."""

    request_id: int
    prompt_len: int = 1
    context_chunk_size: int = 1
    draft_len: int = 0
    context_current_position: int = 0
    state: int = CONTEXT  # 1 CONTEXT, 2 GENERATION; read only by the SWA-REWIND check
    py_ctx_pre_resize_cap: int | None = None


class CacheState:
    """Per-row cache fields as int32 (:data:`FIELD`) or bool [num_rows] tensors on one device.

    Rows without a cache hold the empty values (capacity 0, SUSPENDED, no record, stamp 0),
    matching the model's empty slot. ``suspended_at`` (int64) is the suspension stamp of a
    SUSPENDED cache (a manager-wide counter, larger = suspended later; 0 while ACTIVE), which
    orders implicit eviction's victims. How many of a row's pages are on the host is the host
    pool's count.

    Args:
        commit: the policy's ``commit_on_forward``: committed follows history (one tensor);
            without it committed is a tensor of zeros that no operation writes.
    """

    def __init__(self, num_rows: int, device: torch.device, commit: bool = True) -> None:
        def zeros() -> torch.Tensor:
            return torch.zeros(num_rows, dtype=FIELD, device=device)

        def flags() -> torch.Tensor:
            return torch.zeros(num_rows, dtype=torch.bool, device=device)

        self.capacity = zeros()
        self.history = zeros()
        # With commit_on_forward, committed == history in every state the protocol reaches
        # (both are set together by update_context_resources / update_resources, zeroed
        # together otherwise), so it is the same tensor: one scatter less per update, and the
        # operations write history only. Without it (block reuse off) committed stays 0.
        self.committed = self.history if commit else zeros()
        self.status = torch.full((num_rows,), SUSPENDED, dtype=FIELD, device=device)
        self.draft_record = torch.full((num_rows,), NO_RECORD, dtype=FIELD, device=device)
        self.has_cache = flags()
        self.never_resumed = flags()
        self.suspended_at = torch.zeros(num_rows, dtype=torch.int64, device=device)

    FIELDS = ("capacity", "history", "committed", "status", "draft_record", "has_cache",
              "never_resumed", "suspended_at")

    def clear(self, rows: torch.Tensor) -> None:
        """Resets ``rows`` to the empty slot (8 scatter ops)."""
        for name in ("capacity", "history", "committed"):
            getattr(self, name)[rows] = 0
        self.status[rows] = SUSPENDED
        self.draft_record[rows] = NO_RECORD
        for name in ("has_cache", "never_resumed"):
            getattr(self, name)[rows] = False
        self.suspended_at[rows] = 0

    def state(self) -> tuple[tuple[int, ...], ...]:
        """Every field as a tuple of ints (a comparable copy)."""
        return tuple(tuple(int(v) for v in getattr(self, f).tolist()) for f in self.FIELDS)


class RequestMirror:
    """Request-side fields of every slot as int32 (:data:`FIELD`) [num_rows] tensors on the
    device.

    pos: ``context_current_position``; snap: ``py_ctx_pre_resize_cap`` (-1 for None);
    draft: ``draft_len`` (set by try_allocate_generation_rows, read by update_resources_rows).
    """

    def __init__(self, num_rows: int, device: torch.device) -> None:
        self.pos = torch.zeros(num_rows, dtype=FIELD, device=device)
        self.snap = torch.full((num_rows,), -1, dtype=FIELD, device=device)
        self.draft = torch.zeros(num_rows, dtype=FIELD, device=device)
        # scratch for the duplicate check, and a ones vector to count with
        self.seen = torch.zeros(num_rows, dtype=torch.int64, device=device)
        self.ones = torch.ones(num_rows, dtype=torch.int64, device=device)
        # the slot numbers, to recognise a rows tensor that is a run of slots
        self.slots = torch.arange(num_rows, dtype=torch.int64, device=device)
        # (base tensor, its _version, element range [lo, hi) of the storage, the slot at lo
        # when the rows are a run of consecutive slots else None) of rows tensors that passed
        # the row checks (gpu_impl.row_sets); the last few kept
        self.valid_rows: list[tuple[torch.Tensor, int, int, int, int | None]] = []
        # slices of per-row fields for runs of slots, (id(field), start, length) -> view
        self.views: dict[tuple[int, int, int], torch.Tensor] = {}
