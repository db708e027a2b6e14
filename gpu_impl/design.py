"""The design-space policies of PR 13805 on the torch manager (docs/design-space.md).

* ``reserve_context``, the two-phase reservation: ``resize_context`` takes the chunk's new
  pages from the pool into the tail of the row's GPU page table, past ``blocks(capacity)``
  (capacity and snapshot unchanged; :attr:`ManagerCore.reserved` remembers the target);
  :func:`commit` sets the capacity to the target (the pages are already in place), and
  :func:`release` shrinks the row back to ``blocks(capacity)`` (the tail pages go back to the
  free stack), so no context cache is ever resized down and no SWA rewind can happen. The
  protocol observations (``get_page_table``) show only the committed part; the reserved tail
  is :func:`reserved_pages`.
* ``gate_before_resume``, PR 13805's rejected alternative: ``prepare_context`` only creates the
  cache (:mod:`tiering`); ``resize_context`` runs after the decision and resumes (when
  SUSPENDED) and grows, all or nothing (:func:`admit`).

Single requests only (the batched and row APIs loop over these); each call costs a few
scalar reads besides the resize it wraps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kvspec.errors import InvalidArgument, ProtocolError

from .core import ManagerCore
from .requests import ACTIVE, SUSPENDED, RequestLike
from .tiering import evictable_pages, resume_row

Resize = Callable[[ManagerCore, Sequence[RequestLike], Sequence[int]], list[bool]]


def active(m: ManagerCore) -> bool:
    """Whether the policy routes context growth through this module."""
    return m.policy.reserve_context or m.policy.gate_before_resume


def validate(m: ManagerCore, reqs: Sequence[RequestLike], num_tokens: Sequence[int]) -> None:
    """Every check a per-request :func:`reserve` or :func:`admit` of the batch could raise on,
    done before any of them runs (ordinary resize_context's checks; under reservations also
    ACTIVE and no reservation held; under the gate a cache).

    Raises (nothing changed): InvalidArgument, ProtocolError.
    """
    ids = m.ids(reqs)
    if len(num_tokens) != len(ids):
        raise InvalidArgument(f"{len(num_tokens)} num_tokens for {len(ids)} requests")
    if any(n < 0 for n in num_tokens):
        raise InvalidArgument(f"num_tokens {list(num_tokens)[:5]!r} must be >= 0")
    if any(r.context_current_position < 0 for r in reqs):
        raise InvalidArgument("context_current_position must be >= 0")
    if not ids:
        return
    (rows,) = m.transfer.columns(ids)
    if m.policy.reserve_context:
        m.require(rows, m.active(rows), ids, "resize_context needs an ACTIVE cache "
                  "(call prepare_context first)")
    else:
        m.require(rows, m.cache.has_cache[rows], ids, "resize_context needs a cache "
                  "(prepare_context creates it)")


def refuse_reserved(m: ManagerCore, ids: Sequence[int] | torch.Tensor, what: str) -> None:
    """Raise ProtocolError (nothing changed) when one of ``ids`` holds a reservation: a
    generation operation on it would count the reserved tail as its cache's pages. O(1)
    without reservations; one read of ``ids`` otherwise."""
    if not m.reserved:
        return
    got = [int(r) for r in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    if len(set(got)) != len(got):
        return  # the operation's own checks refuse a repeated request first
    held = [r for r in got if r in m.reserved]
    if held:
        raise ProtocolError(f"request(s) {held[:5]}: {what} of a context request holding a"
                            " reservation; commit it (commit_context) or release it"
                            " (revert_allocate_context) first")


def _blocks(m: ManagerCore, n: int) -> int:
    return -(-n // m.block)


def reserve(m: ManagerCore, req: RequestLike, num_tokens: int, resize: Resize) -> bool:
    """Phase 1: ``resize`` (the ordinary resize_context) grows the row, then the capacity and
    the snapshot are put back and the target remembered: the new pages are reserved, not in
    the cache. A failure is the ordinary resize's failure. A request that already holds a
    reservation grows it to the larger target (idempotent, like resize_context); that growth
    failing changes nothing (no first-chunk suspend: the reservation is kept).
    """
    rid = m.ids([req])[0]
    c = m.cache
    cap = int(c.capacity[rid].item())
    snap = req.py_ctx_pre_resize_cap
    held = m.reserved.get(rid)
    if held is not None:
        c.capacity[rid] = held               # grow the reserved tail from the old target
    if not resize(m, [req], [num_tokens])[0]:
        if held is not None:                 # keep the reservation as it was
            c.capacity[rid] = cap
            c.status[rid] = ACTIVE
            c.suspended_at[rid] = 0
            req.py_ctx_pre_resize_cap = snap
        return False
    m.reserved[rid] = int(c.capacity[rid].item())
    c.capacity[rid] = cap
    req.py_ctx_pre_resize_cap = snap
    return True


def commit(m: ManagerCore, req: RequestLike) -> None:
    """Phase 2 for a request of the queued batch: capacity = the reserved target (a request
    without a reservation is left as it is).

    Raises ProtocolError: the policy has no reservations, or the cache is SUSPENDED.
    """
    if not m.policy.reserve_context:
        raise ProtocolError(f"commit_context: policy {m.policy.name!r} has reserve_context off;"
                            " resize_context grows the cache itself")
    rid = m.ids([req])[0]
    target = m.reserved.get(rid)
    if target is None:
        return
    if int(m.cache.status[rid].item()) == SUSPENDED:
        raise ProtocolError(f"commit_context: request {rid}'s cache is SUSPENDED; a"
                            " reservation is committed only for a request in the queued batch")
    del m.reserved[rid]
    cap = int(m.cache.capacity[rid].item())
    m.cache.capacity[rid] = max(cap, target)


def release(m: ManagerCore, req: RequestLike) -> bool:
    """``revert_allocate_context`` under ``reserve_context``: the reserved tail goes back to the
    free stack, the capacity is untouched; an ACTIVE cache is suspended iff its capacity is
    > 0 (as PR 13805 does). Returns True."""
    rid = m.ids([req])[0]
    c = m.cache
    rows = m.one(rid)
    if m.reserved.pop(rid, None) is not None:
        keep = _blocks(m, int(c.capacity[rid].item())) - int(m.host.count[rid].item())
        m.gpu.shrink(rows, torch.full((1,), keep, dtype=m.gpu.count.dtype, device=m.device))
    if (bool(c.has_cache[rid].item()) and int(c.status[rid].item()) != SUSPENDED
            and int(c.capacity[rid].item()) > 0):
        c.status[rid] = SUSPENDED
        m.stamp(rows)
    return True


def admit(m: ManagerCore, req: RequestLike, num_tokens: int, resize: Resize) -> bool:
    """``resize_context`` under ``gate_before_resume``: resume a survivor of the decision (when
    SUSPENDED) and grow it, all or nothing: the resume gate, room for its host pages and room
    for the growth after the recall are checked on the counts first.

    Raises ProtocolError (nothing changed): unknown request or no cache.
    """
    rid = m.ids([req])[0]
    c = m.cache
    if not bool(c.has_cache[rid].item()):
        raise ProtocolError(f"request {rid}: resize_context without a cache (prepare_context"
                            " creates it)")
    cap = int(c.capacity[rid].item())
    new_blocks = _blocks(m, max(cap, req.context_current_position + num_tokens))
    g, h = int(m.gpu.count[rid].item()), int(m.host.count[rid].item())
    if new_blocks > m.width:
        return False
    free, host_free = m.gpu.free, m.host.free
    suspended = int(c.status[rid].item()) == SUSPENDED
    others = evictable_pages(m)
    host_tier = m.policy.host_tier
    if suspended:
        total = m.config.num_gpu_pages
        gate = m.config.max_util_for_resume
        used = total - free - others
        if total > 0 and used * gate.denominator > gate.numerator * total:
            return False
        others -= g if host_tier else 0
        short = max(0, h - free)
        if short and (not host_tier or short > host_free or short > others):
            return False
        free, host_free, others = free + short - h, host_free - short + h, others - short
    short = max(0, new_blocks - g - h - free)
    if short and (not host_tier or short > host_free or short > others):
        return False
    if suspended:
        resumed = resume_row(m, rid)
        assert resumed, "admission checked the resume"
    ok = resize(m, [req], [num_tokens])[0]
    assert ok, "admission checked the growth"
    return True


def reserved_pages(m: ManagerCore, rid: int) -> list[int]:
    """The GPU page ids reserved for ``rid`` (the tail past its committed pages)."""
    if rid not in m.reserved:
        return []
    keep = _blocks(m, int(m.cache.capacity[rid].item())) - int(m.host.count[rid].item())
    return m.gpu.row(rid)[keep:]


def extra_pages(m: ManagerCore) -> torch.Tensor:
    """Per row, the reserved GPU pages past ``blocks(capacity)`` (for the integrity check)."""
    out = torch.zeros(m.num_rows, dtype=m.gpu.count.dtype, device=m.device)
    for rid in m.reserved:
        out[rid] = len(reserved_pages(m, rid))
    return out
