"""1-minimal shrinking: no single step and no pair of steps of a shrunk divergence can be
removed, checked by brute force on the divergences of the broken managers; the shrunk length
beside the exhaustive search's shortest path for the same bug."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from kvspec.config import Config
from kvspec.conformance import broken
from kvspec.conformance.check import _rerun, run_check
from kvspec.conformance.exhaustive import explore
from kvspec.conformance.lockstep import StepRejected
from kvspec.conformance.report import Divergence, FieldDiff
from kvspec.conformance.shrink import same_bug, shrink
from kvspec.policy import PRESETS, Policy, get_policy
from kvspec.spec.trace import Step, Trace

Rerun = Callable[[Sequence[Step]], Divergence | None]

REVIEWED = get_policy("pr13805-reviewed")
CLEARS = PRESETS["stale-snapshot"].replace(name="stale-snapshot-cleared",
                                           clear_snapshot_on_failure=True)
# (factory, policy, strict): every broken manager of broken.py, each caught by the walker
CASES: dict[str, tuple[Callable[..., Any], Policy, bool]] = {
    "silent_double_free": (broken.silent_double_free, REVIEWED, True),
    "corrupting_double_free": (broken.corrupting_double_free, REVIEWED, False),
    "shrink_below_snapshot": (broken.shrink_below_snapshot, REVIEWED, False),
    "keeps_stale_snapshot": (broken.keeps_stale_snapshot, CLEARS, False),
}


def removable(div: Divergence, rerun: Rerun) -> list[tuple[int, ...]]:
    """Every single index and pair of indices whose removal still shows the same bug."""
    steps = div.trace.steps
    again = rerun(steps)  # not vacuous: the divergence itself reproduces
    assert again is not None and same_bug(div, again) and again.index == div.index

    def same(drop: tuple[int, ...]) -> bool:
        try:
            d = rerun([st for i, st in enumerate(steps) if i not in drop])
        except StepRejected:
            return False
        return d is not None and same_bug(div, d)

    drops = [(i,) for i in range(len(steps))] + list(itertools.combinations(range(len(steps)), 2))
    return [drop for drop in drops if same(drop)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_divergences_are_one_minimal(name: str) -> None:
    factory, policy, strict = CASES[name]
    report = run_check(factory, policy, examples=50, seed=0, tiers=("walker",), strict=strict)
    div = report.divergence
    assert div is not None, report.render()
    rerun = _rerun(factory, div.trace.config, policy, report.impl, strict)  # the failing run's
    assert div.shrunk_from is not None and len(div.steps) <= div.shrunk_from
    assert div.one_minimal is not False  # True, or not carried over to the settled replay
    assert removable(div, rerun) == [], div.render()
    # shrinking it again certifies it (1-minimal; a larger chunk may still go)
    again = shrink(div, rerun)
    assert again.one_minimal is True and len(again.steps) <= len(div.steps)
    assert f"(shrunk from {len(div.steps)} steps to {len(again.steps)}, 1-minimal)" \
        in again.render()


def test_hypothesis_tier_divergence_is_one_minimal() -> None:
    factory, policy, strict = CASES["corrupting_double_free"]  # found in <= 6 examples
    report = run_check(factory, policy, examples=1, seed=0, tiers=("hypothesis",),
                       hypothesis_examples=30)
    div = report.divergence
    assert div is not None, report.render()
    assert removable(div, _rerun(factory, div.trace.config, policy, report.impl, strict)) == []


def test_check_shrunk_length_beside_explore_shortest_path() -> None:
    """The same bug found by the walker (shrunk) and by the exhaustive BFS (a shortest path
    to the state where it diverges), on one small-scope config."""
    factory, policy, _ = CASES["shrink_below_snapshot"]
    one = Config(num_gpu_pages=2, num_host_pages=1, num_requests=1, tokens_per_block=2,
                 max_prompt_len=2, max_draft_len=1)
    ex = explore(factory, policy, one)
    assert not ex.ok and ex.divergence_depth == ex.divergences[0].index
    assert f"divergence at BFS depth {ex.divergence_depth}:" in ex.render()
    report = run_check(factory, policy, examples=50, seed=0, config=one, tiers=("walker",))
    div = report.divergence
    assert div is not None and same_bug(div, ex.divergences[0])
    print(f"check shrunk length {len(div.steps)} (from {div.shrunk_from}),"
          f" explore shortest {ex.divergence_depth}")
    assert len(div.steps) >= ex.divergence_depth  # measured: 10 and 10


# ---- a synthetic world: a pure predicate over step lists -----------------------------------

WORK = ("resize_context", "try_allocate_generation")
BUG = "revert_allocate_context"


def fake_run(steps: Sequence[Step]) -> Divergence | None:
    """Guards: ``decide`` opens an iteration and ``end_iteration`` closes it (no nesting, no
    unmatched close); ``resume_request`` needs a suspended slot and ``suspend_request`` an
    unsuspended one. The bug shows at a ``revert_allocate_context`` of slot 0 after both
    work steps of slot 0, outside an iteration, with slot 0 not suspended."""
    open_iter, suspended, done = False, set(), set()
    for i, st in enumerate(steps):
        if st.action == "decide":
            if open_iter:
                raise StepRejected("decide inside an iteration")
            open_iter = True
        elif st.action == "end_iteration":
            if not open_iter:
                raise StepRejected("end_iteration without decide")
            open_iter = False
        elif st.action == "suspend_request":
            if st.r in suspended:
                raise StepRejected("suspended twice")
            suspended.add(st.r)
        elif st.action == "resume_request":
            if st.r not in suspended:
                raise StepRejected("resume of a running request")
            suspended.discard(st.r)
        elif st.action in WORK and st.r == 0:
            done.add(st.action)
        elif (st.action == BUG and st.r == 0 and done == set(WORK) and not open_iter
              and 0 not in suspended):
            return _div(steps[:i + 1])
    return None


def _div(steps: Sequence[Step]) -> Divergence:
    trace = Trace(REVIEWED, Config(), tuple(steps))
    return Divergence(len(steps), steps[-1].call(), [FieldDiff("r0.capacity", "2", "1")], trace)


def _steps(*calls: tuple[str, int]) -> list[Step]:
    return [Step(a, r) for a, r in calls]


def test_shrink_removes_non_adjacent_pairs_to_one_minimal() -> None:
    # the iteration holds a needed step, the suspend/resume pair encloses one: no single step
    # and no whole iteration or slot can go, and ddmin's chunks never cover exactly a pair.
    # The previous shrinker (single-step final pass) returned all 7 steps.
    steps = _steps(("decide", 0), ("resize_context", 0), ("end_iteration", 0),
                   ("suspend_request", 0), ("try_allocate_generation", 0),
                   ("resume_request", 0), (BUG, 0))
    div = fake_run(steps)
    assert div is not None
    runs: list[int] = []

    def counted(s: Sequence[Step]) -> Divergence | None:
        runs.append(len(s))
        return fake_run(s)

    out = shrink(div, counted)
    assert [st.action for st in out.steps] == ["resize_context", "try_allocate_generation", BUG]
    assert out.shrunk_from == 7 and out.one_minimal is True
    assert removable(out, fake_run) == []
    assert "(shrunk from 7 steps to 3, 1-minimal)" in out.render()
    assert len(runs) < 100  # refused candidates are not replayed twice


def test_shrink_recomputes_partitions_after_each_removal() -> None:
    # empty iterations and a second slot's suspend/resume around the needed steps: whole
    # iterations and slot 1 go, each pass on the list as it is after the previous removal.
    # The previous shrinker (partitions computed once) returned 5 steps, an iteration's
    # decide ... end_iteration left around the needed steps.
    steps = _steps(("decide", 0), ("end_iteration", 0), ("decide", 0), ("suspend_request", 1),
                   ("resize_context", 0), ("end_iteration", 0), ("decide", 0),
                   ("end_iteration", 0), ("try_allocate_generation", 0),
                   ("resume_request", 1), ("decide", 0), ("end_iteration", 0), (BUG, 0))
    div = fake_run(steps)
    assert div is not None
    out = shrink(div, fake_run)
    assert len(out.steps) == 3 and out.one_minimal is True
    assert removable(out, fake_run) == []


def test_shrink_budget_spent_is_not_certified() -> None:
    steps = _steps(("decide", 0), ("resize_context", 0), ("end_iteration", 0),
                   ("suspend_request", 0), ("try_allocate_generation", 0),
                   ("resume_request", 0), (BUG, 0))
    div = fake_run(steps)
    assert div is not None
    out = shrink(div, fake_run, max_runs=5)
    assert out.one_minimal is False and out.shrunk_from == 7
    assert "not certified 1-minimal: shrink budget spent" in out.render()
