"""Generation-phase operations, batched: try_allocate_generation, revert_allocate_generation,
update_resources and free_resources (models TRT-LLM KVCacheManagerV2's methods).

Each equals the single-request operation applied in list order; the tensor-op count does not
depend on the number of requests or pages (see each docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvspec.errors import InvalidArgument

from . import design
from .core import ManagerCore
from .requests import NO_RECORD, SUSPENDED, RequestLike
from .tiering import growth_plan, resume_row


def try_allocate_generation_batch(m: ManagerCore, reqs: Sequence[RequestLike]) -> list[bool]:
    """Grows each generation cache by 1 + draft_len tokens, all-or-nothing per request.

    Per request: a SUSPENDED cache is resumed first (refusal -> False, nothing changed); the old
    draft record is dropped (recorded as draft_len before the resize under
    ``draft_record_before_resize``); capacity := cap + 1 + draft_len if the pages left after the
    requests before it suffice, free or demoted from suspended caches
    (:func:`tiering.make_room`), then the record := draft_len. A resumed cache stays ACTIVE.

    Cost: one H2D copy of 8 B per request, one read of the statuses, ~20 tensor ops + fit
    rounds when every cache is ACTIVE (the hot path). SUSPENDED requests split the batch: each
    is resumed and grown alone, between vectorized runs of ACTIVE ones; a run whose growth
    needs an eviction is grown one request at a time (:func:`tiering.growth_plan`).
    Raises ProtocolError (nothing changed) for an unknown request or a missing cache;
    InvalidArgument for a negative draft_len.
    """
    ids = m.ids(reqs)
    design.refuse_reserved(m, ids, "try_allocate_generation")
    drafts = [r.draft_len for r in reqs]
    if any(d < 0 for d in drafts):
        raise InvalidArgument(f"draft_len {drafts[:5]!r} must be >= 0")
    if not ids:
        return []
    rows, d = m.transfer.columns(ids, drafts)
    m.require(rows, m.cache.has_cache[rows], ids,
              "try_allocate_generation needs a cache (was it freed?)")
    susp = m.transfer.to_host(m.cache.status[rows] == SUSPENDED)
    if not any(susp):
        return _grow_generation(m, rows, d)
    out: list[bool] = []
    start = 0
    for i, s in enumerate(susp + [1]):
        if not s:
            continue
        if i > start:
            out += _grow_generation(m, rows[start:i], d[start:i])
        if i < len(ids):
            out += _grow_generation(m, rows[i:i + 1], d[i:i + 1]) if resume_row(m, ids[i]) \
                else [False]
        start = i + 1
    return out


def _grow_generation(m: ManagerCore, rows: torch.Tensor, d: torch.Tensor) -> list[bool]:
    """The vectorized core of try_allocate_generation for ACTIVE rows (~20 ops + fit rounds;
    row by row when :func:`tiering.growth_plan` says so)."""
    c = m.cache
    new = c.capacity[rows] + 1 + d
    new_blocks = m.blocks(new)
    ok = growth_plan(m, rows, new_blocks - m.gpu.count[rows], new_blocks <= m.width, None)
    if ok is None:
        out: list[bool] = []
        for i in range(rows.numel()):
            out += _grow_generation(m, rows[i:i + 1], d[i:i + 1])
        return out
    c.draft_record[rows] = d if m.policy.draft_record_before_resize else NO_RECORD
    grown = rows[ok]
    m.gpu.grow(grown, new_blocks[ok])
    c.capacity[grown] = new[ok]
    c.draft_record[grown] = d[ok]
    return [bool(v) for v in m.transfer.to_host(ok)]


def revert_allocate_generation_batch(m: ManagerCore, reqs: Sequence[RequestLike]) -> None:
    """Gives back this iteration's generation growth (TRT ``revert_allocate_generation``).

    Per request: pop the draft record; None, no cache, not ACTIVE, or target = cap - 1 - record
    negative -> no-op; else capacity := target and the pages past blocks(target) are released.
    Cost: one H2D copy of 4 B per request, ~20 tensor ops, one device read.
    Raises (nothing changed, nothing popped): ProtocolError for an unknown request,
    InvariantViolation("INV-LEN") for a target below history (under
    ``revert_clears_before_resize`` the first such request's record is already popped: its
    revert consumed it before the check).
    """
    ids = m.ids(reqs)
    design.refuse_reserved(m, ids, "revert_allocate_generation")
    if not ids:
        return
    (rows,) = m.transfer.columns(ids)
    c = m.cache
    rec = c.draft_record[rows]
    target = c.capacity[rows] - 1 - rec
    due = (rec >= 0) & m.active(rows) & (target >= 0)
    fine = ~due | (target >= c.history[rows])
    if m.policy.revert_clears_before_resize and not bool(fine.all().item()):
        c.draft_record[rows[(~fine).nonzero()[0]]] = NO_RECORD
    m.require(rows, fine, ids,
              "revert_allocate_generation would shrink below history (record from an "
              "earlier iteration?)", "INV-LEN")
    c.draft_record[rows] = NO_RECORD
    m.gpu.shrink(rows[due], m.blocks(target)[due])
    c.capacity[rows[due]] = target[due]


def update_resources_batch(m: ManagerCore, reqs: Sequence[RequestLike],
                           accepted: Sequence[int]) -> None:
    """Commits forwarded generation tokens and trims rejected drafts (TRT ``update_resources``).

    Per request: rewind = max(record - accepted, 0) (record None -> draft_len);
    capacity -= rewind (pages released); history += 1 + accepted; committed = history (stays 0
    without ``commit_on_forward``); record := None under ``pop_draft_record_on_update`` (else
    kept). Cost: one H2D copy of 12 B per request, ~25 tensor ops.
    Raises (nothing changed): InvalidArgument for accepted outside [0, draft_len];
    ProtocolError for a missing or SUSPENDED cache; InvariantViolation("INV-LEN") for a history
    that would pass capacity.
    """
    ids = m.ids(reqs)
    design.refuse_reserved(m, ids, "update_resources")
    if len(accepted) != len(ids):
        raise InvalidArgument(f"{len(accepted)} accepted counts for {len(ids)} requests")
    drafts = [r.draft_len for r in reqs]
    if any(not 0 <= a <= dl for a, dl in zip(accepted, drafts, strict=True)):
        raise InvalidArgument("accepted must be in [0, draft_len] for every request")
    if not ids:
        return
    rows, acc, d = m.transfer.columns(ids, accepted, drafts)
    c = m.cache
    rec = c.draft_record[rows]
    rewind = torch.clamp(torch.where(rec >= 0, rec, d) - acc, min=0)
    new_cap = c.capacity[rows] - rewind
    new_hist = c.history[rows] + 1 + acc
    m.require(rows, m.active(rows), ids, "update_resources needs an ACTIVE cache (only "
              "forwarded requests are updated)")
    m.require(rows, new_hist <= new_cap, ids, "update_resources needs a cache grown for this "
              "step (history + 1 + accepted <= capacity after the rewind)", "INV-LEN")
    m.gpu.shrink(rows, m.blocks(new_cap))
    c.capacity[rows] = new_cap
    c.history[rows] = new_hist  # committed: the same tensor, or zeros without commit_on_forward
    if m.policy.pop_draft_record_on_update:
        c.draft_record[rows] = NO_RECORD


def free_resources_batch(m: ManagerCore, reqs: Sequence[RequestLike]) -> None:
    """Releases finished requests' caches from whichever tier holds them; slots become empty.

    Cost: one H2D copy of 4 B per request, ~30 tensor ops (GPU pool shrink, host pool shrink,
    row reset). Raises ProtocolError (nothing changed) when a cache is missing (double free).
    """
    ids = m.ids(reqs)
    if not ids:
        return
    (rows,) = m.transfer.columns(ids)
    m.require(rows, m.cache.has_cache[rows], ids, "free_resources of a request without a cache "
              "(double free?)")
    m.gpu.shrink(rows, torch.zeros_like(rows))
    host_rows = torch.tensor(ids, dtype=torch.int64, device="cpu")
    m.host.shrink(host_rows, torch.zeros_like(host_rows))
    m.cache.clear(rows)
    for rid in ids:  # a reservation's pages were the row's tail: released above
        m.reserved.pop(rid, None)
