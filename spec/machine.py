"""hypothesis's view of the model: a RuleBasedStateMachine generated from the action registry.

One rule per action (its precondition: some slot and arguments enable it; the rule draws among
the enabled ones), one ``@invariant`` per property. Each example reports the number of distinct
protocol branches it took (:mod:`~kvspec.spec.coverage`) to ``hypothesis.target``, so the
target phase steers towards examples that reach more of the protocol (coverage guidance). A
failing run raises an error carrying the run as a :class:`~kvspec.spec.trace.Trace`
(``error.kvspec_trace``), so hypothesis's shrunk counterexample is exported in the same format
as z3's and the walker's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st
from hypothesis import target
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvspec.config import Config
from kvspec.policy import Policy, get_policy

from .coverage import branches_taken
from .invariants import PROPERTIES, Property
from .model import Model
from .registry import Action
from .state import State
from .trace import Step, Trace, with_digests


class PropertyViolated(AssertionError):
    """A model run reached a state that violates ``property_id``; carries the run's trace."""

    def __init__(self, property_id: str, trace: Trace) -> None:
        super().__init__(f"{property_id} violated after {len(trace)} steps\n{trace.path()}")
        self.property_id = property_id
        self.kvspec_trace = trace


class ModelDriver:
    """Drive the model by method calls, one per action: the form traces render into.

    ``ModelDriver(policy="pr14849").resize_context(r=0)``; a disabled action raises
    InvalidArgument; :meth:`check_invariants` raises :class:`PropertyViolated`.
    """

    def __init__(self, policy: str | Policy = "pr13805-reviewed",
                 config: Config | dict[str, Any] | None = None,
                 properties: Sequence[Property] = PROPERTIES) -> None:
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.config = (Config(**config) if isinstance(config, dict)
                       else config if config is not None else Config())
        self.model = Model(self.config, self.policy)
        self.state: State = self.model.initial()
        self.steps: list[Step] = []
        self.properties = tuple(properties)

    def apply(self, name: str, r: int = 0, **args: Any) -> Any:
        """Apply one action and record it; returns the action's result."""
        self.state, result = self.model.step(self.state, name, r, **args)
        self.steps.append(Step(name, r, dict(args), None if result is None else bool(result)))
        return result

    def trace(self, violated: Sequence[str] = (), source: str = "driver") -> Trace:
        """The actions applied so far as a trace."""
        return Trace(self.policy, self.config, tuple(self.steps), tuple(violated), source)

    def check_invariants(self) -> None:
        """Raise :class:`PropertyViolated` for the first violated property."""
        bad = self.model.violations(self.state, self.properties)
        if bad:
            raise PropertyViolated(bad[0], with_digests(self.trace(bad, "driver")))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or name in ("model", "state"):
            raise AttributeError(name)
        self.model.action(name)  # raises InvalidArgument for unknown names
        return lambda r=0, **args: self.apply(name, r, **args)


TARGET = "protocol branches reached"
"""The ``hypothesis.target`` label of the model machine: distinct branches an example took."""


def make_state_machine(config: Config, policy: Policy,
                       properties: Sequence[Property] = PROPERTIES,
                       source: str = "hypothesis") -> type[RuleBasedStateMachine]:
    """A RuleBasedStateMachine class for ``policy`` checking ``properties``."""
    model = Model(config, policy)

    def init(self: Any) -> None:
        RuleBasedStateMachine.__init__(self)
        self.driver = ModelDriver(policy, config, properties)
        self.branches = set()

    def teardown(self: Any) -> None:
        target(float(len(self.branches)), label=TARGET)

    body: dict[str, Any] = {"__init__": init, "teardown": teardown}
    for a in model.actions:
        body[a.name] = _rule_for(model, a)
    for p in properties:
        body[f"inv_{p.name}"] = _invariant_for(p, source)
    return type(f"KVSpecMachine_{policy.name.replace('-', '_')}", (RuleBasedStateMachine,), body)


def _enabled_now(self: Any, model: Model, a: Action) -> list[tuple[int, dict[str, Any]]]:
    """The enabled (slot, args) of ``a`` in the machine's current state, computed once per
    state for all actions (every rule's precondition asks)."""
    state = self.driver.state
    cached = getattr(self, "_enabled_cache", None)
    if cached is None or cached[0] is not state:
        table: dict[str, list[tuple[int, dict[str, Any]]]] = {x.name: [] for x in model.actions}
        for name, r, args in model.enabled_steps(state):
            table[name].append((r, args))
        cached = (state, table)
        self._enabled_cache = cached
    return cached[1][a.name]


def _rule_for(model: Model, a: Action) -> Any:
    def has_enabled(self: Any) -> bool:
        return bool(_enabled_now(self, model, a))

    @precondition(has_enabled)
    @rule(data=st.data())
    def step(self: Any, data: st.DataObject) -> None:
        choices = _enabled_now(self, model, a)
        r, args = data.draw(st.sampled_from(choices), label=a.name)
        before = self.driver.state
        result = self.driver.apply(a.name, r, **args)
        self.branches.update(branches_taken(a.name, r, before, self.driver.state,
                                            None if result is None else bool(result)))

    step.__name__ = a.name
    return step


def _invariant_for(p: Property, source: str) -> Any:
    @invariant()
    def check(self: Any) -> None:
        if not p.check(self.driver.model.ctx, self.driver.state):
            raise PropertyViolated(p.id, with_digests(self.driver.trace((p.id,), source)))

    check.__name__ = f"inv_{p.name}"
    return check


def find_counterexample(config: Config, policy: Policy, prop: Property, *,
                        max_examples: int = 2_000, step_count: int = 30,
                        seed: int | None = 0, shrink: bool = True) -> Trace | None:
    """hypothesis's shrunk counterexample to ``prop`` under ``policy``, or None if not found.

    ``shrink=False``: the first failing example as generated (hypothesis's shrinker replays
    the machine hundreds of times, tens of seconds here; :func:`~kvspec.spec.walker.
    shrink_trace` shrinks a model trace in a fraction of that).

    Uses a machine checking only ``prop`` so shrinking targets that property. The example
    database is off; ``seed`` seeds hypothesis's random source (None: derandomized), so the
    result depends only on the arguments. Cost: up to ``max_examples`` x ``step_count`` steps
    at a few thousand steps per second, plus shrinking.
    """
    import random

    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    machine = make_state_machine(config, policy, (prop,))
    # no explain phase: it re-runs the shrunk example hundreds of times to annotate a report
    # that is never shown (it took 2/3 of a 190 s search in the catalogue)
    cfg = settings(max_examples=max_examples, stateful_step_count=step_count, database=None,
                   phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target)
                   + ((Phase.shrink,) if shrink else ()),
                   deadline=None, derandomize=seed is None, report_multiple_bugs=False,
                   suppress_health_check=list(HealthCheck), print_blob=False)
    saved = random.getstate()
    try:
        if seed is not None:
            random.seed(seed)  # hypothesis draws its per-run seed from the global generator
        run_state_machine_as_test(machine, settings=cfg)
    except PropertyViolated as exc:
        return exc.kvspec_trace
    finally:
        random.setstate(saved)
    return None
