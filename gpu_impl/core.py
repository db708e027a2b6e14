"""The torch manager's state (cache fields, two page pools, KV data) and the argument checks
every operation shares. Operations live in :mod:`context_ops`, :mod:`generation_ops` and
:mod:`tiering`; the public class is :class:`kvspec.gpu_impl.manager.Manager`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvariantViolation, ProtocolError
from kvspec.policy import Policy

from .kv_store import KVStore
from .pages import PagePool
from .requests import ACTIVE, FIELD, CacheState, RequestLike, RequestMirror
from .transfer import Transfer

#: Row-API page moves of at most one page per row: "compact" runs them on only the rows that
#: move a page (a data-dependent shape: free on the CPU, a device sync on an accelerator),
#: "fixed" on every row of the batch in fixed shape (no sync). Default: compact on the CPU,
#: fixed elsewhere. Both leave identical state (tests/gpu/test_gpu_rows.py runs both).
PAGE_MOVES = ("compact", "fixed")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(device: str | torch.device | None) -> torch.device:
    """The manager's device: ``device``, or :func:`default_device` for None.

    Raises:
        InvalidArgument: a name torch does not know, or CUDA asked for where torch has none.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgument(f"device={device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(
            f"device={device!r} but torch.cuda.is_available() is False: install a CUDA build "
            "of torch (docs/gpu_impl.md) or use device='cpu'")
    return dev


class ManagerCore:
    """State of one torch KV-cache manager.

    Attributes:
        cache: per-row fields (:class:`CacheState`) on ``device``.
        gpu: GPU-tier :class:`PagePool` on ``device`` (the persistent device page table).
        host: host-tier :class:`PagePool` on the CPU (0 pages when the policy has no host tier).
            A row's logical page table is its host pages (``host.table[row, :host.count]``)
            followed by its GPU pages (``gpu.table[row, :gpu.count]``): implicit eviction
            demotes a victim's GPU pages from the front, so the host entries always form a
            prefix (:mod:`tiering`).
        kv: KV data pools. transfer: H2D/D2H byte counters.
    """

    def __init__(self, config: Config, policy: Policy, *, device: str | torch.device | None = None,
                 kv_width: int = 4, max_pages_per_request: int | None = None,
                 page_moves: str | None = None) -> None:
        if kv_width < 1:
            raise InvalidArgument(f"kv_width={kv_width!r} must be >= 1")
        width = max(1, config.num_gpu_pages) if max_pages_per_request is None \
            else max_pages_per_request
        if width < 1:
            raise InvalidArgument(f"max_pages_per_request={width!r} must be >= 1")
        self.config = config
        self.policy = policy
        self.device = _device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" names the current device; tensors report "cuda:N", and the row API's
            # argument check compares devices
            self.device = torch.device("cuda", torch.cuda.current_device())
        if page_moves is None:
            page_moves = "compact" if self.device.type == "cpu" else "fixed"
        if page_moves not in PAGE_MOVES:
            raise InvalidArgument(f"page_moves={page_moves!r}: expected one of {PAGE_MOVES}")
        #: how the row API's one-page moves run (see :data:`PAGE_MOVES`)
        self.page_moves = page_moves
        #: reads of a few scalars: per-value ``.item()`` on the CPU (no copy), one stacked
        #: read (one sync) elsewhere
        self.read_each = self.device.type == "cpu"
        self.block = config.tokens_per_block
        self.block_shift = self.block.bit_length() - 1 if self.block & (self.block - 1) == 0 \
            else None
        # 0-dim constants for the row API's arithmetic: a Python scalar operand costs a
        # conversion in every op
        self.int_one = torch.ones((), dtype=FIELD, device=self.device)
        self.block_less_one = torch.full((), self.block - 1, dtype=FIELD, device=self.device)
        self.block_shift_t = torch.full((), self.block_shift or 0, dtype=FIELD,
                                        device=self.device)
        self.num_rows = config.num_requests
        self.width = width
        self.transfer = Transfer(self.device)
        self.cache = CacheState(self.num_rows, self.device, commit=policy.commit_on_forward)
        #: the last suspension stamp handed out (``cache.suspended_at``)
        self.clock = 0
        self.req = RequestMirror(self.num_rows, self.device)
        #: reserve_context: row -> reserved target capacity; the reserved pages are the tail
        #: of the row's GPU pages past blocks(capacity) (:mod:`kvspec.gpu_impl.design`)
        self.reserved: dict[int, int] = {}
        self.gpu = PagePool(config.num_gpu_pages, self.num_rows, width, self.device)
        host_pages = config.num_host_pages if policy.host_tier else 0
        self.host = PagePool(host_pages, self.num_rows, width, torch.device("cpu"))
        self.kv = KVStore(config.num_gpu_pages, host_pages, self.block, kv_width, self.device,
                          self.transfer)

    # ---- helpers shared by the operations -------------------------------------------------

    def blocks(self, capacity: torch.Tensor) -> torch.Tensor:
        """ceil(capacity / B) elementwise (2 ops; an add and a shift when B is a power of two).
        Returns a new tensor."""
        if self.block_shift is not None:
            return torch.add(capacity, self.block_less_one).bitwise_right_shift_(
                self.block_shift_t)
        return torch.div(capacity + (self.block - 1), self.block, rounding_mode="floor")

    def ids(self, reqs: Sequence[RequestLike]) -> list[int]:
        """The request ids of ``reqs``, validated (host only, no tensor op).

        Raises:
            ProtocolError: an id that is not a slot ``0..num_requests-1``.
            InvalidArgument: the same request twice in one batch.
        """
        ids = [r.request_id for r in reqs]
        if not all(type(x) is int for x in ids) or (
                ids and (min(ids) < 0 or max(ids) >= self.num_rows)):
            bad = [x for x in ids if type(x) is not int or not 0 <= x < self.num_rows]
            raise ProtocolError(
                f"unknown request id(s) {bad[:5]!r}: a request_id must be a slot in "
                f"0..{self.num_rows - 1} (Config.num_requests={self.num_rows})")
        if len(set(ids)) != len(ids):
            raise InvalidArgument(
                "a request appears twice in one batch; pass each request once per call")
        return ids

    def row_id(self, rid: object) -> int:
        """Validates one request id used by an observation."""
        if type(rid) is not int or not 0 <= rid < self.num_rows:
            raise ProtocolError(
                f"unknown request id {rid!r}: a request_id must be a slot in "
                f"0..{self.num_rows - 1}")
        return rid

    def require(self, rows: torch.Tensor, ok: torch.Tensor, ids: Sequence[int],
                what: str, invariant: str | None = None) -> None:
        """Raises :class:`ProtocolError` (or ``InvariantViolation(invariant)`` when given)
        naming the requests where ``ok`` is False.

        Cost: one device read of a bool; state is never touched.
        """
        if ok.numel() and not bool(ok.all().item()):
            flags = self.transfer.to_host(ok)
            bad = [rid for rid, good in zip(ids, flags, strict=True) if not good]
            msg = f"request(s) {bad[:5]!r}: {what}; state left unchanged"
            if invariant is not None:
                raise InvariantViolation(invariant, msg)
            raise ProtocolError(msg)

    def stamp(self, rows: torch.Tensor) -> None:
        """Marks ``rows``, just SUSPENDED, as the most recently suspended caches, later rows
        later (list order, as single calls in that order would). 1 op when rows is not
        empty."""
        k = rows.numel()
        if k:
            self.cache.suspended_at[rows] = torch.arange(
                self.clock + 1, self.clock + 1 + k, dtype=torch.int64, device=self.device)
            self.clock += k

    def active(self, rows: torch.Tensor) -> torch.Tensor:
        """bool: the row holds an ACTIVE cache (3 ops)."""
        return self.cache.has_cache[rows] & (self.cache.status[rows] == ACTIVE)

    def one(self, rid: int) -> torch.Tensor:
        """A one-element int64 row tensor built on the device (no host->device copy)."""
        return torch.full((1,), rid, dtype=torch.int64, device=self.device)
