"""The symbolic reading of :mod:`kvspec.spec.ops`: every operation builds a z3 term.

``blocks`` is either exact for a concrete ``tokens_per_block`` (bounded model checking, so
counterexamples replay concretely) or an uninterpreted function ``blocks`` constrained only by
``blocks(0) == 0`` and monotonicity (inductive proofs, so a PROVED verdict holds for every
tokens_per_block: ceil(x / B) is one such function). The monotonicity facts are instantiated on
exactly the terms a query uses (:meth:`Z3Ops.block_axioms`), which keeps queries quantifier-free.
"""

from __future__ import annotations

import z3

from .ops import Term


class Z3Ops:
    """Ops over z3 terms; see the module docstring for the two readings of ``blocks``."""

    def __init__(self, tokens_per_block: int | None, util_num: int, util_den: int) -> None:
        self._b = tokens_per_block
        self._num = util_num
        self._den = util_den
        self._blk = z3.Function("blocks", z3.IntSort(), z3.IntSort())
        self._args: list[z3.ArithRef] = []

    def ite(self, cond: Term, then: Term, other: Term) -> Term:
        return z3.If(cond, then, other)

    def and_(self, *xs: Term) -> Term:
        return z3.And(*xs)

    def or_(self, *xs: Term) -> Term:
        return z3.Or(*xs)

    def not_(self, x: Term) -> Term:
        return z3.Not(x)

    def implies(self, a: Term, b: Term) -> Term:
        return z3.Implies(a, b)

    def min(self, a: Term, b: Term) -> Term:
        return z3.If(a <= b, a, b)

    def max(self, a: Term, b: Term) -> Term:
        return z3.If(a >= b, a, b)

    def blocks(self, capacity: Term) -> Term:
        if self._b is not None:
            return (capacity + (self._b - 1)) / self._b
        self._args.append(capacity)
        return self._blk(capacity)

    def blocks_mark(self) -> int:
        """A mark for :meth:`blocks_since`: how many ``blocks`` arguments exist now."""
        return len(self._args)

    def blocks_since(self, mark: int) -> list[Term]:
        """The ``blocks`` arguments built since ``mark``."""
        return list(self._args[mark:])

    def note_blocks(self, args: list[Term]) -> None:
        """Record ``blocks`` arguments built outside this object (e.g. by substituting a
        template's terms), so that :meth:`block_axioms` covers them."""
        self._args.extend(args)

    def util_exceeds(self, used: Term, total: Term) -> Term:
        return used * self._den > self._num * total

    def block_axioms(self, extra: list[Term] | None = None) -> list[z3.BoolRef]:
        """Instances of the ``blocks`` axioms on every argument built so far (and ``extra``).

        blocks(0) == 0, blocks(x) >= 0 for x >= 0, x <= y -> blocks(x) <= blocks(y) for every pair.
        Cost: quadratic in the number of distinct arguments (tens per query).
        """
        if self._b is not None:
            return []
        args: list[z3.ArithRef] = []
        seen: set[int] = set()
        for a in self._args + list(extra or []):
            a = z3.simplify(a)
            if a.get_id() not in seen:
                seen.add(a.get_id())
                args.append(a)
        facts: list[z3.BoolRef] = [self._blk(z3.IntVal(0)) == 0]
        for a in args:
            facts.append(z3.Implies(a >= 0, self._blk(a) >= 0))
            facts.append(z3.Implies(a == 0, self._blk(a) == 0))
        for i, a in enumerate(args):
            for b in args[i + 1:]:
                facts.append(z3.Implies(a <= b, self._blk(a) <= self._blk(b)))
                facts.append(z3.Implies(b <= a, self._blk(b) <= self._blk(a)))
        return facts
