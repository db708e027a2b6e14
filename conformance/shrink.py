"""Delta debugging over a failing step list: drop steps while the divergence persists.

A candidate is kept only when it still replays on the model (every guard holds) and still
diverges at the same action with overlapping kinds of difference, so the shrunk sequence is a
real behaviour showing the same bug. Cost: O(n^2) lockstep replays in the worst case (n = the
steps up to the divergence; walks are short, so shrinking takes milliseconds to a second).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvspec.spec.trace import Step

from .lockstep import StepRejected
from .report import Divergence

Reproduce = Callable[[Sequence[Step]], Divergence | None]


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


def shrink(div: Divergence, run: Reproduce, *, max_runs: int = 2000) -> Divergence:
    """The smallest divergence found by ddmin plus a one-step-removal pass.

    ``run(steps)`` replays ``steps`` in lockstep and returns the first divergence or None; it
    may raise :class:`StepRejected` for sequences the model does not allow.
    """
    original = len(div.trace.steps)
    best = div
    runs = 0

    def attempt(steps: Sequence[Step]) -> Divergence | None:
        nonlocal runs
        runs += 1
        try:
            d = run(steps)
        except StepRejected:
            return None
        return d if d is not None and same_bug(div, d) else None

    steps = list(best.trace.steps)
    # coarse passes first: whole iterations, then every step of one slot
    for group in (_iterations(steps), _slots(steps)):
        for drop in group:
            cand = [st for i, st in enumerate(steps) if i not in drop]
            d = attempt(cand) if drop and len(cand) < len(steps) else None
            if d is not None:
                best, steps = d, list(d.trace.steps)
                break
    changed = True
    while changed and runs < max_runs:  # repeat iteration drops to a fixpoint
        changed = False
        for drop in _iterations(steps):
            d = attempt([st for i, st in enumerate(steps) if i not in drop])
            if d is not None:
                best, steps, changed = d, list(d.trace.steps), True
                break
    for drop in _slots(steps):
        d = attempt([st for i, st in enumerate(steps) if i not in drop])
        if d is not None:
            best, steps = d, list(d.trace.steps)
    n = 2
    while len(steps) >= 2 and runs < max_runs:
        chunk = max(1, len(steps) // n)
        reduced = False
        for start in range(0, len(steps), chunk):
            cand = steps[:start] + steps[start + chunk:]
            d = attempt(cand)
            if d is not None:
                best, steps = d, list(d.trace.steps)
                n = max(n - 1, 2)
                reduced = True
                break
            if runs >= max_runs:
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(steps), n * 2)
    i = 0
    while i < len(steps) and runs < max_runs:  # final pass: single steps, to a fixpoint
        d = attempt(steps[:i] + steps[i + 1:])
        if d is not None:
            best, steps = d, list(d.trace.steps)
        else:
            i += 1
    best.shrunk_from = original
    return best
