"""Shrinking a failing step list to a 1-minimal one: drop steps while the divergence persists.

A candidate is kept only when it still replays on the model (every guard holds) and still
diverges at the same action with overlapping kinds of difference (:func:`same_bug`), so the
shrunk sequence is a real behaviour showing the same bug. Every kept candidate replaces the
step list by the steps up to its (possibly earlier) divergence, and every partition below is
recomputed from that list.

Passes: whole iterations (up to and including an ``end_iteration``), every step of one request
slot, then ddmin over chunks, repeated together until none of them removes anything; then the
final pass tries every single step and every pair of steps (any two, not only adjacent ones)
until neither removes anything (after it removed something, the coarse passes run again).
When that final pass completes within ``max_runs`` the result is 1-minimal
(``Divergence.one_minimal``): no single step and no pair of steps can be removed. Candidates
already refused are remembered and not replayed again.

Cost: one lockstep replay per candidate; the final pass is n + n(n-1)/2 replays for n shrunk
steps, once more after each step or pair it removes (n is tens: the broken managers of the
test suite shrink from 20-60 steps to 7-20 in 30-420 replays, under 1 s on the reference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from kvspec.spec.trace import Step

from .lockstep import StepRejected
from .report import Divergence

Reproduce = Callable[[Sequence[Step]], Divergence | None]

MAX_RUNS = 5000
"""Default replay budget of :func:`shrink`. A certifying final pass over n steps costs
n + n(n-1)/2 replays (231 at n = 21, 1,830 at n = 60, the walker's walk length) and is
repeated after each removal it makes; the coarse passes before it cost a few hundred. The
previous 2,000 would not cover one such pass at n = 60 plus the coarse passes; the broken
managers of the test suite take at most ~420, and 5,000 replays bound a pathological shrink
at ~10 s on the reference (~2 ms a replay)."""


def same_bug(a: Divergence, b: Divergence) -> bool:
    """Same diverging action name and at least one kind of difference in common."""
    return (a.trace.steps[-1].action == b.trace.steps[-1].action
            and bool(a.kinds() & b.kinds())) if a.trace.steps and b.trace.steps else \
        a.kinds() == b.kinds()


def _iterations(steps: Sequence[Step]) -> list[set[int]]:
    """Index sets of whole iterations (up to and including each ``end_iteration``)."""
    out: list[set[int]] = []
    cur: set[int] = set()
    for i, st in enumerate(steps):
        cur.add(i)
        if st.action == "end_iteration":
            out.append(cur)
            cur = set()
    return out


def _slots(steps: Sequence[Step]) -> list[set[int]]:
    """Per request slot, the indices of its per-request steps (global actions excluded)."""
    by: dict[int, set[int]] = {}
    for i, st in enumerate(steps):
        if st.action not in ("decide", "end_iteration", "others"):
            by.setdefault(st.r, set()).add(i)
    return list(by.values())


def _key(steps: Sequence[Step]) -> tuple[tuple[str, int, str], ...]:
    """What a replay depends on (action, slot, arguments), hashable."""
    return tuple((st.action, st.r, repr(sorted(st.args.items()))) for st in steps)


class _Budget(Exception):
    """``max_runs`` replays spent."""


class _Shrinker:
    """The current step list and divergence, and one attempt per candidate."""

    def __init__(self, div: Divergence, run: Reproduce, max_runs: int) -> None:
        self.div = div
        self.best = div
        self.steps = list(div.trace.steps)
        self.run = run
        self.max_runs = max_runs
        self.runs = 0
        self.refused: set[tuple[tuple[str, int, str], ...]] = set()

    def attempt(self, cand: Sequence[Step]) -> bool:
        """Replay ``cand``; on the same bug keep it (cut at its divergence) and say True."""
        if len(cand) >= len(self.steps):
            return False
        key = _key(cand)
        if key in self.refused:
            return False
        if self.runs >= self.max_runs:
            raise _Budget
        self.runs += 1
        try:
            d = self.run(cand)
        except StepRejected:
            d = None
        if d is None or not same_bug(self.div, d) or len(d.trace.steps) >= len(self.steps):
            self.refused.add(key)
            return False
        self.best, self.steps = d, list(d.trace.steps)
        return True

    def without(self, drop: set[int] | tuple[int, ...]) -> list[Step]:
        return [st for i, st in enumerate(self.steps) if i not in drop]

    def groups(self, partition: Callable[[Sequence[Step]], list[set[int]]]) -> bool:
        """Drop whole groups of ``partition``, recomputed after every removal."""
        changed, again = False, True
        while again:
            again = False
            for drop in partition(self.steps):
                if self.attempt(self.without(drop)):
                    changed = again = True
                    break
        return changed

    def ddmin(self) -> bool:
        """Zeller's ddmin over complements of chunks (down to chunks of one step)."""
        changed = False
        n = 2
        while len(self.steps) >= 2:
            chunk = max(1, len(self.steps) // n)
            for start in range(0, len(self.steps), chunk):
                if self.attempt(self.steps[:start] + self.steps[start + chunk:]):
                    changed = True
                    n = max(n - 1, 2)
                    break
            else:
                if chunk == 1:
                    break
                n = min(len(self.steps), n * 2)
        return changed

    def drops(self) -> Iterator[tuple[int, ...]]:
        """Every single index, then every pair by increasing distance (nearby pairs such as
        ``decide``/``end_iteration`` or suspend/resume first)."""
        n = len(self.steps)
        for i in range(n):
            yield (i,)
        for gap in range(1, n):
            for i in range(n - gap):
                yield (i, i + gap)

    def singles_and_pairs(self) -> bool:
        """Remove single steps and pairs until neither removes anything."""
        changed, again = False, True
        while again:
            again = False
            for drop in self.drops():
                if self.attempt(self.without(drop)):
                    changed = again = True
                    break
        return changed


def shrink(div: Divergence, run: Reproduce, *, max_runs: int = MAX_RUNS) -> Divergence:
    """The smallest divergence of the same bug found from ``div`` (module docstring).

    ``run(steps)`` replays ``steps`` in lockstep and returns the first divergence or None; it
    may raise :class:`StepRejected` for sequences the model does not allow. At most
    ``max_runs`` replays (:data:`MAX_RUNS`). The result has ``shrunk_from`` (the length of
    ``div``) and ``one_minimal`` True when the final single-step and pair pass completed:
    removing any one step or any two steps then no longer shows the same bug.
    """
    s = _Shrinker(div, run, max_runs)
    one_minimal = False
    try:
        while True:
            changed = s.groups(_iterations)
            changed = s.groups(_slots) or changed
            changed = s.ddmin() or changed
            if changed:
                continue
            # the final pass; after a removal the coarse passes get another go (a candidate
            # refused before is not replayed, so a repeat of the final pass costs nothing)
            if not s.singles_and_pairs():
                break
        one_minimal = True
    except _Budget:
        pass
    best = s.best
    best.shrunk_from = len(div.trace.steps)
    best.one_minimal = one_minimal
    return best
