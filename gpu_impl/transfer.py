"""Host<->device shipping of small control vectors, with byte counters.

Every tensor the manager builds from host data goes through :class:`Transfer`, so ``h2d_bytes``
is the exact control traffic (request rows, token counts, snapshots); KV page data moved by
suspend/evict/resume is counted separately in ``h2d_kv_bytes`` / ``d2h_kv_bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Transfer:
    """Ships packed int32 columns to the device and results back, counting bytes.

    Attributes:
        h2d_bytes: control bytes shipped host->device (argument columns; never page-table rows).
        d2h_bytes: bytes of results read back (success masks, snapshot values).
        h2d_kv_bytes / d2h_kv_bytes: KV page data copied by resume / evict.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.h2d_bytes = 0
        self.d2h_bytes = 0
        self.h2d_kv_bytes = 0
        self.d2h_kv_bytes = 0

    def columns(self, rows: Sequence[int], *cols: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """Ships request rows and equal-length int columns, packed as one int32 tensor.

        Returns ``(rows, *cols)`` on the device: rows as int64 (an index), the columns as
        int32 (the per-row fields' dtype, :data:`~kvspec.gpu_impl.requests.FIELD`).
        Cost: one host->device copy of 4 * (1 + len(cols)) * n bytes (counted in
        ``h2d_bytes``) and one widening op for the rows.
        """
        host = torch.from_numpy(np.array([rows, *cols], dtype=np.int32).reshape(
            1 + len(cols), -1))
        self.h2d_bytes += host.numel() * 4
        packed = host.to(self.device, non_blocking=False)
        return (packed[0].long(), *packed[1:])

    def to_host(self, t: torch.Tensor) -> list[int]:
        """Reads a 1-D integer (or bool) device tensor back as a Python list (one D2H copy)."""
        self.d2h_bytes += t.numel() * t.element_size()
        return [int(v) for v in t.tolist()]

    def scalar(self, t: torch.Tensor) -> int:
        """Reads a 0-dim device tensor (one D2H copy, a device sync on CUDA)."""
        self.d2h_bytes += t.element_size()
        return int(t.item())
