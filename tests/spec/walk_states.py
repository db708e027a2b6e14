"""Reachable model states for the spec tests (imported as ``walk_states``: test folders are on
``sys.path`` under pytest's default import mode, as ``tests/budget.py`` is)."""

from __future__ import annotations

import random

from kvspec.spec.model import Model
from kvspec.spec.state import State


def walk_states(m: Model, rng: random.Random, steps: int, *,
                restart_every: int | None = None) -> list[State]:
    """The states of a random walk of ``m`` from its initial state, one per draw that moved.

    Each of the ``steps`` draws picks one enabled step uniformly (``rng.choice`` over
    ``m.enabled_steps``) and keeps its successor. The walk restarts from the initial state
    instead when no step is enabled, and on every ``restart_every``-th draw when given. Cost:
    ``steps`` enumerations of the enabled steps."""
    s, out = m.initial(), []
    for k in range(steps):
        options = list(m.enabled_steps(s))
        if not options or (restart_every is not None and k % restart_every == restart_every - 1):
            s = m.initial()
            continue
        name, r, args = rng.choice(options)
        s = m.step(s, name, r, **args).state
        out.append(s)
    return out
