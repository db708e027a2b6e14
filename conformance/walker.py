"""The fast tier: a seeded random walker over the model's enabled actions, no hypothesis.

Each step samples, per (action, slot), one argument tuple (every tuple when the domain is
small), keeps those whose guard holds, picks an action uniformly among the enabled ones and
then one of its (slot, args). An action that evicts is drawn without ``demote``: its victims
are the implementation's choice, which the lockstep reads and checks. Cost: ~25 guard calls
(~0.4 us each) per step plus the lockstep step; far cheaper than enumerating every argument
tuple.

**Swarm testing** (Groce et al., "Swarm testing", ISSTA 2012): a walk may run under a
:class:`Swarm`, drawn per walk from the run's seed, that leaves out a random subset of the
optional actions (:data:`SWARM_OPTIONAL`) and biases the choice of each argument (small
prompts, large drafts, ``wait`` mostly True, ...). Leaving an action out makes the states
that action would undo reachable with far fewer steps: without ``free_resources`` the pools
fill up, without ``resume_request`` suspended caches pile up on the host, without
``try_allocate_generation`` requests turn over quickly. Every walk keeps
:data:`SWARM_ESSENTIAL`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from kvspec.spec.model import Model
from kvspec.spec.registry import Action
from kvspec.spec.state import State
from kvspec.spec.walker import DecidedGuards

SMALL_DOMAIN = 8
"""Argument domains up to this many tuples are enumerated; larger ones are sampled."""

SWARM_ESSENTIAL = frozenset({
    "arrive", "prepare_context", "resize_context", "decide", "forward", "end_iteration",
    "revert_allocate_context", "revert_allocate_generation"})
"""Actions no swarm leaves out: a request's way through the context phase, the iteration
(``decide``, ``forward``, ``end_iteration``), and the two reverts, which ``forward`` and
``end_iteration`` wait for (``reverts_pending``): without them a walk would stop in SETTLE."""

SWARM_OPTIONAL = ("try_allocate_generation", "free_resources", "suspend_request",
                  "resume_request", "evict_to_host")
"""Actions a swarm may leave out, each with probability 1/2. At least one of
``try_allocate_generation`` and ``free_resources`` is kept: without both, generating
requests hold their slots for good and the walk idles after the first few requests.
(``prepare_context`` and ``try_allocate_generation`` resume suspended caches without
``resume_request``; growth and resume evict implicitly without ``evict_to_host``.)"""

SWARM_FULL_SHARE = 0.25
"""Share of walks that run every action with uniform arguments (the plain walker): a swarm
never makes the uniform distribution unreachable."""

BIASES = ("uniform", "low", "high")
"""How a swarm draws a parameter: uniformly, preferring its low values (weight (n - i)^2
for the i-th of n values: small prompts and chunks, no drafts accepted, ``False``), or its
high ones."""


@dataclass(frozen=True)
class Swarm:
    """One walk's swarm configuration: the actions it leaves out and the bias of each
    parameter (``("arrive.prompt_len", "low")``; parameters not named are uniform).
    ``Swarm()`` is the plain walker: every action, uniform arguments."""

    dropped: frozenset[str] = frozenset()
    bias: tuple[tuple[str, str], ...] = ()

    @classmethod
    def draw(cls, model: Model, rng: random.Random) -> Swarm:
        """A swarm for ``model``'s actions drawn with ``rng`` (deterministic for a seeded
        ``rng``): with probability :data:`SWARM_FULL_SHARE` the plain walker, else each of
        :data:`SWARM_OPTIONAL` left out with probability 1/2 and each integer or boolean
        parameter of the kept actions biased low, high or not at all (1/3 each)."""
        if rng.random() < SWARM_FULL_SHARE:
            return cls()
        names = {a.name for a in model.actions}
        dropped = {n for n in SWARM_OPTIONAL if n in names and rng.random() < 0.5}
        if {"try_allocate_generation", "free_resources"} <= dropped:
            dropped.discard(rng.choice(("try_allocate_generation", "free_resources")))
        bias = []
        for a in model.actions:
            if a.name in dropped:
                continue
            for p in a.params:
                if p.kind == "slots":
                    continue
                b = rng.choice(BIASES)
                if b != "uniform":
                    bias.append((f"{a.name}.{p.name}", b))
        return cls(frozenset(dropped), tuple(bias))

    @property
    def full(self) -> bool:
        """Every action, uniform arguments (the plain walker)."""
        return not self.dropped and not self.bias

    def describe(self) -> str:
        """One line: ``without evict_to_host, free_resources; low arrive.prompt_len, high
        forward.accepted`` (``every action, uniform arguments`` for the plain walker)."""
        if self.full:
            return "every action, uniform arguments"
        parts = []
        if self.dropped:
            parts.append("without " + ", ".join(n for n in SWARM_OPTIONAL if n in self.dropped))
        if self.bias:
            parts.append(", ".join(f"{b} {k}" for k, b in self.bias))
        return "; ".join(parts)

    def weights(self, action: str, param: str, size: int) -> list[int] | None:
        """The weights of a parameter's ``size`` domain values (in domain order), or None
        for a uniform draw."""
        key = f"{action}.{param}"
        for k, b in self.bias:
            if k == key:
                w = [(size - i) ** 2 for i in range(size)]
                return w if b == "low" else w[::-1]
        return None


@dataclass
class _Plan:
    action: Action
    index: int  # the action's position in the registry (its row in DecidedGuards' plans)
    slots: range
    combos: list[dict[str, Any]] | None  # every tuple, when small
    names: tuple[str, ...]
    domains: tuple[tuple[Any, ...], ...]
    combo_weights: list[int] | None = None  # per combo, under a biased swarm
    weights: tuple[list[int] | None, ...] = ()  # per parameter, when sampled


class Sampler:
    """Draws one enabled (action, slot, args) of a model state with a seeded RNG.

    ``swarm`` (None: :class:`Swarm()`, every action uniformly) leaves actions out and biases
    arguments; draws then stay deterministic for a seeded ``rng``. ``decided``: guard tables
    (:class:`~kvspec.spec.walker.DecidedGuards`) of a model with the same config and policy,
    shared by the samplers of many walks so that each key is learnt once (None: new ones).
    """

    def __init__(self, model: Model, rng: random.Random, swarm: Swarm | None = None,
                 decided: DecidedGuards | None = None) -> None:
        self.model, self.rng = model, rng
        self.swarm = swarm if swarm is not None else Swarm()
        k = model.config
        self.decided = decided if decided is not None else DecidedGuards(model)
        self.plans: list[_Plan] = []
        for index, a in enumerate(model.actions):
            if a.name in self.swarm.dropped:
                continue
            names = tuple(p.name for p in a.params)
            domains = tuple(tuple(p.domain(k)) for p in a.params)
            size = 1
            for d in domains:
                size *= len(d)
            combos = a.argument_tuples(k) if size <= SMALL_DOMAIN or a.demand else None
            plan = _Plan(a, index, a.slots(k), combos, names, domains)
            weights = tuple(self.swarm.weights(a.name, n, len(d)) if d else None
                            for n, d in zip(names, domains))
            if any(w is not None for w in weights):
                if combos is None:
                    plan.weights = weights
                else:
                    positions = [{v: i for i, v in enumerate(d)} for d in domains]
                    plan.combo_weights = []
                    for args in combos:
                        w = 1
                        for n, ws, ix in zip(names, weights, positions):
                            if ws is not None and n in args:
                                w *= ws[ix[args[n]]]
                        plan.combo_weights.append(w)
            self.plans.append(plan)

    def draw(self, s: State) -> tuple[str, int, dict[str, Any]] | None:
        """An enabled step of ``s`` (an evicting one without its victims) or None when the
        model is stuck (never in practice).

        Guards that the state's small fields decide (:class:`DecidedGuards`) are looked up
        instead of called; the random draws are made as without the tables, so a seed
        draws the same steps. Cost: the undecided guards, for every slot and argument tuple.
        """
        ctx, rng = self.model.ctx, self.rng
        decided = self.decided.guards(s)
        off = self.decided.off
        groups: list[list[tuple[str, int, dict[str, Any]]]] = []
        group_weights: list[list[int] | None] = []
        for p in self.plans:
            values = decided[p.index]
            if values is off[p.index] and p.combos is not None:
                continue                    # disabled on every slot; draws nothing
            guard, name = p.action.guard, p.action.name
            found: list[tuple[str, int, dict[str, Any]]] = []
            found_w: list[int] | None = None
            for r in p.slots:
                value = values[r]
                if p.action.demand is not None:
                    # the victims are the implementation's choice: the lockstep reads them
                    pre = p.action.precondition
                    assert pre is not None and p.combos is not None
                    if value is not False:
                        found.extend((name, r, args) for args in p.combos
                                     if value or pre(ctx, s, r, **args))
                elif p.combos is not None:
                    if value is False:
                        continue
                    cw = p.combo_weights
                    if cw is None:
                        for args in p.combos:
                            if value or guard(ctx, s, r, **args):
                                found.append((name, r, args))
                    else:
                        found_w = [] if found_w is None else found_w
                        for args, w in zip(p.combos, cw):
                            if value or guard(ctx, s, r, **args):
                                found.append((name, r, args))
                                found_w.append(w)
                elif p.weights:
                    args = {n: (rng.choice(d) if w is None else rng.choices(d, w)[0])
                            for n, d, w in zip(p.names, p.domains, p.weights)}
                    if value or (value is None and guard(ctx, s, r, **args)):
                        found.append((name, r, args))
                else:
                    args = {n: rng.choice(d) for n, d in zip(p.names, p.domains)}
                    if value or (value is None and guard(ctx, s, r, **args)):
                        found.append((name, r, args))
            if found:
                groups.append(found)
                group_weights.append(found_w)
        if not groups:
            return None
        i = rng.randrange(len(groups))
        weights = group_weights[i]
        return rng.choice(groups[i]) if weights is None else rng.choices(groups[i], weights)[0]
