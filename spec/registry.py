"""Declaring actions once: a registry of guard + effect pairs with typed parameters.

Decorators only record frozen descriptors; :class:`ActionRegistry` collects them. The hypothesis
rules (:mod:`.machine`), the z3 transition relation (:mod:`.prove`), the walker and the trace
schema (:mod:`.trace`) are all generated from the one registry in :mod:`.actions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvalidDefinition
from kvspec.policy import Policy

from .eviction import victims_fit
from .ops import Ops, Term

if TYPE_CHECKING:
    from .state import State


@dataclass(frozen=True)
class Ctx:
    """What a guard or an effect may read besides the state: the ops, the policy, the config.

    ``abstract_rest`` turns on the one-request-versus-the-rest abstraction used by the proofs.
    """

    o: Ops
    policy: Policy
    config: Config
    abstract_rest: bool = False


@dataclass(frozen=True)
class Param:
    """An action parameter: integer (``lo <= x``; generators draw up to ``hi(config)``), bool,
    or ``slots``: a tuple of page counts, one per request slot (the victims of implicit
    eviction, :mod:`.eviction`), whose admissible values depend on the state and which
    generators take from :meth:`kvspec.spec.model.Model.arguments`."""

    name: str
    kind: str = "int"  # "int" | "bool" | "slots"
    lo: int = 0
    hi: Callable[[Config], int] | None = None

    def domain(self, config: Config) -> range | tuple[bool, ...]:
        """The finite values generators draw from (``slots`` parameters have none: their
        values depend on the state)."""
        if self.kind == "slots":
            return ()
        if self.kind == "bool":
            return (False, True)
        hi = self.hi(config) if self.hi is not None else self.lo
        return range(self.lo, hi + 1)


class Outcome(NamedTuple):
    """What an effect produces: the next state and the action's return value (or None)."""

    state: State
    result: Term = None


Guard = Callable[..., Term]
Effect = Callable[..., Outcome]
Demand = Callable[["Ctx", "State", int], Term]
"""``demand(c, s, r)``: the GPU pages an action must demote to make room (0 when it fails)."""


@dataclass(frozen=True)
class Action:
    """One protocol action: its TensorRT-LLM name, parameters, guard and effect.

    ``per_request`` actions take the request slot ``r`` first. ``atomic_on_false`` marks actions
    whose False return means failure, so INV-ATOMIC applies to them. ``demand`` is set on
    actions that may evict implicitly: their ``demote`` parameter must fit it; their
    ``guard`` is then ``precondition`` (the declared guard) plus that fit.
    """

    name: str
    params: tuple[Param, ...]
    per_request: bool
    guard: Guard
    effect: Effect
    returns: bool
    atomic_on_false: bool
    doc: str
    demand: Demand | None = None
    precondition: Guard | None = None  # the guard without the victims (evicting actions)

    def argument_tuples(self, config: Config) -> list[dict[str, Any]]:
        """Every assignment of the parameters with finite domains (``slots`` parameters
        excluded: :meth:`kvspec.spec.model.Model.arguments` adds them per state), in a fixed
        order (the order enumeration, BFS and action-index paths rely on)."""
        out: list[dict[str, Any]] = [{}]
        for p in self.params:
            if p.kind == "slots":
                continue
            out = [{**c, p.name: v} for c in out for v in p.domain(config)]
        return out

    def slots(self, config: Config) -> range:
        """The request slots this action takes: every slot, or just 0 for global actions."""
        return range(config.num_requests) if self.per_request else range(1)


def _evicting(precondition: Guard, demand: Demand) -> Guard:
    """The guard of an action that evicts: ``precondition`` and victims that fit ``demand``
    (:func:`~kvspec.spec.eviction.victims_fit`); concretely the victims are not looked at
    when the precondition is false."""

    def guard(c: Ctx, s: State, r: int, demote: Any, **args: Any) -> Term:
        pre = precondition(c, s, r, **args)
        if pre is False:
            return False
        return c.o.and_(pre, victims_fit(c, s, r, demote, demand(c, s, r)))

    guard.__name__ = getattr(precondition, "__name__", "guard")
    return guard


class ActionRegistry:
    """Collects :class:`Action` descriptors in declaration order (the order is part of traces)."""

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}

    def action(self, *, guard: Guard, params: tuple[Param, ...] = (), per_request: bool = True,
               returns: bool = False, atomic_on_false: bool = False,
               demand: Demand | None = None) -> Callable[[Effect], Effect]:
        """Register the decorated effect under its function name with ``guard`` (and, for
        an action that evicts, ``demand``: the guard then also admits the victims)."""

        def record(effect: Effect) -> Effect:
            name = effect.__name__
            if name in self._actions:
                raise InvalidDefinition(f"action {name!r} is declared twice; names are unique")
            if not callable(guard):
                raise InvalidDefinition(f"action {name!r}: guard {guard!r} is not callable")
            slot_params = [p for p in params if p.kind == "slots"]
            if (demand is None) != (not slot_params) or len(slot_params) > 1:
                raise InvalidDefinition(
                    f"action {name!r}: an action that evicts declares one 'slots' parameter"
                    " and its demand together")
            seen = {p.name for p in params}
            if len(seen) != len(params) or "r" in seen:
                raise InvalidDefinition(
                    f"action {name!r}: parameter names {[p.name for p in params]} must be unique "
                    "and must not be 'r' (the request slot)")
            self._actions[name] = Action(
                name=name, params=params, per_request=per_request,
                guard=guard if demand is None else _evicting(guard, demand), effect=effect,
                returns=returns, atomic_on_false=atomic_on_false,
                doc=(effect.__doc__ or "").strip(), demand=demand,
                precondition=None if demand is None else guard)
            return effect

        return record

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(self._actions.values())

    def get(self, name: str) -> Action:
        """The action called ``name``; unknown names raise with the list of known ones."""
        try:
            return self._actions[name]
        except KeyError:
            raise InvalidArgument(
                f"unknown action {name!r}; known: {', '.join(self._actions)}") from None

    def schema(self) -> dict[str, dict[str, Any]]:
        """The trace schema: per action, its parameters (with kinds) and whether it returns."""
        return {
            a.name: {
                "per_request": a.per_request,
                "params": {p.name: p.kind for p in a.params},
                "returns": a.returns,
            }
            for a in self.actions
        }
