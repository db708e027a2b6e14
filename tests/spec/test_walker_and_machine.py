"""Fuzzing tiers: the walker (volume, witnesses) and hypothesis (shrinking)."""

from __future__ import annotations

import pytest
from budget import scaled
from hypothesis import settings

from kvspec.config import Config
from kvspec.policy import PRESETS, get_policy
from kvspec.spec.invariants import PROPERTIES, get_property
from kvspec.spec.machine import (
    ModelDriver,
    PropertyViolated,
    find_counterexample,
    make_state_machine,
)
from kvspec.spec.prove import bmc
from kvspec.spec.trace import Trace, replay
from kvspec.spec.walker import shrink_trace, walk


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_witness_is_reached(name: str) -> None:
    """Each "always" property's "sometimes" witness happens: the model is not vacuous."""
    pol = get_policy(name)
    res = walk(Config(), pol, steps=30_000, seed=3, shrink=False)
    missing = [p.id for p in PROPERTIES if p.applies(pol) and not res.witnesses[p.id]]
    assert not missing


def test_walker_is_deterministic_and_finds_and_shrinks() -> None:
    pol = get_policy("pr14849")
    a = walk(Config(), pol, steps=3_000, seed=11)
    b = walk(Config(), pol, steps=3_000, seed=11)
    assert a.counterexamples.keys() == b.counterexamples.keys()
    tr = a.counterexamples["NO-DEFERRED-HOLD"]
    assert tr.to_jsonl() == b.counterexamples["NO-DEFERRED-HOLD"].to_jsonl()
    assert len(tr) == 5  # the BMC minimum
    assert "NO-DEFERRED-HOLD" in replay(tr).final_violations


def test_walker_finds_nothing_under_the_reviewed_policy() -> None:
    res = walk(Config(), get_policy("pr13805-reviewed"), steps=20_000, seed=5)
    assert res.counterexamples == {}


@pytest.mark.parametrize("name", ["pr13805-reviewed", "pr14849"])
def test_state_machine_holds_for_proved_properties(name: str) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    pol = get_policy(name)
    props = [p for p in PROPERTIES if not (name == "pr14849" and p.id == "NO-DEFERRED-HOLD")]
    machine = make_state_machine(Config(), pol, props)
    run_state_machine_as_test(machine, settings=settings(max_examples=scaled(25)))


@pytest.mark.parametrize("policy,invariant", [
    ("pr13805", "SWA-REWIND"), ("pr14849", "NO-DEFERRED-HOLD")])
def test_hypothesis_finds_refuted_cells_within_two_steps_of_bmc(policy: str,
                                                                invariant: str) -> None:
    pol, prop = get_policy(policy), get_property(invariant)
    shortest = bmc(Config(), pol, [prop], max_depth=12)[invariant]
    found = find_counterexample(shortest.config, pol, prop, max_examples=scaled(300))
    assert found is not None
    shrunk = shrink_trace(found, invariant)
    assert len(shrunk) <= len(shortest) + 2


def test_driver_program_rendering_runs_and_fails() -> None:
    tr = walk(Config(), get_policy("pr14849"), steps=3_000, seed=11).counterexamples[
        "NO-DEFERRED-HOLD"]
    program = tr.program()
    assert program.startswith("from kvspec.spec.machine import ModelDriver")
    with pytest.raises(PropertyViolated):
        exec(program, {})  # noqa: S102 - a generated program, the point of the test


def test_driver_rejects_unknown_and_disabled_actions() -> None:
    from kvspec.errors import InvalidArgument

    d = ModelDriver("pr14849")
    with pytest.raises(InvalidArgument, match="unknown action"):
        d.no_such_action(r=0)
    with pytest.raises(InvalidArgument, match="not enabled"):
        d.resize_context(r=0)
    assert d.state == d.model.initial()  # a refused action changes nothing


def test_trace_roundtrip_and_renderings() -> None:
    tr = walk(Config(), get_policy("pr13805"), steps=5_000, seed=2).counterexamples[
        "SWA-REWIND"]
    back = Trace.from_jsonl(tr.to_jsonl())
    assert back.to_jsonl() == tr.to_jsonl()
    assert tr.path().startswith(f"Path[{len(tr)}]: arrive(r=")
    table = tr.table()
    assert "VIOLATES SWA-REWIND" in table
    assert all(s.digest for s in tr.steps)
