"""The compiled concrete reading (``spec/compiled.py``) is the interpreted one: on reachable
states of every preset and a few configurations, each enabled step's compiled effect gives
the same next state and result as :func:`transition` (values and their types), each guard,
precondition, demand and invariant the same value; a slot a step cannot change keeps its
record object; code that branches in Python on the state is not compiled and runs as it
is."""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

import pytest
from walk_states import walk_states  # tests/spec/walk_states.py

from kvspec.config import Config
from kvspec.policy import PRESETS, get_policy
from kvspec.spec.compiled import (
    CompiledModel,
    NotTraceable,
    compile_effect,
    compile_value,
    compiled_model,
)
from kvspec.spec.invariants import PROPERTIES
from kvspec.spec.model import Model, transition
from kvspec.spec.registry import Action, Ctx, Outcome
from kvspec.spec.state import State

CONFIGS: dict[str, Config] = {
    "default": Config(),
    "b1": Config(tokens_per_block=1),
    "batch-wait": Config(attention_dp=False, batch_wait_timeout_iters=2,
                         batch_wait_max_tokens_ratio=Fraction(1, 2)),
    "small-host-3": Config(num_requests=3, num_host_pages=1),
}
GRID = [pytest.param(p, c, id=f"{p}-{c}") for p in PRESETS for c in CONFIGS]


def _same(x: Any, y: Any) -> bool:
    """Equal values of the same types, record by record and field by field."""
    if isinstance(x, tuple):
        return (type(x) is type(y) and len(x) == len(y)
                and all(_same(a, b) for a, b in zip(x, y)))
    return type(x) is type(y) and x == y


def _agree(m: Model, compiled: CompiledModel, states: list[State]) -> int:
    """Compare every compiled function with the call it replaces on ``states``; returns the
    number of compiled effects compared."""
    c, effects = m.ctx, 0
    for s in states:
        for p in PROPERTIES:
            check = compiled.check(p)
            assert check is not None, p.id
            assert _same(check(c, s), p.check(c, s)), p.id
        for a in m.actions:
            for r in a.slots(m.config):
                guard = compiled.guard(a, r)
                assert guard is not None, a.name
                if a.demand is not None:
                    assert a.precondition is not None
                    assert _same(guard(s, {}), a.precondition(c, s, r)), a.name
                    demand = compiled.demand(a, r)
                    assert demand is not None
                    assert _same(demand(s), a.demand(c, s, r)), a.name
                else:
                    for args in m.arguments(s, a, r):
                        assert _same(guard(s, args), a.guard(c, s, r, **args)), (a.name, args)
                for args in m.enabled_args(s, a, r):
                    got, want = compiled.step(a, s, r, args), transition(c, a, s, r, args)
                    assert _same(tuple(got), tuple(want)), (a.name, r, args)
                    demote = args.get("demote", ())
                    for j, q in enumerate(s.reqs):
                        if a.per_request and j != r and not (j < len(demote) and demote[j]):
                            assert got.state.reqs[j] is q, (a.name, r, j)  # untouched
                    effects += 1
    return effects


@pytest.mark.parametrize("name,config", GRID)
def test_compiled_functions_equal_the_interpreted_ones(name: str, config: str) -> None:
    m = Model(CONFIGS[config], get_policy(name))
    states = [m.initial(), *walk_states(m, random.Random(11), 40, restart_every=20)]
    assert _agree(m, CompiledModel(m), states) > 40


def test_compiled_functions_in_the_proofs_abstraction() -> None:
    m = Model(Config(), get_policy("pr13805"), abstract_rest=True)
    states = [m.initial(), *walk_states(m, random.Random(4), 40, restart_every=20)]
    assert _agree(m, CompiledModel(m), states) > 40


def test_a_compiled_effect_reads_its_arguments() -> None:
    m = Model(Config(), get_policy("pr13805-reviewed"))
    arrive = m.action("arrive")
    fn = compile_effect(m, arrive, 1, {"prompt_len": 1, "chunk_size": 1, "draft_len": 0})
    s = m.initial()
    for args in m.arguments(s, arrive, 1):  # one function for every int argument
        assert _same(tuple(fn(s, args)), tuple(transition(m.ctx, arrive, s, 1, args)))
    assert fn(s, {"prompt_len": 3, "chunk_size": 2, "draft_len": 1}).state.reqs[0] is s.reqs[0]


def _branching(c: Ctx, s: State, r: int) -> Outcome:
    """An effect written with Python control flow on the state (not allowed in the spec)."""
    if s.gpu_free > 0:
        return Outcome(s._replace(gpu_free=s.gpu_free - 1))
    return Outcome(s)


def test_python_control_flow_on_the_state_is_not_compiled() -> None:
    m = Model(Config(), get_policy("pr13805"))
    a = Action(name="branching", params=(), per_request=False, guard=lambda c, s, r: True,
               effect=_branching, returns=False, atomic_on_false=False, doc="")
    with pytest.raises(NotTraceable):
        compile_effect(m, a, 0, {})
    with pytest.raises(NotTraceable):
        compile_value(m, lambda c, s: s.gpu_free if s.host_free else 0, "s")
    with pytest.raises(NotTraceable, match="TypeError"):  # int() of a symbolic value
        compile_value(m, lambda c, s: int(s.gpu_free), "s")
    m.actions = (*m.actions, a)  # the compiled model runs it interpreted
    compiled = CompiledModel(m)
    s = m.initial()
    assert compiled.step(a, s, 0, {}).state.gpu_free == s.gpu_free - 1
    assert compiled.step(a, s._replace(gpu_free=0), 0, {}).state.gpu_free == 0


def test_one_compiled_model_per_config_and_policy() -> None:
    a = Model(Config(), get_policy("pr13805"))
    b = Model(Config(), get_policy("pr13805"))
    assert compiled_model(a) is compiled_model(b)
    assert compiled_model(a) is not compiled_model(Model(Config(), get_policy("pr14849")))
    assert compiled_model(a) is not compiled_model(
        Model(Config(), get_policy("pr13805"), abstract_rest=True))
