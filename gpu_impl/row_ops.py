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

from kvspec.errors import InvalidArgument, InvariantViolation

from . import context_ops, design, generation_ops
from .core import ManagerCore
from .requests import ACTIVE, CONTEXT, FIELD, NO_RECORD, GpuRequest
from .row_sets import Rows, passed, row_checks

_INT32 = torch.iinfo(torch.int32)


def _vec(m: ManagerCore, t: torch.Tensor | list[int], what: str,
         dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a 1-D ``dtype`` tensor on the manager's device: as is (no op) when it already
    is one, else converted (values checked to fit int32 when ``dtype`` is int32)."""
    if type(t) is torch.Tensor and t.dtype is dtype and t.device == m.device:
        if t.dim() != 1:
            raise InvalidArgument(f"{what} must be a 1-D tensor")
        return t  # the hot path: no conversion op
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.tensor(t, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidArgument(f"{what} must be a list of ints ({exc})") from None
    if t.dim() != 1:
        raise InvalidArgument(f"{what} must be a 1-D tensor")
    if t.numel() and (t.dtype.is_floating_point or t.dtype.is_complex
                      or t.dtype is torch.bool):  # (torch.tensor([]) is a float tensor)
        raise InvalidArgument(f"{what} must hold integers, got {t.dtype}")
    if dtype is torch.int32 and t.dtype is not torch.int32 and t.numel() and (
            int(t.min()) < _INT32.min or int(t.max()) > _INT32.max):
        raise InvalidArgument(f"{what} has values outside int32, the per-row field type")
    return t.to(device=m.device, dtype=dtype)


def _args(m: ManagerCore, rows: torch.Tensor | list[int],
          *cols: tuple[torch.Tensor | list[int], str]) -> tuple[torch.Tensor, ...]:
    """``rows`` as int64 (an index) and the per-row arguments as int32 (:data:`FIELD`), all
    1-D on the device and of one length; raises InvalidArgument otherwise."""
    r = _vec(m, rows, "rows", torch.int64)
    out = [r]
    for c, name in cols:
        v = _vec(m, c, name, FIELD)
        if v.numel() != r.numel():
            raise InvalidArgument(f"{v.numel()} {name} for {r.numel()} rows")
        out.append(v)
    return tuple(out)


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
                          for q in reqs]], dtype=FIELD, device="cpu").to(m.device)
    mirror.pos.index_copy_(0, rows, vals[0])
    mirror.snap.index_copy_(0, rows, vals[1])


def _bools(m: ManagerCore, vals: list[bool]) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.bool).to(m.device)


def _read(m: ManagerCore, vals: list[torch.Tensor]) -> list[int]:
    """The values of 0-dim int tensors on the host: ``.item()`` each on the CPU (no copy, no
    op), one stacked read (one device sync) on an accelerator."""
    if m.read_each:
        return [int(v.item()) for v in vals]
    return torch.stack(vals).tolist()


def _grow(m: ManagerCore, rs: Rows, cnt: torch.Tensor, nb: torch.Tensor,
          need: torch.Tensor, need_max: int, total: int) -> None:
    """Pops the pages of a growth that fits (at most one page per row: compact or fixed
    shape, as ``m.page_moves`` says; the general path otherwise) and writes counts."""
    if total:
        if need_max > 1:
            m.gpu.grow(rs.index, nb)
            return
        if m.page_moves == "compact":
            m.gpu.grow_compact(rs.index, cnt, need, total)
        else:
            m.gpu.grow_one(rs.index, cnt, need, total)
    rs.put(m.gpu.count, nb)


def _shrink(m: ManagerCore, rs: Rows, nb: torch.Tensor, rel: torch.Tensor, rel_max: int,
            total: int) -> None:
    """Pushes the released pages (at most one per row: compact or fixed shape; the general
    path otherwise) and writes counts."""
    if total:
        if rel_max > 1:
            m.gpu.shrink(rs.index, nb)
            return
        if m.page_moves == "compact":
            m.gpu.shrink_compact(rs.index, nb, rel, total)
        else:
            m.gpu.shrink_one(rs.index, nb, rel, total)
    rs.put(m.gpu.count, nb)


# ---- generation --------------------------------------------------------------------------


def _fast_growth(m: ManagerCore, rows: torch.Tensor, rs: Rows, checks: list[torch.Tensor],
                 new: torch.Tensor, arg: torch.Tensor) -> Callable[[], None] | None:
    """Decide, with one host read, whether growing ``rs`` to capacities ``new`` takes the
    fast path (rows valid and distinct, all ACTIVE, ``arg`` >= 0, within the table width and
    the free pages). Returns the page pops to run after the caller's writes, or None.

    Cost: 2 gathers, 3 arithmetic ops, the pending checks and 5 reductions read at once.
    """
    st = rs.take(m.cache.status)
    cnt = rs.take(m.gpu.count)
    nb = m.blocks(new)
    need = nb - cnt
    vals = _read(m, [*checks, st.max(), nb.max(), arg.min(), need.max(), need.sum()])
    ok_rows = passed(m, rows, vals, bool(checks))
    st_max, nb_max, arg_min, need_max, total = vals
    if not (ok_rows and st_max == ACTIVE and nb_max <= m.width and arg_min >= 0
            and total <= m.gpu.free):
        return None
    return lambda: _grow(m, rs, cnt, nb, need, need_max, total)


def try_allocate_generation_rows(m: ManagerCore, rows: torch.Tensor | list[int],
                                 draft: torch.Tensor | list[int]) -> torch.Tensor:
    """Row form of try_allocate_generation_batch: bool [k] successes; records ``draft`` as
    the rows' draft_len in the mirror.

    Fast path (all rows valid, distinct, ACTIVE, drafts >= 0, growth within the table width
    and the free pages): 3 gathers, 5 arithmetic ops, 5 reductions read at once with the
    pending row checks, 4 writes, the page pops.
    """
    rows, draft = _args(m, rows, (draft, "draft"))
    design.refuse_reserved(m, rows, "try_allocate_generation")
    k = rows.numel()
    c = m.cache
    mirror = m.req
    if k and k <= m.num_rows:
        rs, checks = row_checks(m, rows)
        if rs is not None:
            new = torch.add(rs.take(c.capacity), draft).add_(m.int_one)
            grow = _fast_growth(m, rows, rs, checks, new, draft)
            if grow is not None:
                rs.put(c.draft_record, draft)
                rs.put(c.capacity, new)
                rs.put(mirror.draft, draft)
                grow()
                return torch.ones(k, dtype=torch.bool, device=m.device)
    reqs = _requests(m, rows, draft_len=draft)
    ok = generation_ops.try_allocate_generation_batch(m, reqs)
    if k:
        mirror.draft.index_copy_(0, rows, draft)
    return _bools(m, ok)


def revert_allocate_generation_rows(m: ManagerCore, rows: torch.Tensor | list[int]) -> None:
    """Row form of revert_allocate_generation_batch.

    Fast path (rows valid and distinct, every row ACTIVE with a draft record, no target below
    history): 5 gathers, 6 arithmetic ops, 5 reductions read at once, 3 writes, the page
    pushes.
    """
    (rows,) = _args(m, rows)
    design.refuse_reserved(m, rows, "revert_allocate_generation")
    k = rows.numel()
    c = m.cache
    if k and k <= m.num_rows:
        rs, checks = row_checks(m, rows)
        if rs is not None:
            st = rs.take(c.status)
            rec = rs.take(c.draft_record)
            hist = rs.take(c.history)
            target = torch.sub(rs.take(c.capacity), rec).sub_(m.int_one)
            nb = m.blocks(target)
            rel = rs.take(m.gpu.count) - nb
            vals = _read(m, [*checks, st.max(), rec.min(), (target - hist).min(), rel.max(),
                             rel.sum()])
            ok_rows = passed(m, rows, vals, bool(checks))
            st_max, rec_min, slack, rel_max, total = vals
            if ok_rows and st_max == ACTIVE and rec_min >= 0 and slack >= 0:
                rs.fill(c.draft_record, NO_RECORD)
                rs.put(c.capacity, target)
                _shrink(m, rs, nb, rel, rel_max, total)
                return
    generation_ops.revert_allocate_generation_batch(m, _requests(m, rows))


def update_resources_rows(m: ManagerCore, rows: torch.Tensor | list[int],
                          accepted: torch.Tensor | list[int],
                          draft: torch.Tensor | list[int] | None = None) -> None:
    """Row form of update_resources_batch; ``draft`` defaults to the mirror's draft_len (the
    one given to try_allocate_generation_rows).

    Fast path (rows valid, distinct, ACTIVE with a draft record, 0 <= accepted <= draft,
    history within the trimmed capacity): 5-6 gathers, ~11 arithmetic ops, 7 reductions read
    at once, 4 writes, the page pushes.
    """
    mirror = m.req
    if draft is None:
        rows, acc = _args(m, rows, (accepted, "accepted"))
        d = None
    else:
        rows, acc, d = _args(m, rows, (accepted, "accepted"), (draft, "draft"))
    design.refuse_reserved(m, rows, "update_resources")
    k = rows.numel()
    c = m.cache
    if k and k <= m.num_rows:
        rs, checks = row_checks(m, rows)
        if rs is not None:
            dd = rs.take(mirror.draft) if d is None else d
            st = rs.take(c.status)
            rec = rs.take(c.draft_record)
            # every row has a draft record (checked): the rewind is record - accepted
            new_cap = rs.take(c.capacity) - (rec - acc).clamp_(min=0)
            new_hist = torch.add(rs.take(c.history), acc).add_(m.int_one)
            nb = m.blocks(new_cap)
            rel = rs.take(m.gpu.count) - nb
            vals = _read(m, [*checks, st.max(), rec.min(), (new_cap - new_hist).min(),
                             acc.min(), (dd - acc).min(), rel.max(), rel.sum()])
            ok_rows = passed(m, rows, vals, bool(checks))
            st_max, rec_min, slack, a_min, d_slack, rel_max, total = vals
            if (ok_rows and st_max == ACTIVE and rec_min >= 0 and slack >= 0 and a_min >= 0
                    and d_slack >= 0):
                rs.put(c.capacity, new_cap)
                rs.put(c.history, new_hist)  # committed: the same tensor, or stays 0
                if m.policy.pop_draft_record_on_update:
                    rs.fill(c.draft_record, NO_RECORD)
                _shrink(m, rs, nb, rel, rel_max, total)
                return
    reqs = _requests(m, rows) if d is None else _requests(m, rows, draft_len=d)
    generation_ops.update_resources_batch(m, reqs, acc.tolist())


# ---- context -----------------------------------------------------------------------------


def resize_context_rows(m: ManagerCore, rows: torch.Tensor | list[int],
                        num_tokens: torch.Tensor | list[int]) -> torch.Tensor:
    """Row form of resize_context_batch (pos and the snapshot from/into the mirror).

    Fast path (rows valid, distinct, ACTIVE, num_tokens >= 0, growth within the width and the
    free pages): 4 gathers, 7 arithmetic ops, 5 reductions read at once, 3 writes, the pops.
    """
    rows, n = _args(m, rows, (num_tokens, "num_tokens"))
    k = rows.numel()
    c = m.cache
    mirror = m.req
    if k and k <= m.num_rows and not (m.policy.reserve_context or m.policy.gate_before_resume):
        rs, checks = row_checks(m, rows)
        if rs is not None:
            cap = rs.take(c.capacity)
            new = torch.maximum(cap, rs.take(mirror.pos) + n)
            grow = _fast_growth(m, rows, rs, checks, new, n)
            if grow is not None:
                snap = torch.where(new > cap, cap, -1)  # before the write: cap may be a view
                rs.put(c.capacity, new)
                rs.put(mirror.snap, snap)
                grow()
                return torch.ones(k, dtype=torch.bool, device=m.device)
    reqs = _requests(m, rows)
    ok = context_ops.resize_context_batch(m, reqs, n.tolist())
    _store(m, rows, reqs)
    return _bools(m, ok)


def revert_allocate_context_rows(m: ManagerCore,
                                 rows: torch.Tensor | list[int]) -> torch.Tensor | None:
    """Row form of revert_allocate_context_batch (snapshot consumed from the mirror; the FREE
    branch rewinds the mirror's pos under ``free_branch_rewinds``). A rollback path: always
    the object operation on requests built from the mirror (one D2H read, one H2D write
    back). Returns None without ``free_branch_rewinds`` (the object API's results are all
    None then)."""
    (rows,) = _args(m, rows)
    reqs = _requests(m, rows)
    try:
        ok = context_ops.revert_allocate_context_batch(m, reqs)
    except InvariantViolation:
        _store(m, rows, reqs)  # under revert_clears_before_resize a snapshot was consumed
        raise
    _store(m, rows, reqs)
    if not m.policy.free_branch_rewinds:
        return None
    return _bools(m, [bool(x) for x in ok])


def update_context_resources_rows(m: ManagerCore, rows: torch.Tensor | list[int],
                                  pos: torch.Tensor | list[int]) -> None:
    """Row form of update_context_resources: history = committed = pos, and the mirror's pos.

    Fast path (rows valid, distinct, ACTIVE, history <= pos <= capacity): 3 gathers,
    3 reductions read at once with the pending row checks, 2 writes.
    """
    rows, p = _args(m, rows, (pos, "pos"))
    k = rows.numel()
    c = m.cache
    mirror = m.req
    if k and k <= m.num_rows:
        rs, checks = row_checks(m, rows)
        if rs is not None:
            st = rs.take(c.status)
            vals = _read(m, [*checks, st.max(), (p - rs.take(c.history)).min(),
                             (rs.take(c.capacity) - p).min()])
            ok_rows = passed(m, rows, vals, bool(checks))
            st_max, low, high = vals
            if ok_rows and st_max == ACTIVE and low >= 0 and high >= 0:
                rs.put(c.history, p)
                rs.put(mirror.pos, p)
                return
    reqs = _requests(m, rows, context_current_position=p)
    context_ops.update_context_resources(m, reqs)
    if k:
        mirror.pos.index_copy_(0, rows, p)
