"""KV page data: a GPU pool [pages + 1, B, width] (page 0 null) and a host pool for the host tier,
deterministic token values, slot mapping on the device, and page copies between tiers.
"""

from __future__ import annotations

import torch

from .transfer import Transfer

_VALUE_MOD = 1 << 24  # float32 represents every integer below 2**24 exactly


def token_value(rid: torch.Tensor, pos: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """The value forward writes for (request, position, lane): exact in float32.

    Args:
        rid, pos: int64 [T]; lanes: int64 [W]. Returns float32 [T, W]. Cost: 4 tensor ops.
    """
    v = (rid * 1_000_003 + pos * 1_009).unsqueeze(1) + lanes.unsqueeze(0)
    return torch.remainder(v, _VALUE_MOD).to(torch.float32)


def slot_mapping(table: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor,
                 block: int) -> torch.Tensor:
    """slot = table[row, pos // B] * B + pos % B for every token, on the table's device (3 ops)."""
    pages = table[rows, torch.div(pos, block, rounding_mode="floor")].long()
    return pages * block + torch.remainder(pos, block)


class KVStore:
    """The two KV data pools. GPU pool on the manager's device; host pool in pinned memory when
    the device is CUDA (so tier copies are real DMA), plain CPU memory otherwise."""

    def __init__(self, num_gpu_pages: int, num_host_pages: int, block: int, width: int,
                 device: torch.device, transfer: Transfer) -> None:
        self.block = block
        self.width = width
        self.transfer = transfer
        self.gpu = torch.zeros((num_gpu_pages + 1, block, width), dtype=torch.float32,
                               device=device)
        host = torch.zeros((num_host_pages + 1, block, width), dtype=torch.float32,
                           device="cpu")
        self.host = host.pin_memory() if device.type == "cuda" else host
        self.lanes = torch.arange(width, dtype=torch.int64, device=device)
        self._stage: torch.Tensor | None = None

    def write(self, table: torch.Tensor, rows: torch.Tensor, rids: torch.Tensor,
              pos: torch.Tensor) -> None:
        """Writes :func:`token_value` of each (rid, pos) token into its GPU slot.

        Cost: slot mapping (3 ops) + values (4 ops) + one scatter of T * width floats.
        """
        slots = slot_mapping(table, rows, pos, self.block)
        self.gpu.view(-1, self.width)[slots] = token_value(rids, pos, self.lanes)

    def read(self, table: torch.Tensor, row: int, start: int, stop: int, first_col: int,
             on_host: bool) -> torch.Tensor:
        """Tokens [start, stop) of ``row`` from one tier, whose ``table`` row holds the
        logical page table's entries from column ``first_col`` on: [stop - start, width], on
        that tier's device."""
        pool = self.host if on_host else self.gpu
        pos = torch.arange(start, stop, dtype=torch.int64, device=table.device)
        rows = torch.full_like(pos, row)
        pages = table[rows, torch.div(pos, self.block, rounding_mode="floor") - first_col].long()
        slots = (pages * self.block + torch.remainder(pos, self.block)).to(pool.device)
        return pool.view(-1, self.width)[slots]

    def _staging(self, pages: int) -> torch.Tensor:
        """A host buffer for ``pages`` pages, pinned on CUDA, grown (doubling) and reused."""
        if self._stage is None or self._stage.shape[0] < pages:
            size = max(pages, 2 * (0 if self._stage is None else self._stage.shape[0]))
            stage = torch.empty((size, self.block, self.width), dtype=torch.float32,
                                device="cpu")
            self._stage = stage.pin_memory() if self.gpu.device.type == "cuda" else stage
        return self._stage[:pages]

    def to_host(self, gpu_pages: torch.Tensor, host_pages: torch.Tensor) -> None:
        """Copies GPU pages to host pages: one device gather, one D2H copy into the pinned
        staging buffer, one host scatter (bytes counted in ``d2h_kv_bytes``)."""
        if gpu_pages.numel() == 0:
            return
        stage = self._staging(gpu_pages.numel())
        stage.copy_(self.gpu.index_select(0, gpu_pages))
        self.host.index_copy_(0, host_pages.cpu(), stage)
        self.transfer.d2h_kv_bytes += stage.numel() * stage.element_size()

    def to_gpu(self, host_pages: torch.Tensor, gpu_pages: torch.Tensor) -> None:
        """Copies host pages to GPU pages: one host gather into the pinned staging buffer, one
        H2D copy, one device scatter (bytes counted in ``h2d_kv_bytes``)."""
        if host_pages.numel() == 0:
            return
        stage = self._staging(host_pages.numel())
        torch.index_select(self.host, 0, host_pages.cpu(), out=stage)
        data = stage.to(self.gpu.device, non_blocking=True)
        self.gpu.index_copy_(0, gpu_pages.to(self.gpu.device), data)
        if self.gpu.device.type == "cuda":
            torch.cuda.current_stream(self.gpu.device).synchronize()  # staging reusable
        self.transfer.h2d_kv_bytes += stage.numel() * stage.element_size()
