"""The executable model: the action registry bound to a config and a policy.

:func:`transition` is the one place where an action's effect is applied, for both readings; it
adds the INV-ATOMIC ghost check to every action whose False return means failure.
:class:`Model` is the concrete reading used by hypothesis, the walker, BFS and trace replay.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy

from .actions import protocol_actions
from .invariants import PROPERTIES, Property
from .ops import ConcreteOps, Term
from .registry import Action, Ctx, Outcome
from .state import State, initial_state

ATOMIC_FIELDS = ("capacity", "history", "committed", "pos", "draft_record")


def transition(c: Ctx, action: Action, s: State, r: int, args: Mapping[str, Term]) -> Outcome:
    """Apply ``action``'s effect (guard not checked) and the INV-ATOMIC ghost check."""
    out = action.effect(c, s, r, **args)
    if not action.atomic_on_false:
        return out
    o = c.o
    before, after = s.reqs[r], out.state.reqs[r]
    changed = o.or_(*[getattr(before, f) != getattr(after, f) for f in ATOMIC_FIELDS])
    bad = o.and_(o.not_(out.result), changed)
    return Outcome(out.state._replace(v_atomic=o.or_(out.state.v_atomic, bad)), out.result)


def concrete_ctx(config: Config, policy: Policy, abstract_rest: bool = False) -> Ctx:
    """The concrete :class:`Ctx` for ``config`` and ``policy``."""
    u = config.max_util_for_resume
    ops = ConcreteOps(config.tokens_per_block, u.numerator, u.denominator)
    return Ctx(ops, policy, config, abstract_rest)


class Model:
    """The model run on concrete values.

    Cost: a step is a few microseconds per request slot; guards and effects are pure functions
    returning new immutable states, so a model state can be kept, compared and replayed.
    """

    def __init__(self, config: Config, policy: Policy, *, abstract_rest: bool = False) -> None:
        self.config = config
        self.policy = policy
        self.ctx = concrete_ctx(config, policy, abstract_rest)
        self.actions: tuple[Action, ...] = protocol_actions(abstract_rest)
        self._by_name = {a.name: a for a in self.actions}
        self._arg_tuples = {a.name: a.argument_tuples(config) for a in self.actions}

    def initial(self) -> State:
        """The initial state: every slot empty, every page free."""
        k = self.config
        return initial_state(k.num_requests, k.num_gpu_pages, k.num_host_pages,
                             k.max_rewind_len, self.policy.host_tier)

    def action(self, name: str) -> Action:
        """The action called ``name``; unknown names raise :class:`InvalidArgument`."""
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidArgument(
                f"unknown action {name!r}; known: {', '.join(self._by_name)}") from None

    def _check_args(self, a: Action, r: int, args: Mapping[str, Any]) -> None:
        names = {p.name for p in a.params}
        if set(args) != names:
            raise InvalidArgument(
                f"{a.name}: parameters {sorted(args)} given, {sorted(names)} expected")
        if a.per_request and not (0 <= r < self.config.num_requests):
            raise InvalidArgument(
                f"{a.name}: request slot r={r} outside 0..{self.config.num_requests - 1}")

    def enabled(self, s: State, name: str, r: int = 0, **args: Any) -> bool:
        """Whether the guard of ``name`` holds in ``s`` for slot ``r`` and ``args``."""
        a = self.action(name)
        self._check_args(a, r, args)
        return bool(a.guard(self.ctx, s, r, **args))

    def step(self, s: State, name: str, r: int = 0, **args: Any) -> Outcome:
        """Apply ``name`` to ``s``. A disabled action raises :class:`InvalidArgument`."""
        a = self.action(name)
        self._check_args(a, r, args)
        if not a.guard(self.ctx, s, r, **args):
            raise InvalidArgument(
                f"{a.name}(r={r}, {dict(args)}) is not enabled in this state (stage {s.stage})")
        return transition(self.ctx, a, s, r, args)

    def violations(self, s: State, properties: tuple[Property, ...] = PROPERTIES
                   ) -> list[str]:
        """Ids of the properties that ``s`` violates."""
        return [p.id for p in properties if not p.check(self.ctx, s)]

    def enabled_steps(self, s: State) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """Every enabled (action, slot, args) over the config's finite parameter domains, in
        registry order (the order BFS and action-index paths rely on)."""
        for a in self.actions:
            for r in a.slots(self.config):
                for args in self._arg_tuples[a.name]:
                    if a.guard(self.ctx, s, r, **args):
                        yield a.name, r, args
