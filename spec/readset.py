"""Results of a pure function of a state remembered by the fields it reads.

An invariant reads a few fields of a state (INV-LEN: four per slot and a ghost flag); the
walker meets tens of thousands of states but a few hundred distinct values of those fields.
:class:`ReadSetMemo` runs the function on a recording view of the state the first time,
learns which fields it read, and answers later states that agree on those fields from a
table, without calling it.

Why this is exact, for a deterministic function of the state and of hashable extra
arguments: the result of a call depends only on the values it read, and a state that agrees
on those values makes the call take the same path, read the same fields and return the same
result. The key is the extra arguments and the union of the fields every recorded call read
(per slot, the union over slots, applied to every slot); when a call reads a field outside
it, the union grows and the table is emptied, so every kept result was computed by a call
whose reads the key covers. The recording view learns the state only through field reads:
whatever else a function could ask of it (its identity as a value: ``==``, ``hash``,
``bool``, iteration, ``len``, indexing; a method such as ``_replace``, whose result the view
cannot follow) raises, and a function that does that is never remembered: the memo turns
itself off and calls it plainly from then on. ``isinstance`` sees the record's class.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Any

from .state import State

PROBE_CALLS = 512
"""After this many calls a :class:`ReadSetMemo` that missed on more than half of them turns
itself off: a recorded call costs a few plain ones, so a table that rarely answers costs more
than it saves (the walker's victims of ``resize_context``, which depend on sizes and pool
counts, miss on ~60% of the calls)."""

MEMO_SIZE = 65_536
"""The most results a :class:`ReadSetMemo` keeps; past it new results are not kept (the
call is made as without the memo). At 3 requests INV-LEN meets 871 keys in 30,000 walker
steps, INV-CONSERVE 369."""


class _Opaque(Exception):
    """A recorded function asked the view for something other than a field."""


def _refuse(self: _Recorder, *args: object) -> Any:
    raise _Opaque("a recorded function used a record as a value")


class _Recorder:
    """A view of a state or request record that notes each field read into ``reads``;
    a state's ``reqs`` are recorders too (their reads go to ``req_reads``)."""

    __slots__ = ("_obj", "_reads", "_req_reads")

    def __init__(self, obj: Any, reads: set[str], req_reads: set[str] | None) -> None:
        self._obj = obj
        self._reads = reads
        self._req_reads = req_reads

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._obj)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise _Opaque(f"a recorded function asked for {name!r}")
        value = getattr(self._obj, name)
        if name == "reqs" and self._req_reads is not None:
            req_reads = self._req_reads
            return tuple(_Recorder(q, req_reads, None) for q in value)
        self._reads.add(name)
        return value

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __hash__ = __bool__ = __len__ = __iter__ = __getitem__ = __contains__ = _refuse


class ReadSetMemo:
    """``f(ctx, s, *extra)`` for one concrete ``ctx``, remembered by ``extra`` and the fields
    of ``s`` it reads.

    Called with another ctx (the three-valued one of the walker's decision tables, z3's) it
    is the plain call. A call that raises is not remembered: the exception propagates from
    the plain call. A state whose key fields are unhashable is answered by the plain call.
    Cost: on a hit, building the key (one ``attrgetter`` per slot and one for the state)
    and a dict lookup; on a miss, the call on recording views (a few times the plain call).
    """

    def __init__(self, f: Callable[..., Any], ctx: Any, max_size: int = MEMO_SIZE) -> None:
        self.fn = f
        self._ctx = ctx
        self._max = max_size
        self._state_fields: set[str] = set()
        self._req_fields: set[str] = set()
        self._key: Callable[[State], Any] | None = None
        self._table: dict[Any, Any] = {}
        self.off = False
        """True once the function asked the view for more than fields, or the table missed
        on most of the first :data:`PROBE_CALLS` calls: plain calls only."""
        self._calls = self._misses = 0

    def __len__(self) -> int:
        return len(self._table)

    def __call__(self, ctx: Any, s: State, *extra: Hashable) -> Any:
        if ctx is not self._ctx or self.off:
            return self.fn(ctx, s, *extra)
        self._calls += 1
        if self._calls == PROBE_CALLS and 2 * self._misses > PROBE_CALLS:
            self.off = True
            self._table.clear()
            return self.fn(ctx, s, *extra)
        key_of = self._key
        key = None
        if key_of is not None:
            key = (extra, key_of(s))
            try:
                return self._table[key]
            except KeyError:
                pass
            except TypeError:          # an unhashable value: no memo for this call
                return self.fn(ctx, s, *extra)
        self._misses += 1
        reads: set[str] = set()
        req_reads: set[str] = set()
        try:
            value = self.fn(ctx, _Recorder(s, reads, req_reads), *extra)
        except Exception:              # noqa: BLE001 - the view was not enough: plain calls
            self.off = True
            self._table.clear()
            return self.fn(ctx, s, *extra)
        if key_of is None or not (reads <= self._state_fields
                                  and req_reads <= self._req_fields):
            self._state_fields |= reads
            self._req_fields |= req_reads
            self._key = key_of = _key_function(sorted(self._state_fields),
                                               sorted(self._req_fields))
            self._table.clear()
        key = (extra, key_of(s))
        if len(self._table) < self._max:
            try:
                self._table[key] = value
            except TypeError:
                pass
        return value


def _key_function(state_fields: list[str], req_fields: list[str]) -> Callable[[State], Any]:
    """``s`` -> (state fields' values, each slot's fields' values), as a hashable tuple."""
    sget = operator.attrgetter(*state_fields) if state_fields else None
    rget = operator.attrgetter(*req_fields) if req_fields else None
    if rget is None:
        return (lambda s: sget(s)) if sget is not None else (lambda s: ())
    if sget is None:
        return lambda s: tuple(map(rget, s.reqs))
    return lambda s: (sget(s), *map(rget, s.reqs))
