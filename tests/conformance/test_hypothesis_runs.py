"""The hypothesis tier's per-state memo of enabled choices, and the catalogue's
``check-hypothesis`` checker in runs of ``kvspec check``'s default size (session 7)."""

from __future__ import annotations

from typing import Any

import pytest

from kvspec.config import Config
from kvspec.conformance import broken, catalogue, impls, machine
from kvspec.conformance.catalogue import BUGS, HYPOTHESIS_RUN, Budget
from kvspec.conformance.check import DEFAULT_EXAMPLES, run_check
from kvspec.policy import PRESETS
from kvspec.spec.model import Model

CONFIG = Config(tokens_per_block=1, num_gpu_pages=2, num_host_pages=1, max_prompt_len=2)
POLICY = PRESETS["pr13805-reviewed"]


def _fresh(model: Model, s: Any, name: str) -> list[tuple[int, dict[str, Any]]]:
    """The enabled (slot, args) of ``name`` in ``s``, enumerated without the memo."""
    a = model.action(name)
    slots = range(model.config.num_requests) if a.per_request else range(1)
    if a.demand is None:
        return [(r, args) for r in slots for args in model.enabled_args(s, a, r)]
    return [(r, args) for r in slots for args in a.argument_tuples(model.config)
            if model.enabled(s, name, r, **args)]


def _walk(m: Any, steps: int) -> list[Any]:
    """Step ``m`` through the first enabled choice of the first enabled rule, ``steps``
    times; the states met."""
    names = [a.name for a in m.model.actions]
    seen = [m.lock.state]
    for _ in range(steps):
        name = next(n for n in names if m._enabled(n))
        r, args = m._enabled(name)[0]
        assert m.lock.step(name, r, dict(args)) is None
        seen.append(m.lock.state)
    return seen


def test_the_memo_gives_what_a_fresh_enumeration_gives_and_is_shared() -> None:
    cls = machine.make_machine(impls.reference, CONFIG, POLICY)
    first = cls()
    names = [a.name for a in first.model.actions]
    states = _walk(first, 12)
    assert len(cls._memos[0]) == len(set(states)) > 1
    for s in states:  # every rule, every state met: the same choices, in the same order
        first.lock.state = s
        for n in names:
            assert first._enabled(n) == _fresh(first.model, s, n), (n, s)
    second = cls()  # a later example starts in an equal state: the memo answers it
    assert second.lock.state == states[0]
    assert all(second._enabled(n) is cls._memos[0][states[0]][n].options for n in names
               if n in cls._memos[0][states[0]])


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "MEMO_STATES", 3)
    cls = machine.make_machine(impls.reference, CONFIG, POLICY)
    _walk(cls(), 8)
    assert 1 <= len(cls._memos[0]) <= 3


def test_check_hypothesis_runs_the_default_size_with_seeds_0_1_and_so_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert HYPOTHESIS_RUN == DEFAULT_EXAMPLES // 5
    calls: list[tuple[int, int]] = []
    real = catalogue.run_check

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append((kw["seed"], kw["hypothesis_examples"]))
        return real(*args, **kw)

    monkeypatch.setattr(catalogue, "run_check", spy)
    monkeypatch.setattr(catalogue, "HYPOTHESIS_RUN", 3)
    row = {b.id: b for b in BUGS}["releases-the-head"]  # the tier misses it in 9 examples
    found, length, note = catalogue._check_hypothesis(row, Budget(check_hypothesis_runs=3))
    assert (found, length) == (False, None)
    assert calls == [(0, 3), (1, 3), (2, 3)]
    assert note.endswith("(3 runs of 3 examples)")


def test_check_hypothesis_names_the_seed_that_reproduces_the_detection() -> None:
    row = {b.id: b for b in BUGS}["swa-assert-skipped"]
    found, length, note = catalogue._check_hypothesis(row, catalogue.QUICK)
    assert found and note.startswith("seed ")
    seed = int(note.split()[1])
    again = run_check(broken.BROKEN[row.impl or ""], row.policy, tiers=("hypothesis",),
                      seed=seed, hypothesis_examples=HYPOTHESIS_RUN)
    assert again.divergence is not None and len(again.divergence.trace.steps) == length
