"""Context-phase operations, batched: resize_context, revert_allocate_context and
update_context_resources (models TRT-LLM KVCacheManagerV2's methods of the same names).

Each function handles a whole iteration's requests with a fixed number of tensor ops (the page
pool's fit may add rounds only when the pool runs out, see :meth:`PagePool.fit`) and equals the
single-request operation applied to the requests in list order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvspec.errors import InvalidArgument, InvariantViolation

from . import design
from .core import ManagerCore
from .requests import CONTEXT, SUSPENDED, RequestLike
from .tiering import growth_plan


def resize_context_batch(m: ManagerCore, reqs: Sequence[RequestLike],
                         num_tokens: Sequence[int]) -> list[bool]:
    """:func:`grow_context_batch`, or under ``reserve_context`` / ``gate_before_resume`` the
    design's operation per request in list order (:mod:`.design`: reserve, or resume + grow
    after the decision)."""
    if not design.active(m):
        return grow_context_batch(m, reqs, num_tokens)
    design.validate(m, reqs, num_tokens)  # a batch that raises changes nothing
    op = design.reserve if m.policy.reserve_context else design.admit
    return [op(m, r, n, grow_context_batch) for r, n in zip(reqs, num_tokens, strict=True)]


def grow_context_batch(m: ManagerCore, reqs: Sequence[RequestLike],
                       num_tokens: Sequence[int]) -> list[bool]:
    """Grows each context cache to ``max(cap, pos + num_tokens)``, all-or-nothing per request.

    Effect per request (docs/protocol.md ``resize_context``): success sets capacity and writes
    ``py_ctx_pre_resize_cap`` = old capacity if it grew, else None; the new pages are free
    ones, or demoted from suspended caches first (:func:`tiering.make_room`). Failure (not
    enough free plus evictable GPU pages after the requests before it, or host room for the
    shortfall, or a row wider than the page table) changes nothing but this: it suspends the
    cache when ``pos == 0`` and clears the snapshot iff ``clear_snapshot_on_failure``.

    Cost: one H2D copy of 12 B per request, ~25 tensor ops + the pool's fit rounds, one read of
    2 int64 per request. A batch whose growth needs an eviction (or whose failures could
    change what is evictable, :func:`tiering.growth_plan`) is applied one request at a time.
    Raises (state unchanged): ProtocolError (unknown request, missing or SUSPENDED cache),
    InvalidArgument (negative or mismatched ``num_tokens``).
    """
    ids = m.ids(reqs)
    if len(num_tokens) != len(ids):
        raise InvalidArgument(f"{len(num_tokens)} num_tokens for {len(ids)} requests")
    if any(n < 0 for n in num_tokens):
        raise InvalidArgument(f"num_tokens {list(num_tokens)[:5]!r} must be >= 0")
    pos_list = [r.context_current_position for r in reqs]
    if any(p < 0 for p in pos_list):
        raise InvalidArgument("context_current_position must be >= 0")
    if not ids:
        return []
    rows, pos, n = m.transfer.columns(ids, pos_list, num_tokens)
    m.require(rows, m.active(rows), ids, "resize_context needs an ACTIVE cache "
              "(call prepare_context first)")
    return _resize(m, reqs, rows, pos, n)


def _resize(m: ManagerCore, reqs: Sequence[RequestLike], rows: torch.Tensor,
            pos: torch.Tensor, n: torch.Tensor) -> list[bool]:
    """resize_context of validated ACTIVE rows: vectorized when exact, else row by row."""
    cap = m.cache.capacity[rows]
    new = torch.maximum(cap, pos + n)
    new_blocks = m.blocks(new)
    count = m.gpu.count[rows]
    first = pos == 0
    ok = growth_plan(m, rows, new_blocks - count, new_blocks <= m.width, first & (count > 0))
    if ok is None:
        results: list[bool] = []
        for i in range(len(reqs)):
            results += _resize(m, reqs[i:i + 1], rows[i:i + 1], pos[i:i + 1], n[i:i + 1])
        return results
    m.gpu.grow(rows[ok], new_blocks[ok])
    m.cache.capacity[rows[ok]] = new[ok]
    suspended = rows[~ok & first]
    m.cache.status[suspended] = SUSPENDED
    m.stamp(suspended)
    snap = torch.where(ok & (new > cap), cap, -1)
    out = m.transfer.to_host(torch.cat([ok.long(), snap]))
    k = len(reqs)
    clear = m.policy.clear_snapshot_on_failure
    for r, good, s in zip(reqs, out[:k], out[k:], strict=True):
        if good:
            r.py_ctx_pre_resize_cap = s if s >= 0 else None
        elif clear:
            r.py_ctx_pre_resize_cap = None
    return [bool(g) for g in out[:k]]


def revert_allocate_context_batch(m: ManagerCore,
                                  reqs: Sequence[RequestLike]) -> list[bool | None]:
    """Gives back this iteration's context growth (TRT ``revert_allocate_context``).

    Per request: pre := snapshot, snapshot := None. None, no cache, not ACTIVE or pre >= cap ->
    True. history > pre -> FREE branch (pages released, cache gone, pos rewound to 0 under
    ``free_branch_rewinds``) -> False. Otherwise SHRINK: capacity := pre (history unchanged),
    suspended iff pre > 0 -> True. Without ``free_branch_rewinds`` (TRT's revision that
    returns nothing) every request's result is None.

    Cost: one H2D copy of 12 B per request, ~30 tensor ops, one read of 1 int64 per request.
    Raises (nothing mutated, snapshots kept): InvariantViolation("SWA-REWIND") when the policy
    has ``swa_scratch_reuse`` and a SHRINK of a CONTEXT-phase request would start from
    ``cap - max_rewind_len > history`` (under ``revert_clears_before_resize`` the first such
    request's snapshot is already None: its revert consumed it before the check);
    ProtocolError for an unknown request; InvalidArgument for a negative snapshot.
    """
    ids = m.ids(reqs)
    if m.policy.reserve_context:
        return [design.release(m, r) for r in reqs]
    snaps = [r.py_ctx_pre_resize_cap for r in reqs]
    if any(s is not None and s < 0 for s in snaps):
        raise InvalidArgument(f"py_ctx_pre_resize_cap {snaps[:5]!r} must be None or >= 0")
    pre_list = [-1 if s is None else s for s in snaps]
    if not ids:
        return []
    in_context = [int(getattr(r, "state", CONTEXT)) == CONTEXT for r in reqs]
    rows, pre, ctx_col = m.transfer.columns(ids, pre_list, in_context)
    ctx = ctx_col.bool()
    cap = m.cache.capacity[rows]
    hist = m.cache.history[rows]
    due = (pre >= 0) & m.active(rows) & (pre < cap)
    free_branch = due & (hist > pre)
    shrink = due & ~free_branch
    if m.policy.swa_scratch_reuse:
        bad = shrink & ctx & (cap - m.config.max_rewind_len > hist)
        if bool(bad.any().item()):
            flags = m.transfer.to_host(bad)
            first = flags.index(1)
            rid = ids[first]
            if m.policy.revert_clears_before_resize:
                reqs[first].py_ctx_pre_resize_cap = None
            raise InvariantViolation(
                "SWA-REWIND", f"request {rid}: shrinking a context cache under SWA scratch "
                f"reuse needs capacity - max_rewind_len ({m.config.max_rewind_len}) <= history; "
                "nothing was changed")
    m.gpu.shrink(rows[due], torch.where(free_branch, 0, m.blocks(pre))[due])
    m.cache.capacity[rows[shrink]] = pre[shrink]
    suspended = rows[shrink & (pre > 0)]
    m.cache.status[suspended] = SUSPENDED
    m.stamp(suspended)
    m.cache.clear(rows[free_branch])
    freed = m.transfer.to_host(free_branch)
    rewinds = m.policy.free_branch_rewinds
    for r, f in zip(reqs, freed, strict=True):
        r.py_ctx_pre_resize_cap = None
        if f and rewinds:
            r.context_current_position = 0
    if not rewinds:
        return [None] * len(freed)
    return [not f for f in freed]


def update_context_resources(m: ManagerCore, reqs: Sequence[RequestLike]) -> None:
    """Sets history = committed = pos for forwarded context requests (caller advanced pos);
    committed stays 0 without ``commit_on_forward`` (it is history's tensor with it).

    Cost: one H2D copy of 8 B per request, ~10 tensor ops. Raises (nothing changed)
    ProtocolError for a missing or SUSPENDED cache, InvariantViolation("INV-LEN") for a pos
    below history or above capacity.
    """
    ids = m.ids(reqs)
    if not ids:
        return
    rows, pos = m.transfer.columns(ids, [r.context_current_position for r in reqs])
    c = m.cache
    m.require(rows, m.active(rows), ids, "update_context_resources needs an ACTIVE cache "
              "(only forwarded requests are updated)")
    m.require(rows, (pos >= c.history[rows]) & (pos <= c.capacity[rows]), ids,
              "update_context_resources needs history <= pos <= capacity", "INV-LEN")
    c.history[rows] = pos  # committed: the same tensor, or zeros without commit_on_forward


def suspend_request_batch(m: ManagerCore, reqs: Sequence[RequestLike]) -> None:
    """Suspends ACTIVE caches (scheduler victims), stamped in list order as the most recently
    suspended; nothing is freed. Cost: ~6 tensor ops.

    Raises ProtocolError (nothing changed) for a missing or already SUSPENDED cache.
    """
    ids = m.ids(reqs)
    if not ids:
        return
    design.refuse_reserved(m, ids, "suspend_request")
    (rows,) = m.transfer.columns(ids)
    m.require(rows, m.active(rows), ids, "suspend_request needs an ACTIVE cache")
    m.cache.status[rows] = SUSPENDED
    m.stamp(rows)
