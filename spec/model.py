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
from .eviction import victim_caps, victim_choices, victim_slots
from .invariants import PROPERTIES, Property
from .ops import ConcreteOps, Term
from .registry import Action, Ctx, Outcome
from .state import State, initial_state

ATOMIC_FIELDS = ("capacity", "history", "committed", "pos", "draft_record")


def transition(c: Ctx, action: Action, s: State, r: int, args: Mapping[str, Term]) -> Outcome:
    """Apply ``action``'s effect (guard not checked) and the INV-ATOMIC ghost check (which
    has nothing to add, and is skipped, when the action concretely returned True)."""
    out = action.effect(c, s, r, **args)
    if not action.atomic_on_false or (out.result is True and isinstance(out.state.v_atomic, bool)):
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
        self._victim_slots = victim_slots(self.ctx, self.initial())
        self._zeros = (0,) * self._victim_slots
        self.no_victims = self._zeros
        """The ``demote`` vector of an evicting step that demotes nothing."""

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

    def check_args(self, s: State, name: str, r: int, args: Mapping[str, Any], *,
                   fill: bool = True) -> dict[str, Any]:
        """``args`` of ``name`` on slot ``r`` checked: the slot in range, exactly the
        action's parameters, a ``demote`` of the right shape. An evicting action may omit
        ``demote``; with ``fill`` it is filled in when the state admits exactly one victim
        vector (no eviction needed: all zeros), else this names the choices.

        Raises:
            InvalidArgument: naming the action, the value and what is expected.
        """
        a = self.action(name)
        if a.per_request and not (0 <= r < self.config.num_requests):
            raise InvalidArgument(
                f"{a.name}: request slot r={r} outside 0..{self.config.num_requests - 1}")
        out = dict(args)
        names = {p.name for p in a.params}
        given = set(out) | ({"demote"} if a.demand is not None else set())
        if given != names:
            raise InvalidArgument(
                f"{a.name}: parameters {sorted(out)} given, {sorted(names)} expected")
        if "demote" in out:
            out["demote"] = self._victims_shape(a, out["demote"])
        elif a.demand is not None and fill:
            choices = self.victim_options(s, a, r, out)
            if not choices:
                raise InvalidArgument(
                    f"{a.name}(r={r}) is not enabled in this state (stage {s.stage})")
            if len(choices) != 1:
                raise InvalidArgument(
                    f"{a.name}(r={r}): this step evicts implicitly and the victims are a"
                    f" choice; give demote=, one of {choices[:4]}"
                    f"{' ...' if len(choices) > 4 else ''}")
            out["demote"] = choices[0]
        return out

    def _victims_shape(self, a: Action, v: Any) -> tuple[int, ...]:
        n = self._victim_slots
        if isinstance(v, list):
            v = tuple(v)
        if (not isinstance(v, tuple) or len(v) != n
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
            raise InvalidArgument(
                f"{a.name}: demote={v!r} must be a tuple of {n} page counts, one per request"
                " slot" + (" and one for the requests outside the model (abstract trace)"
                           if self.ctx.abstract_rest else ""))
        return v

    def victim_options(self, s: State, a: Action, r: int,
                       fixed: Mapping[str, Any] | None = None, *,
                       holds: bool = False) -> list[tuple[int, ...]]:
        """The admissible ``demote`` vectors of evicting action ``a`` on slot ``r`` with the
        other arguments ``fixed`` (none when its precondition is false, or it does not
        evict). ``holds``: the caller knows the precondition holds (it is not called).
        Cost: a precondition, one demand, O(choices)."""
        pre, c = a.precondition, self.ctx
        if a.demand is None or pre is None or not (holds or pre(c, s, r, **(fixed or {}))):
            return []
        total = int(a.demand(c, s, r))
        if total == 0:
            return [self._zeros]
        return victim_choices([int(x) for x in victim_caps(c, s, r)], total)

    def arguments(self, s: State, a: Action, r: int, *, holds: bool = False
                  ) -> list[dict[str, Any]]:
        """The argument assignments generators try for ``a`` on slot ``r`` in ``s``: the
        fixed tuples (guards not checked), and for an action that evicts, every admissible
        ``demote`` vector when its precondition holds, else none (so every assignment
        returned for an evicting action is enabled). ``holds``: the caller knows the
        precondition holds for every fixed tuple. Cost: O(1) for actions that do not
        evict; for those that do, a precondition, one demand evaluation and O(choices)."""
        fixed = self._arg_tuples[a.name]
        if a.demand is None:
            return fixed
        return [{**args, "demote": v} for args in fixed
                for v in self.victim_options(s, a, r, args, holds=holds)]

    def enabled_args(self, s: State, a: Action, r: int) -> list[dict[str, Any]]:
        """Every enabled argument assignment of ``a`` on slot ``r`` in ``s`` (the fixed
        tuples filtered by the guard; an evicting action's admissible victims)."""
        if a.demand is not None:
            return self.arguments(s, a, r)
        guard, c = a.guard, self.ctx
        return [args for args in self._arg_tuples[a.name] if guard(c, s, r, **args)]

    def enabled(self, s: State, name: str, r: int = 0, **args: Any) -> bool:
        """Whether ``name`` is enabled in ``s`` for slot ``r`` and ``args``; for an evicting
        action given without ``demote``: whether it is for some admissible victims (its
        precondition; no demand is computed). Raises :class:`InvalidArgument` for a bad
        slot, parameter names or ``demote`` shape."""
        a = self.action(name)
        full = self.check_args(s, name, r, args, fill=False)
        if a.demand is not None and "demote" not in full:
            assert a.precondition is not None
            return bool(a.precondition(self.ctx, s, r, **full))
        return bool(a.guard(self.ctx, s, r, **full))

    def step(self, s: State, name: str, r: int = 0, **args: Any) -> Outcome:
        """Apply ``name`` to ``s``. A disabled action raises :class:`InvalidArgument`; an
        action that evicts may omit ``demote`` when only one victim vector is admissible,
        and inadmissible victims are named with the admissible ones."""
        a = self.action(name)
        full = self.check_args(s, name, r, args)
        if not a.guard(self.ctx, s, r, **full):
            fixed = {k: v for k, v in full.items() if k != "demote"}
            options = self.victim_options(s, a, r, fixed)
            if options:
                raise InvalidArgument(
                    f"{a.name}(r={r}): demote={full['demote']} is not an admissible victim"
                    f" choice: {sum(options[0])} page(s) must be demoted, at most"
                    f" {[int(x) for x in victim_caps(self.ctx, s, r)]} per slot; admissible:"
                    f" {options[:4]}{' ...' if len(options) > 4 else ''}")
            raise InvalidArgument(
                f"{a.name}(r={r}, {full}) is not enabled in this state (stage {s.stage})")
        return transition(self.ctx, a, s, r, full)

    def violations(self, s: State, properties: tuple[Property, ...] = PROPERTIES
                   ) -> list[str]:
        """Ids of the properties that ``s`` violates."""
        return [p.id for p in properties if not p.check(self.ctx, s)]

    def enabled_steps(self, s: State) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """Every enabled (action, slot, args) over the config's finite parameter domains and
        the admissible victim vectors (:meth:`arguments`), in registry order (the order BFS
        and action-index paths rely on)."""
        for a in self.actions:
            for r in a.slots(self.config):
                for args in self.enabled_args(s, a, r):
                    yield a.name, r, args
