"""The walker's shortcuts change nothing: the same picks from the same draws, decided guards
and invariants equal to the calls they replace, the fast shuffle and record update equal to
the library's. The picker and the decided tables are checked under every preset and a few
configurations (:data:`CONFIGS`), on short walks each."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import pytest
from walk_states import walk_states  # tests/spec/walk_states.py

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import PRESETS, get_policy
from kvspec.spec.invariants import PROPERTIES
from kvspec.spec.model import Model, transition
from kvspec.spec.ops import UNKNOWN, ConcreteOps, ThreeValuedOps
from kvspec.spec.registry import Action
from kvspec.spec.state import Req, State
from kvspec.spec.walker import (
    EVICTS_NOTHING,
    STAGE_ACTION_WEIGHT,
    DecidedGuards,
    PlanValue,
    _shuffler,
    _step_picker,
)

CONFIGS: dict[str, Config] = {
    # delay batching by batch waiting (the default waits on nothing)
    "batch-wait": Config(batch_wait_timeout_iters=2, batch_wait_max_tokens_ratio=Fraction(1, 2)),
    # no ADP: decide's can_queue is always True
    "no-adp": Config(attention_dp=False),
    # a one-page host tier: implicit eviction runs short of host room
    "small-host": Config(num_host_pages=1),
}
"""Configurations (two requests) the equivalence tests run under, with every preset."""
GRID = [pytest.param(p, c, id=f"{p}-{c}") for p in PRESETS for c in CONFIGS]


def _plain_picker(m: Model, rng: random.Random
                  ) -> Callable[[State], tuple[str, int, dict[str, Any]] | None]:
    """The walker's draw without shortcuts: every guard called (the specification of
    :func:`_step_picker`)."""
    acts = list(m.actions)
    n = m.config.num_requests
    order = list(range(len(acts)))

    def pick(s: State) -> tuple[str, int, dict[str, Any]] | None:
        rng.shuffle(order)
        for i in order:
            a = acts[i]
            if not a.per_request and rng.random() > STAGE_ACTION_WEIGHT:
                continue
            r = int(rng.random() * n) if a.per_request else 0
            options = m.arguments(s, a, r)
            if not options:
                continue
            args = options[int(rng.random() * len(options))]
            if a.demand is not None or a.guard(m.ctx, s, r, **args):
                return a.name, r, args
        for i in order:
            a = acts[i]
            for r in a.slots(m.config):
                for args in m.arguments(s, a, r):
                    if a.demand is not None or a.guard(m.ctx, s, r, **args):
                        return a.name, r, args
        return None

    return pick


def _same_draws(m: Model, steps: int, decided: DecidedGuards | None = None) -> None:
    """The walker's picker (with ``decided``'s tables) and the plain rejection sampler, fed
    the same seed, pick the same step in every state of a ``steps``-pick walk."""
    fast, plain = _step_picker(m, random.Random(5), decided), _plain_picker(m, random.Random(5))
    s = m.initial()
    for k in range(steps):
        got, want = fast(s), plain(s)
        assert (None if got is None else (got[0].name, got[1], got[2])) == want, k
        if got is None or k % 60 == 59:
            s = m.initial()
            continue
        s = transition(m.ctx, got[0], s, got[1], got[2]).state


@pytest.mark.parametrize("name,config", GRID)
def test_the_picker_draws_as_the_plain_rejection_sampler(name: str, config: str) -> None:
    _same_draws(Model(CONFIGS[config], get_policy(name)), 100)


def test_the_picker_draws_as_the_plain_rejection_sampler_at_three_requests() -> None:
    _same_draws(Model(Config(num_requests=3), get_policy("pr14849")), 250)


def test_a_bounded_plan_cache_changes_no_draw() -> None:
    m = Model(Config(num_requests=3), get_policy("pr13805"))
    decided = DecidedGuards(m, max_plans=4)
    seen: set[tuple[int, ...]] = set()
    keys = decided._key

    def spy(s: State) -> tuple[int, ...]:
        key = keys(s)
        seen.add(key)
        return key

    decided._key = spy
    _same_draws(m, 250, decided)
    assert len(decided._plans) == 4 < len(seen)  # plans were dropped and rebuilt
    with pytest.raises(InvalidArgument, match="max_plans=0"):
        DecidedGuards(m, max_plans=0)


@pytest.mark.parametrize("name,config", GRID)
def test_decided_guards_and_invariants_equal_the_calls(name: str, config: str) -> None:
    m = Model(CONFIGS[config], get_policy(name))
    decided = DecidedGuards(m)
    props = [(p.id, p.check) for p in PROPERTIES]
    learnt = 0
    states = walk_states(m, random.Random(3), 60, restart_every=30)
    for s, a, r, value in _plan_entries(m, decided, states):
        if value is None:
            continue
        learnt += 1
        if a.demand is not None:
            assert a.precondition is not None
            assert bool(a.precondition(m.ctx, s, r)) is bool(value), (a.name, r)
            if value is EVICTS_NOTHING:
                assert a.demand(m.ctx, s, r) == 0, (a.name, r)
        else:
            for args in m.arguments(s, a, r):
                assert bool(a.guard(m.ctx, s, r, **args)) is value, (a.name, r, args)
    for s in states:
        left = dict(decided.checks(s, props))
        for pid, check in props:
            if pid not in left:
                assert check(m.ctx, s), pid
            elif left[pid] is None:
                assert not check(m.ctx, s), pid
    assert learnt > 800  # the tables decide most guards


def test_three_valued_ops_are_the_concrete_ops_on_concrete_values() -> None:
    c = ConcreteOps(2, 3, 4)
    t = ThreeValuedOps(c)
    values: list[Any] = [False, True, 0, 1, 2, 5, -1]
    for x, y, z in itertools.product(values, repeat=3):
        assert t.ite(x, y, z) == c.ite(x, y, z)
        assert t.and_(x, y, z) is c.and_(x, y, z)
        assert t.or_(x, y, z) is c.or_(x, y, z)
        assert t.implies(x, y) is c.implies(x, y)
        assert t.min(y, z) == c.min(y, z) and t.max(y, z) == c.max(y, z)
    for x in range(-3, 12):
        assert t.not_(x) is c.not_(x) and t.blocks(x) == c.blocks(x)
        assert t.util_exceeds(x, 8) is c.util_exceeds(x, 8)


def test_three_valued_ops_keep_what_the_unknown_cannot_change() -> None:
    t = ThreeValuedOps(ConcreteOps(2, 3, 4))
    assert t.and_(UNKNOWN, False) is False and t.and_(UNKNOWN, True) is UNKNOWN
    assert t.or_(True, UNKNOWN) is True and t.or_(UNKNOWN, False) is UNKNOWN
    assert t.ite(UNKNOWN, 3, 3) == 3 and t.ite(UNKNOWN, 3, 4) is UNKNOWN
    assert t.implies(False, UNKNOWN) is True and t.implies(UNKNOWN, True) is True
    assert t.blocks(UNKNOWN + 1) is UNKNOWN and (UNKNOWN >= 0) is UNKNOWN
    with pytest.raises(Exception, match="unknown"):
        bool(UNKNOWN)


@pytest.mark.parametrize("size", [1, 2, 7, 10, 12, 17])
def test_the_fast_shuffle_is_random_shuffle(size: int) -> None:
    rng, twin = random.Random(9), random.Random(9)
    shuffle = _shuffler(rng, size)
    for _ in range(200):
        a, b = list(range(size)), list(range(size))
        shuffle(a)
        twin.shuffle(b)
        assert a == b
    assert rng.getstate() == twin.getstate()


def test_record_replace_is_the_namedtuple_one() -> None:
    q = Req(capacity=4, history=2)
    assert q._replace(history=3, ran=True) == Req(capacity=4, history=3, ran=True)
    assert type(q._replace()) is Req and q._replace() == q
    with pytest.raises(ValueError, match="unexpected field names: \\['nope'\\]"):
        q._replace(nope=1, history=1)
    s = State(reqs=(q,))
    assert s._replace(gpu_free=3) == State(reqs=(q,), gpu_free=3)


@pytest.mark.parametrize("name", ["pr13805", "pr14849", "gate-before-resume"])
def test_evicts_nothing_means_the_demand_is_zero(name: str) -> None:
    """Where a plan says EVICTS_NOTHING, the precondition holds and the demand is 0."""
    m = Model(Config(num_requests=3), get_policy(name))
    decided = DecidedGuards(m)
    seen = 0
    states = walk_states(m, random.Random(4), 200, restart_every=40)
    for s, a, r, value in _plan_entries(m, decided, states):
        if value is EVICTS_NOTHING:
            seen += 1
            assert a.precondition is not None and a.demand is not None
            assert a.precondition(m.ctx, s, r) and a.demand(m.ctx, s, r) == 0
            assert m.arguments(s, a, r) == [{"demote": m.no_victims}]
    assert seen > 20


def _plan_entries(m: Model, decided: DecidedGuards, states: list[State]
                  ) -> Iterator[tuple[State, Action, int, PlanValue]]:
    """(state, action, slot, planned value) for every entry of every state's plan."""
    for s in states:
        plan = decided.guards(s)
        for i, a in enumerate(m.actions):
            for r, value in enumerate(plan[i]):
                yield s, a, r, value
