"""The small operations interface that every guard, effect and invariant is written against.

Plain Python ints and bools (:class:`ConcreteOps`) and z3 terms (:class:`kvspec.spec.z3ops.Z3Ops`)
implement it, so one definition of an action runs concretely in hypothesis and symbolically in
z3. Arithmetic (+, -, *) and comparisons use Python operators, which both readings support;
everything that Python would turn into control flow (``if``, ``and``, ``or``, ``not``, ``min``,
``max``) goes through the ops object instead.
"""

from __future__ import annotations

from typing import Any, Protocol

# A term is an int, a bool, or a z3 expression; kept as Any so both readings type-check.
Term = Any


class Ops(Protocol):
    """Operations a guard, an effect or an invariant may use on state values."""

    def ite(self, cond: Term, then: Term, other: Term) -> Term: ...
    def and_(self, *xs: Term) -> Term: ...
    def or_(self, *xs: Term) -> Term: ...
    def not_(self, x: Term) -> Term: ...
    def implies(self, a: Term, b: Term) -> Term: ...
    def min(self, a: Term, b: Term) -> Term: ...
    def max(self, a: Term, b: Term) -> Term: ...
    def blocks(self, capacity: Term) -> Term:
        """Pages that hold ``capacity`` tokens: ceil(capacity / tokens_per_block)."""
        ...
    def util_exceeds(self, used: Term, total: Term) -> Term:
        """Whether used / total > max_util_for_resume (False when total == 0)."""
        ...


class ConcreteOps:
    """The concrete reading: Python ints and bools, for hypothesis, the walker and replay."""

    def __init__(self, tokens_per_block: int, util_num: int, util_den: int) -> None:
        self._b = tokens_per_block
        self._num = util_num
        self._den = util_den

    @property
    def tokens_per_block(self) -> int:
        """B, the tokens one page holds (the divisor of :meth:`blocks`)."""
        return self._b

    def ite(self, cond: Term, then: Term, other: Term) -> Term:
        return then if cond else other

    def and_(self, *xs: Term) -> Term:
        return all(xs)

    def or_(self, *xs: Term) -> Term:
        return any(xs)

    def not_(self, x: Term) -> Term:
        return not x

    def implies(self, a: Term, b: Term) -> Term:
        return (not a) or bool(b)

    def min(self, a: Term, b: Term) -> Term:
        return a if a <= b else b

    def max(self, a: Term, b: Term) -> Term:
        return a if a >= b else b

    def blocks(self, capacity: Term) -> Term:
        return -(-capacity // self._b)

    def util_exceeds(self, used: Term, total: Term) -> Term:
        return used * self._den > self._num * total


class Unknown:
    """A value not known to the reader (:class:`ThreeValuedOps`): arithmetic and comparisons
    on it give it back; asking its truth value (``if``, ``and``, ``not``, ``bool``) raises
    :class:`ValueNeeded`, as a z3 variable's does. The one instance is :data:`UNKNOWN`."""

    __slots__ = ()

    def _same(self, *other: object) -> Unknown:
        return self

    def __bool__(self) -> bool:
        raise ValueNeeded("the truth value of an unknown value was asked")

    def __repr__(self) -> str:
        return "UNKNOWN"

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _same  # type: ignore[assignment]
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __neg__ = __pos__ = __abs__ = _same
    __hash__ = None  # type: ignore[assignment]


class ValueNeeded(Exception):
    """Raised when code branches on an :class:`Unknown` value."""


UNKNOWN = Unknown()
"""The unknown value."""


class ThreeValuedOps:
    """The three-valued reading: a term is a concrete int or bool, or :data:`UNKNOWN`.

    Each operation gives the concrete reading's value when its inputs are concrete, and
    otherwise a value that holds whatever the unknowns are: ``and_`` is False when some
    input is False, ``ite`` on an unknown condition is known when both branches are the
    same value, and anything else that reads an unknown is unknown (Kleene logic). So a
    guard or an invariant run on a state whose fields are partly :data:`UNKNOWN` that
    returns a plain bool has that value on every state that agrees on the known fields
    (code that branches on an unknown raises :class:`ValueNeeded` instead). The walker uses
    it to find guards and invariants decided by a state's small fields alone."""

    def __init__(self, concrete: ConcreteOps) -> None:
        self._c = concrete

    def ite(self, cond: Term, then: Term, other: Term) -> Term:
        if cond is UNKNOWN:
            if then is other or (type(then) in (int, bool) and type(then) is type(other)
                                 and then == other):
                return then
            return UNKNOWN
        return then if cond else other

    def and_(self, *xs: Term) -> Term:
        return _kleene(xs, False)

    def or_(self, *xs: Term) -> Term:
        return _kleene(xs, True)

    def not_(self, x: Term) -> Term:
        return UNKNOWN if x is UNKNOWN else not x

    def implies(self, a: Term, b: Term) -> Term:
        return self.or_(self.not_(a), b if b is UNKNOWN else bool(b))

    def min(self, a: Term, b: Term) -> Term:
        return UNKNOWN if a is UNKNOWN or b is UNKNOWN else self._c.min(a, b)

    def max(self, a: Term, b: Term) -> Term:
        return UNKNOWN if a is UNKNOWN or b is UNKNOWN else self._c.max(a, b)

    def blocks(self, capacity: Term) -> Term:
        return UNKNOWN if capacity is UNKNOWN else self._c.blocks(capacity)

    def util_exceeds(self, used: Term, total: Term) -> Term:
        return (UNKNOWN if used is UNKNOWN or total is UNKNOWN
                else self._c.util_exceeds(used, total))


def _kleene(xs: tuple[Term, ...], decisive: bool) -> Term:
    """Kleene ``and`` (``decisive`` False) or ``or`` (True): ``decisive`` when some input is
    it, else unknown when some input is :data:`UNKNOWN`, else ``not decisive``."""
    unknown = False
    for x in xs:
        if x is UNKNOWN:
            unknown = True
        elif bool(x) is decisive:
            return decisive
    return UNKNOWN if unknown else not decisive
