"""The rows (request slots) of one row-API call: their validation, a cache of rows tensors
already validated, and how the call reads and writes per-row fields.

A rows tensor is valid when every entry is a slot ``0..num_rows-1`` and no slot repeats. When
it is also a run of consecutive slots in increasing order (``start, start + 1, ...``: the
layout of a persistent batch that keeps its live requests in the first rows, as vLLM's
``InputBatch`` does), the call reads and writes fields through slices (views, kept per
manager, and ``copy_``) instead of ``index_select`` / ``scatter_``; the results are the same.
"""

from __future__ import annotations

import torch

from .core import ManagerCore

#: how many validated rows tensors the manager remembers (a scheduler passes one per
#: iteration, or slices of it)
REMEMBERED = 4
#: how many field slices the manager keeps for runs (field, start, length); a scheduler's
#: batches repeat the same few runs, so slicing a field is a dictionary lookup
SLICES_KEPT = 256


class Rows:
    """Validated rows of one call, ``k`` of them.

    Attributes:
        index: int64 [k] the rows as an index tensor (every entry a valid slot, so gathers and
            scatters with it are safe on any device).
        start: the first slot when the rows are ``start .. start + k - 1`` in order, else None.
    """

    __slots__ = ("index", "start", "k", "_views")

    def __init__(self, index: torch.Tensor, start: int | None,
                 views: dict[tuple[int, int, int], torch.Tensor]) -> None:
        self.index = index
        self.start = start
        self.k = index.numel()
        self._views = views  # the manager's (id(field), start, k) -> slice of the field

    def _slice(self, field: torch.Tensor) -> torch.Tensor:
        start = self.start
        assert start is not None
        key = (id(field), start, self.k)  # (fields live as long as the manager)
        view = self._views.get(key)
        if view is None:
            if len(self._views) >= SLICES_KEPT:
                self._views.clear()
            view = self._views[key] = field[start:start + self.k]
        return view

    def take(self, field: torch.Tensor) -> torch.Tensor:
        """``field[rows]``. For a run of slots this is a VIEW of ``field``: read it before any
        :meth:`put` to the same field. Cost: one op (a slice, made once per field, for a
        run)."""
        if self.start is not None:
            return self._slice(field)
        return field.index_select(0, self.index)

    def put(self, field: torch.Tensor, values: torch.Tensor) -> None:
        """``field[rows] = values`` (one op)."""
        if self.start is not None:
            self._slice(field).copy_(values)
        else:
            field.scatter_(0, self.index, values)

    def fill(self, field: torch.Tensor, value: int) -> None:
        """``field[rows] = value`` (one op)."""
        if self.start is not None:
            self._slice(field).fill_(value)
        else:
            field.index_fill_(0, self.index, value)


def row_checks(m: ManagerCore, rows: torch.Tensor) -> tuple[Rows | None, list[torch.Tensor]]:
    """Validates ``rows`` (1-D int64 on the manager's device, ``0 < k <= num_rows``).

    Returns ``(rows_set, pending)``:
      * a rows tensor known valid (one that passed these checks, or a contiguous slice of
        one, while its storage's ``_version`` is unchanged: torch bumps it on every in-place
        write to the tensor or a view of it): ``(Rows, [])``, no op;
      * on the CPU, where a host read costs no sync, the checks run and are read now:
        ``(Rows, [])`` when valid (then remembered), ``(None, [])`` when not. A run of slots
        costs one ``equal`` against the slot numbers; other rows 4 ops more (range
        ``aminmax``, then a multiplicity count: ``zero_``, ``scatter_add_``, ``max``);
      * on an accelerator the checks are left pending, to be read in the operation's single
        sync: ``(Rows(clamped rows, None), [min, max, largest multiplicity])``; the caller
        hands the values to :func:`passed`. 5 ops (the clamp keeps gathers in range until
        then).

    (Writes through a numpy alias of a CPU tensor bypass the version counter.)
    """
    known = _known(m, rows)
    if known is not None:
        return known, []
    if m.read_each:
        return _check_now(m, rows), []
    lo, hi = torch.aminmax(rows)
    rc = rows.clamp(0, m.num_rows - 1)
    return Rows(rc, None, m.req.views), [lo, hi, _multiplicity(m, rc)]


def passed(m: ManagerCore, rows: torch.Tensor, vals: list[int], checked: bool) -> bool:
    """Reads pending row checks' values off the front of ``vals`` (removing them) and
    remembers ``rows`` as valid when they pass. True when nothing was pending."""
    if not checked:
        return True
    lo, hi, dup = vals[:3]
    del vals[:3]
    if lo >= 0 and hi < m.num_rows and dup <= 1:
        _remember(m, rows, None)
        return True
    return False


def _known(m: ManagerCore, rows: torch.Tensor) -> Rows | None:
    if not rows.is_contiguous():
        return None
    base = rows._base if rows._base is not None else rows
    start = int(rows.storage_offset())
    end = start + int(rows.numel())
    version = rows._version
    for t, ver, lo, hi, first in m.req.valid_rows:  # (no inference tensor is in the list)
        if t is base and ver == version and lo <= start and end <= hi:
            return Rows(rows, None if first is None else first + start - lo, m.req.views)
    return None


def _check_now(m: ManagerCore, rows: torch.Tensor) -> Rows | None:
    k = rows.numel()
    first = int(rows[0].item())
    if 0 <= first <= m.num_rows - k and torch.equal(rows, m.req.slots[first:first + k]):
        _remember(m, rows, first)  # a run: valid, 1 op (an equality test that stops early)
        return Rows(rows, first, m.req.views)
    lo, hi = torch.aminmax(rows)
    if lo.item() < 0 or hi.item() >= m.num_rows or _multiplicity(m, rows).item() > 1:
        return None
    _remember(m, rows, None)
    return Rows(rows, None, m.req.views)


def _multiplicity(m: ManagerCore, rows: torch.Tensor) -> torch.Tensor:
    """The largest number of times a slot occurs in ``rows`` (in range), 0-dim (3 ops)."""
    seen = m.req.seen
    seen.zero_()
    seen.scatter_add_(0, rows, m.req.ones[: rows.numel()])
    return seen.max()


def _remember(m: ManagerCore, rows: torch.Tensor, first: int | None) -> None:
    if rows.is_inference() or not rows.is_contiguous():
        return  # (inference tensors have no version counter)
    base = rows._base if rows._base is not None else rows
    start = int(rows.storage_offset())
    m.req.valid_rows.append((base, rows._version, start, start + int(rows.numel()), first))
    del m.req.valid_rows[:-REMEMBERED]
