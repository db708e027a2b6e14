"""Implicit eviction in the model: the z3 reading admits exactly the victim vectors the
concrete reading enumerates, agrees on every inadmissible one and on false preconditions, and
computes the same successor."""

from __future__ import annotations

import itertools

import pytest
import z3
from sample_traces import EVICTION_CONFIG, EVICTION_PROLOGUE

from kvspec.errors import InvalidArgument
from kvspec.policy import get_policy
from kvspec.spec.model import Model, transition
from kvspec.spec.prove import _ctx, state_eq, sym_state
from kvspec.spec.state import State

POLICY = get_policy("pr14849")


def _at_prologue() -> tuple[Model, State]:
    m = Model(EVICTION_CONFIG, POLICY)
    s = m.initial()
    for st in EVICTION_PROLOGUE:
        s = m.step(s, st.action, st.r, **st.args).state
    return m, s


def _states() -> list[State]:
    """The prologue's end, and after r2's growth (r0's resume then evicts r1's pages)."""
    m, s = _at_prologue()
    t = m.step(s, "resize_context", 2, demote=(1, 1, 0)).state
    return [s, t]


def _fix(s: State, sym: State) -> list[z3.BoolRef]:
    out = []
    for q, qs in zip(s.reqs, sym.reqs):
        out += [x == y for x, y in zip(qs, q)]
    out += [x == y for x, y in zip(sym[1:], s[1:])]
    return out


@pytest.mark.parametrize("which", [0, 1])
def test_z3_admits_exactly_the_enumerated_victims(which: int) -> None:
    m = Model(EVICTION_CONFIG, POLICY)
    s = _states()[which]
    c = _ctx(EVICTION_CONFIG, POLICY, EVICTION_CONFIG.tokens_per_block, abstract=False)
    evicting = [a for a in m.actions if a.demand is not None]
    checked = 0
    for a in evicting:
        for r in range(3):
            sym = sym_state("a", 3)
            demote = tuple(z3.Int(f"d{j}") for j in range(3))
            sol = z3.Solver()
            sol.add(*_fix(s, sym), a.guard(c, sym, r, demote=demote))
            found = set()
            while sol.check() == z3.sat:
                v = tuple(sol.model().eval(d, model_completion=True).as_long() for d in demote)
                found.add(v)
                sol.add(z3.Or(*[d != x for d, x in zip(demote, v)]))
            assert found == set(m.victim_options(s, a, r)), (a.name, r)
            checked += bool(found)
            for v in itertools.product(range(-1, 4), repeat=3):  # concrete == symbolic guard
                assert bool(a.guard(m.ctx, s, r, demote=v)) == (v in found), (a.name, r, v)
    assert checked >= 2


def test_z3_successor_of_an_eviction_is_the_concrete_one() -> None:
    m, s = _at_prologue()
    c = _ctx(EVICTION_CONFIG, POLICY, EVICTION_CONFIG.tokens_per_block, abstract=False)
    a = m.action("resize_context")
    for v in m.victim_options(s, a, 2):
        expected = transition(m.ctx, a, s, 2, {"demote": v}).state
        sym_s, sym_t = sym_state("a", 3), sym_state("b", 3)
        sol = z3.Solver()
        sol.add(*_fix(s, sym_s), state_eq(transition(c, a, sym_s, 2, {"demote": v}).state, sym_t))
        assert sol.check(z3.Not(z3.And(*_fix(expected, sym_t)))) == z3.unsat, v
        assert [q.host_pages for q in expected.reqs][:2] == list(v[:2])


def test_bad_victims_are_typed_errors_naming_the_choices() -> None:
    m, s = _at_prologue()
    with pytest.raises(InvalidArgument, match="victims are a choice"):
        m.step(s, "resize_context", 2)
    with pytest.raises(InvalidArgument, match=r"not an admissible victim choice: 2 page\(s\)"):
        m.step(s, "resize_context", 2, demote=(3, -1, 0))
    with pytest.raises(InvalidArgument, match="tuple of 3 page counts"):
        m.step(s, "resize_context", 2, demote=(2, 0))
    with pytest.raises(InvalidArgument, match="not enabled"):
        m.step(s, "resize_context", 0)  # r0 is suspended: the precondition fails
    with pytest.raises(InvalidArgument, match="outside 0..2"):
        m.enabled(s, "resize_context", -1)
    with pytest.raises(InvalidArgument, match="parameters"):
        m.enabled(s, "resize_context", 2, foo=1)
    assert m.enabled(s, "resize_context", 2)  # for some victims
    assert not m.enabled(s, "resize_context", 2, demote=(0, 0, 0))
