"""The z3 reading of every action admits exactly the successor the concrete model computes."""

from __future__ import annotations

import random

import z3
from walk_states import walk_states  # tests/spec/walk_states.py

from kvspec.config import Config
from kvspec.policy import PRESETS
from kvspec.spec.model import Model, transition
from kvspec.spec.prove import _ctx, state_eq, sym_state
from kvspec.spec.state import State


def _const(s: State, sym: State) -> list[z3.BoolRef]:
    out = []
    for q, qs in zip(s.reqs, sym.reqs):
        out += [x == y for x, y in zip(qs, q)]
    out += [x == y for x, y in zip(sym[1:], s[1:])]
    return out


def test_z3_successor_is_the_concrete_successor() -> None:
    rng = random.Random(7)
    checked = 0
    for pol in PRESETS.values():
        config = Config(num_requests=2)
        m = Model(config, pol)
        c = _ctx(config, pol, config.tokens_per_block, abstract=False)
        for s in walk_states(m, rng, 16):
            sym_s, sym_t = sym_state("a", 2), sym_state("b", 2)
            for a in m.actions:
                for r in range(config.num_requests if a.per_request else 1):
                    options = m.arguments(s, a, r)
                    if not options:
                        continue
                    args = rng.choice(options)
                    concrete_ok = bool(a.guard(m.ctx, s, r, **args))
                    sol = z3.Solver()
                    sol.add(*_const(s, sym_s))
                    guard = a.guard(c, sym_s, r, **args)
                    assert (sol.check(guard) == z3.sat) == concrete_ok, (pol.name, a.name)
                    if not concrete_ok:
                        continue
                    expected = transition(m.ctx, a, s, r, args).state
                    effect = transition(c, a, sym_s, r, args).state
                    sol.add(state_eq(effect, sym_t))
                    assert sol.check() == z3.sat
                    assert sol.check(z3.Not(z3.And(*_const(expected, sym_t)))) == z3.unsat, (
                        pol.name, a.name, r, args)
                    checked += 1
    assert checked > 300
