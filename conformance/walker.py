"""The fast tier: a seeded random walker over the model's enabled actions, no hypothesis.

Each step samples, per (action, slot), one argument tuple (every tuple when the domain is
small), keeps those whose guard holds, picks an action uniformly among the enabled ones and
then one of its (slot, args). An action that evicts is drawn without ``demote``: its victims
are the implementation's choice, which the lockstep reads and checks. Cost: ~25 guard calls
(~0.4 us each) per step plus the lockstep step; far cheaper than enumerating every argument
tuple.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from kvspec.spec.model import Model
from kvspec.spec.registry import Action
from kvspec.spec.state import State

SMALL_DOMAIN = 8
"""Argument domains up to this many tuples are enumerated; larger ones are sampled."""


@dataclass
class _Plan:
    action: Action
    slots: range
    combos: list[dict[str, Any]] | None  # every tuple, when small
    names: tuple[str, ...]
    domains: tuple[tuple[Any, ...], ...]


class Sampler:
    """Draws one enabled (action, slot, args) of a model state with a seeded RNG."""

    def __init__(self, model: Model, rng: random.Random) -> None:
        self.model, self.rng = model, rng
        k = model.config
        self.plans: list[_Plan] = []
        for a in model.actions:
            names = tuple(p.name for p in a.params)
            domains = tuple(tuple(p.domain(k)) for p in a.params)
            size = 1
            for d in domains:
                size *= len(d)
            combos = a.argument_tuples(k) if size <= SMALL_DOMAIN or a.demand else None
            self.plans.append(_Plan(a, a.slots(k), combos, names, domains))

    def draw(self, s: State) -> tuple[str, int, dict[str, Any]] | None:
        """An enabled step of ``s`` (an evicting one without its victims) or None when the
        model is stuck (never in practice)."""
        ctx, rng = self.model.ctx, self.rng
        groups: list[list[tuple[str, int, dict[str, Any]]]] = []
        for p in self.plans:
            guard, name = p.action.guard, p.action.name
            found: list[tuple[str, int, dict[str, Any]]] = []
            for r in p.slots:
                if p.action.demand is not None:
                    # the victims are the implementation's choice: the lockstep reads them
                    pre = p.action.precondition
                    assert pre is not None and p.combos is not None
                    found.extend((name, r, args) for args in p.combos if pre(ctx, s, r, **args))
                elif p.combos is not None:
                    for args in p.combos:
                        if guard(ctx, s, r, **args):
                            found.append((name, r, args))
                else:
                    args = {n: rng.choice(d) for n, d in zip(p.names, p.domains)}
                    if guard(ctx, s, r, **args):
                        found.append((name, r, args))
            if found:
                groups.append(found)
        if not groups:
            return None
        return rng.choice(rng.choice(groups))
