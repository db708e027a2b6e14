"""ReadSetMemo answers as the predicate it remembers: on reachable states for every property
and preset, for a predicate whose reads depend on the values (the key grows), and past its
size bound; another ctx gets the plain call."""

from __future__ import annotations

import random
from typing import Any

import pytest
from walk_states import walk_states  # tests/spec/walk_states.py

from kvspec.config import Config
from kvspec.policy import PRESETS, get_policy
from kvspec.spec.invariants import PROPERTIES
from kvspec.spec.model import Model
from kvspec.spec.readset import PROBE_CALLS, ReadSetMemo
from kvspec.spec.state import State


@pytest.mark.parametrize("name", PRESETS)
def test_remembered_checks_equal_the_calls_on_reachable_states(name: str) -> None:
    m = Model(Config(num_requests=3), get_policy(name))
    memos = [(p, ReadSetMemo(p.check, m.ctx)) for p in PROPERTIES]
    states = walk_states(m, random.Random(11), 300, restart_every=40)
    for s in states + states:                      # the second round is answered from tables
        for p, memo in memos:
            assert bool(memo(m.ctx, s)) is bool(p.check(m.ctx, s)), (p.id, s)
    sizes = {p.id: len(memo) for p, memo in memos}
    assert 0 < sizes["INV-LEN"] < len(states)       # fewer keys than states: it remembers


def test_a_read_that_depends_on_a_value_grows_the_key() -> None:
    """The predicate reads ``host_free`` only when ``gpu_free`` is 0: a table keyed by
    ``gpu_free`` alone would answer a later state wrongly; the key grows instead."""
    calls: list[int] = []

    def check(c: Any, s: State) -> bool:
        calls.append(1)
        if s.gpu_free == 0:
            return bool(s.host_free > 1)
        return True

    m = Model(Config(), get_policy("pr14849"))
    s0 = m.initial()
    ctx = m.ctx
    memo = ReadSetMemo(check, ctx)
    full, empty_host, empty_both = (s0, s0._replace(gpu_free=0, host_free=2),
                                    s0._replace(gpu_free=0, host_free=0))
    assert memo(ctx, full) is True and memo(ctx, full) is True and len(calls) == 1
    assert memo(ctx, empty_host) is True            # reads host_free: the key grows
    assert memo(ctx, empty_both) is False           # not the answer for gpu_free == 0 alone
    assert memo(ctx, empty_host) is True and memo(ctx, empty_both) is False
    assert len(calls) == 3
    other = Model(Config(), get_policy("pr14849")).ctx   # another ctx: always the plain call
    assert memo(other, empty_both) is False and len(calls) == 4


def test_past_its_bound_the_memo_calls_and_stays_right() -> None:
    m = Model(Config(), get_policy("pr14849"))
    memo = ReadSetMemo(lambda c, s: s.gpu_free > 1, m.ctx, max_size=2)
    states = [m.initial()._replace(gpu_free=g) for g in range(5)]
    assert [memo(m.ctx, s) for s in states * 2] == [g > 1 for g in range(5)] * 2
    assert len(memo) == 2


def test_a_function_that_asks_for_more_than_fields_is_called_plainly() -> None:
    """Building a state (``_replace``) or using a record as a value (``==``) cannot be
    followed by the view: the memo turns itself off, and every answer is the plain one."""
    m = Model(Config(), get_policy("pr14849"))
    s0 = m.initial()
    states = [s0._replace(gpu_free=g) for g in (1, 2, 1)]

    def builds(c: Any, s: State) -> int:
        return int(s._replace(host_free=0).gpu_free)

    def compares(c: Any, s: State) -> bool:
        return bool(s.reqs[0] == s0.reqs[0])

    for f in (builds, compares):
        memo = ReadSetMemo(f, m.ctx)
        assert [memo(m.ctx, s) for s in states] == [f(m.ctx, s) for s in states]
        assert memo.off and len(memo) == 0


def test_extra_arguments_are_part_of_the_key_and_isinstance_sees_the_record() -> None:
    m = Model(Config(), get_policy("pr14849"))
    s = m.initial()
    memo = ReadSetMemo(lambda c, s, r, k: (isinstance(s.reqs[r], type(s.reqs[0])),
                                           s.gpu_free + k), m.ctx)
    assert [memo(m.ctx, s, 0, k) for k in (1, 2, 1)] == [(True, s.gpu_free + k)
                                                          for k in (1, 2, 1)]
    assert len(memo) == 2 and not memo.off


def test_a_memo_that_rarely_answers_turns_itself_off() -> None:
    m = Model(Config(), get_policy("pr14849"))
    s0 = m.initial()
    memo = ReadSetMemo(lambda c, s: s.gpu_free, m.ctx)
    values = [memo(m.ctx, s0._replace(gpu_free=g)) for g in range(PROBE_CALLS + 10)]
    assert values == list(range(PROBE_CALLS + 10))
    assert memo.off and len(memo) == 0
