"""The row-tensor API: the per-iteration operations on int64 tensors of rows (request slots)
with per-row arguments already in tensors, and no Python request objects on the hot path.

Request-side fields the protocol reads or writes (``context_current_position``,
``py_ctx_pre_resize_cap``, ``draft_len``) live in :class:`RequestMirror` tensors owned by the
manager. ``Manager.load_requests`` / ``store_requests`` copy them from / to request objects.

Each operation has a fixed-shape fast path for the common case (every row valid and ACTIVE,
the pool not exhausted, at most one page per row moved or the general page path otherwise):
a fixed number of tensor ops and one host read of a few scalars (the "sync"), whatever the
number of rows. Everything else (an error to raise, a SUSPENDED row to resume, a pool that
runs out) takes the fallback: the object-API batch operation on requests built from the
mirror, whose semantics the fast path equals (``tests/gpu/test_gpu_rows.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kvspec.errors import InvalidArgument

from . import context_ops, generation_ops
from .core import ManagerCore
from .requests import ACTIVE, CONTEXT, NO_RECORD, GpuRequest


def _vec(m: ManagerCore, t: torch.Tensor | list[int], what: str) -> torch.Tensor:
    if type(t) is torch.Tensor and t.dtype is torch.int64 and t.device == m.device:
        if t.dim() != 1:
            raise InvalidArgument(f"{what} must be a 1-D tensor")
        return t  # the hot path: no conversion op
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(t, dtype=torch.int64)
    if t.dim() != 1:
        raise InvalidArgument(f"{what} must be a 1-D tensor")
    return t.to(device=m.device, dtype=torch.int64)


def _args(m: ManagerCore, rows: torch.Tensor | list[int],
          *cols: tuple[torch.Tensor | list[int], str]) -> tuple[torch.Tensor, ...]:
    r = _vec(m, rows, "rows")
    out = [r]
    for c, name in cols:
        v = _vec(m, c, name)
        if v.numel() != r.numel():
            raise InvalidArgument(f"{v.numel()} {name} for {r.numel()} rows")
        out.append(v)
    return tuple(out)


def _row_checks(m: ManagerCore, rows: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows clamped into range (equal to ``rows`` when valid) and the 0-dim tensors that say
    whether they are valid: min, max, largest multiplicity. 6 ops, no sync.

    Skipped (0 ops) for a rows tensor known valid: one that passed these checks, or a
    contiguous 1-D slice of one (a slice of valid rows is in range and distinct), while the
    storage's ``_version`` (the counter torch bumps on every in-place write to a tensor or any
    view of it) is unchanged. A scheduler builds one rows tensor per iteration and passes it,
    or slices of it, to several operations. (Writes through a numpy alias of a CPU tensor
    bypass the counter.)
    """
    base = rows._base if rows._base is not None else rows
    if rows.is_contiguous():
        start = rows.storage_offset()
        end = start + rows.numel()
        version = rows._version
        for t, ver, lo, hi in m.req.valid_rows:  # (no inference tensor is in the list)
            if t is base and ver == version and lo <= start and end <= hi:
                return rows, []
    lo_, hi_ = torch.aminmax(rows)
    rc = rows.clamp(0, m.num_rows - 1)
    seen = m.req.seen
    seen.zero_()
    seen.scatter_add_(0, rc, m.req.ones[: rows.numel()])
    return rc, [lo_, hi_, seen.max()]


def _passed(m: ManagerCore, rows: torch.Tensor, vals: list[int], checked: bool) -> bool:
    """Reads the row checks' values off the front of ``vals`` (removing them); remembers
    ``rows`` (its base, version and element range) as valid when they pass."""
    if not checked:
        return True
    lo, hi, dup = vals[:3]
    del vals[:3]
    if lo >= 0 and hi < m.num_rows and dup <= 1:
        if not rows.is_inference() and rows.is_contiguous():
            # (inference tensors have no version counter)
            base = rows._base if rows._base is not None else rows
            start = int(rows.storage_offset())
            m.req.valid_rows.append((base, rows._version, start, start + int(rows.numel())))
            del m.req.valid_rows[:-4]
        return True
    return False


def _requests(m: ManagerCore, rows: torch.Tensor, **fields: torch.Tensor) -> list[GpuRequest]:
    """Request objects for the fallback: ids validated (raises as the object API), fields read
    from the mirror (``fields`` override it)."""
    reqs = [GpuRequest(int(x)) for x in rows.tolist()]
    m.ids(reqs)
    mirror = m.req
    cols = {"context_current_position": mirror.pos, "py_ctx_pre_resize_cap": mirror.snap,
            "draft_len": mirror.draft}
    cols.update(fields)
    if not reqs:
        return reqs
    vals = {k: (v if v.numel() == len(reqs) and k in fields else v.index_select(0, rows))
            .tolist() for k, v in cols.items()}
    for i, q in enumerate(reqs):
        q.context_current_position = vals["context_current_position"][i]
        s = vals["py_ctx_pre_resize_cap"][i]
        q.py_ctx_pre_resize_cap = None if s < 0 else s
        q.draft_len = vals["draft_len"][i]
        q.state = CONTEXT
    return reqs


def _store(m: ManagerCore, rows: torch.Tensor, reqs: list[GpuRequest]) -> None:
    """Copies pos and snapshot of the fallback's requests back into the mirror."""
    mirror = m.req
    if not reqs:
        return
    vals = torch.tensor([[q.context_current_position for q in reqs],
                         [-1 if q.py_ctx_pre_resize_cap is None else q.py_ctx_pre_resize_cap
                          for q in reqs]], dtype=torch.int64).to(m.device)
    mirror.pos.index_copy_(0, rows, vals[0])
    mirror.snap.index_copy_(0, rows, vals[1])


def _bools(m: ManagerCore, vals: list[bool]) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.bool).to(m.device)


def _grow(m: ManagerCore, rc: torch.Tensor, cnt: torch.Tensor, nb: torch.Tensor,
          need: torch.Tensor, cum: torch.Tensor, need_max: int, total: int) -> None:
    """Pops the pages of a growth that fits (fixed shape when need <= 1) and writes counts."""
    if total:
        if need_max <= 1:
            m.gpu.grow_one(rc, cnt, need, cum, total)
        else:
            m.gpu.grow(rc, nb)
            return
    m.gpu.count.scatter_(0, rc, nb)


def _shrink(m: ManagerCore, rc: torch.Tensor, cnt: torch.Tensor, nb: torch.Tensor,
            rel: torch.Tensor, rel_max: int, total: int) -> None:
    """Pushes the released pages (fixed shape when rel <= 1) and writes counts."""
    if total:
        if rel_max <= 1:
            m.gpu.shrink_one(rc, nb, rel, total)
        else:
            m.gpu.shrink(rc, nb)
            return
    m.gpu.count.scatter_(0, rc, nb)


# ---- generation --------------------------------------------------------------------------


def _fast_growth(m: ManagerCore, rows: torch.Tensor, rc: torch.Tensor, checks: list[torch.Tensor],
                 new: torch.Tensor, arg: torch.Tensor) -> Callable[[], None] | None:
    """Decide, with one host read, whether growing rows ``rc`` to capacities ``new`` takes the
    fast path (rows valid and distinct, all ACTIVE, ``arg`` >= 0, within the table width and
    the free pages). Returns the page pops to run after the caller's scatters, or None.

    Cost: 2 gathers, 3 arithmetic ops, 1 cumsum, the checks' and 5 reductions in one stack.
    """
    st = m.cache.status.index_select(0, rc)
    cnt = m.gpu.count.index_select(0, rc)
    nb = m.blocks(new)
    need = nb - cnt
    cum = need.cumsum(0)
    vals = torch.stack([*checks, st.max(), nb.max(), arg.min(), need.max(), cum[-1]]).tolist()
    ok_rows = _passed(m, rows, vals, bool(checks))
    st_max, nb_max, arg_min, need_max, total = vals
    if not (ok_rows and st_max == ACTIVE and nb_max <= m.width and arg_min >= 0
            and total <= m.gpu.free):
        return None
    return lambda: _grow(m, rc, cnt, nb, need, cum, need_max, total)


def try_allocate_generation_rows(m: ManagerCore, rows: torch.Tensor | list[int],
                                 draft: torch.Tensor | list[int]) -> torch.Tensor:
    """Row form of try_allocate_generation_batch: bool [k] successes; records ``draft`` as
    the rows' draft_len in the mirror.

    Fast path (all rows valid, distinct, ACTIVE, drafts >= 0, growth within the table width
    and the free pages): 3 gathers, 6 arithmetic ops, 1 cumsum, 6 check ops + 6 reductions
    read in one sync, 3 scatters, the page pops (9 ops when each row needs <= 1 page).
    """
    rows, draft = _args(m, rows, (draft, "draft"))
    k = rows.numel()
    c = m.cache
    mirror = m.req
    if k and k <= m.num_rows:
        rc, checks = _row_checks(m, rows)
        cap = c.capacity.index_select(0, rc)
        new = cap + draft + 1
        grow = _fast_growth(m, rows, rc, checks, new, draft)
        if grow is not None:
            c.draft_record.scatter_(0, rc, draft)
            c.capacity.scatter_(0, rc, new)
            mirror.draft.scatter_(0, rc, draft)
            grow()
            return torch.ones(k, dtype=torch.bool, device=m.device)
    reqs = _requests(m, rows, draft_len=draft)
    ok = generation_ops.try_allocate_generation_batch(m, reqs)
    if k:
        mirror.draft.index_copy_(0, rows, draft)
    return _bools(m, ok)


def revert_allocate_generation_rows(m: ManagerCore, rows: torch.Tensor | list[int]) -> None:
    """Row form of revert_allocate_generation_batch.

    Fast path (rows valid and distinct, no target below history): 5 gathers, ~12 arithmetic
    ops, 5 reductions read in one sync, 2 scatters, the page pushes (14 ops when each row
    releases <= 1 page).
    """
    (rows,) = _args(m, rows)
    k = rows.numel()
    c = m.cache
    if k and k <= m.num_rows:
        rc, checks = _row_checks(m, rows)
        st = c.status.index_select(0, rc)
        rec = c.draft_record.index_select(0, rc)
        cap = c.capacity.index_select(0, rc)
        hist = c.history.index_select(0, rc)
        cnt = m.gpu.count.index_select(0, rc)
        # fast path: every row ACTIVE with a draft record, the target >= history
        d = cap - rec
        target = d - 1
        nb = m.blocks(target)
        rel = cnt - nb
        vals = torch.stack(
            [*checks, st.max(), rec.min(), (target - hist).min(), rel.max(), rel.sum()]
        ).tolist()
        ok_rows = _passed(m, rows, vals, bool(checks))
        st_max, rec_min, slack, rel_max, total = vals
        if ok_rows and st_max == ACTIVE and rec_min >= 0 and slack >= 0:
            c.draft_record.index_fill_(0, rc, NO_RECORD)
            c.capacity.scatter_(0, rc, target)
            _shrink(m, rc, cnt, nb, rel, rel_max, total)
            return
    generation_ops.revert_allocate_generation_batch(m, _requests(m, rows))


def update_resources_rows(m: ManagerCore, rows: torch.Tensor | list[int],
                          accepted: torch.Tensor | list[int],
                          draft: torch.Tensor | list[int] | None = None) -> None:
    """Row form of update_resources_batch; ``draft`` defaults to the mirror's draft_len (the
    one given to try_allocate_generation_rows).

    Fast path (rows valid, distinct, ACTIVE, 0 <= accepted <= draft, history within the
    trimmed capacity): 5-6 gathers, ~14 arithmetic ops, 7 reductions read in one sync,
    3 scatters, the page pushes (14 ops when each row releases <= 1 page).
    """
    mirror = m.req
    if draft is None:
        rows, acc = _args(m, rows, (accepted, "accepted"))
        d = None
    else:
        rows, acc, d = _args(m, rows, (accepted, "accepted"), (draft, "draft"))
    k = rows.numel()
    c = m.cache
    if k and k <= m.num_rows:
        rc, checks = _row_checks(m, rows)
        dd = mirror.draft.index_select(0, rc) if d is None else d
        st = c.status.index_select(0, rc)
        rec = c.draft_record.index_select(0, rc)
        cap = c.capacity.index_select(0, rc)
        hist = c.history.index_select(0, rc)
        cnt = m.gpu.count.index_select(0, rc)
        # fast path: every row ACTIVE with a draft record (the rewind is record - accepted)
        rewind = (rec - acc).clamp_(min=0)
        new_cap = cap - rewind
        new_hist = hist + acc + 1
        nb = m.blocks(new_cap)
        rel = cnt - nb
        vals = torch.stack(
            [*checks, st.max(), rec.min(), (new_cap - new_hist).min(), acc.min(),
             (dd - acc).min(), rel.max(), rel.sum()]).tolist()
        ok_rows = _passed(m, rows, vals, bool(checks))
        st_max, rec_min, slack, a_min, d_slack, rel_max, total = vals
        if (ok_rows and st_max == ACTIVE and rec_min >= 0 and slack >= 0 and a_min >= 0
                and d_slack >= 0):
            c.capacity.scatter_(0, rc, new_cap)
            c.history.scatter_(0, rc, new_hist)  # committed is the same tensor
            c.draft_record.index_fill_(0, rc, NO_RECORD)
            _shrink(m, rc, cnt, nb, rel, rel_max, total)
            return
    reqs = _requests(m, rows) if d is None else _requests(m, rows, draft_len=d)
    generation_ops.update_resources_batch(m, reqs, acc.tolist())


# ---- context -----------------------------------------------------------------------------


def resize_context_rows(m: ManagerCore, rows: torch.Tensor | list[int],
                        num_tokens: torch.Tensor | list[int]) -> torch.Tensor:
    """Row form of resize_context_batch (pos and the snapshot from/into the mirror).

    Fast path (rows valid, distinct, ACTIVE, num_tokens >= 0, growth within the width and the
    free pages): 4 gathers, 8 arithmetic ops, 6 reductions in one sync, 3 scatters, the pops.
    """
    rows, n = _args(m, rows, (num_tokens, "num_tokens"))
    k = rows.numel()
    c = m.cache
    mirror = m.req
    if k and k <= m.num_rows:
        rc, checks = _row_checks(m, rows)
        cap = c.capacity.index_select(0, rc)
        pos = mirror.pos.index_select(0, rc)
        new = torch.maximum(cap, pos + n)
        grow = _fast_growth(m, rows, rc, checks, new, n)
        if grow is not None:
            c.capacity.scatter_(0, rc, new)
            mirror.snap.scatter_(0, rc, torch.where(new > cap, cap, -1))
            grow()
            return torch.ones(k, dtype=torch.bool, device=m.device)
    reqs = _requests(m, rows)
    ok = context_ops.resize_context_batch(m, reqs, n.tolist())
    _store(m, rows, reqs)
    return _bools(m, ok)


def revert_allocate_context_rows(m: ManagerCore, rows: torch.Tensor | list[int]) -> torch.Tensor:
    """Row form of revert_allocate_context_batch (snapshot consumed from the mirror; the FREE
    branch rewinds the mirror's pos). A rollback path: always the object operation on
    requests built from the mirror (one D2H read, one H2D write back)."""
    (rows,) = _args(m, rows)
    reqs = _requests(m, rows)
    ok = context_ops.revert_allocate_context_batch(m, reqs)
    _store(m, rows, reqs)
    return _bools(m, ok)


def update_context_resources_rows(m: ManagerCore, rows: torch.Tensor | list[int],
                                  pos: torch.Tensor | list[int]) -> None:
    """Row form of update_context_resources: history = committed = pos, and the mirror's pos.

    Fast path (rows valid, distinct, ACTIVE, history <= pos <= capacity): 3 gathers,
    3 reductions + the row checks in one sync, 2 scatters.
    """
    rows, p = _args(m, rows, (pos, "pos"))
    k = rows.numel()
    c = m.cache
    mirror = m.req
    if k and k <= m.num_rows:
        rc, checks = _row_checks(m, rows)
        st = c.status.index_select(0, rc)
        hist = c.history.index_select(0, rc)
        cap = c.capacity.index_select(0, rc)
        vals = torch.stack(
            [*checks, st.max(), (p - hist).min(), (cap - p).min()]).tolist()
        ok_rows = _passed(m, rows, vals, bool(checks))
        st_max, low, high = vals
        if ok_rows and st_max == ACTIVE and low >= 0 and high >= 0:
            c.history.scatter_(0, rc, p)
            mirror.pos.scatter_(0, rc, p)
            return
    reqs = _requests(m, rows, context_current_position=p)
    context_ops.update_context_resources(m, reqs)
    if k:
        mirror.pos.index_copy_(0, rows, p)
