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
