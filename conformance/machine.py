"""The hypothesis tier: a RuleBasedStateMachine generated from the model's action registry.

One rule per action; its precondition is "some (slot, args) of this action is enabled"; the
rule draws among the enabled (slot, args) and steps model and implementation in lockstep; the
invariant re-runs the structural checks. A divergence raises :class:`DivergenceFound` carrying
the :class:`~kvspec.conformance.report.Divergence`; hypothesis then shrinks the sequence.

Given several configs, an ``initialize`` rule draws the example's config first (hypothesis
shrinks towards the first one). Each example reports its pool pressure to hypothesis's
``target()`` (:data:`TARGETS`) at its end, so the target phase steers towards examples where
growths and resumes have to evict.
Cost: ~100x a walker step (hypothesis bookkeeping and full argument enumeration).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from hypothesis import strategies as st
from hypothesis import target
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kvspec.config import Config
from kvspec.errors import ConformanceError
from kvspec.policy import Policy
from kvspec.spec.coverage import Coverage
from kvspec.spec.model import Model
from kvspec.spec.state import State

from .adapter import Factory
from .lockstep import Lockstep
from .misuse import MisuseFinding
from .report import Divergence

TARGETS = ("implicit evictions",)
"""The ``target()`` label: the example's count of steps other than ``evict_to_host`` after
which another slot holds more host pages (a growth or a resume was short of free GPU pages
and made room by demoting a suspended cache: the pressure states random walks rarely reach).
Measured against two more scores (the example's peak share of GPU pages in use, and of
SUSPENDED caches on the host): the peak share saturates at 1 on the one-page configs and
drew hypothesis's optimiser there, finding fewer bugs than no target at all; this count alone
found as many or more (docs/performance.md, "Checker strength")."""


MEMO_STATES = 50_000
"""States whose enabled choices one machine class keeps per config (the memo is emptied when
full): ~8,000 new states per 200 examples of 40 steps."""


class Choices(NamedTuple):
    """One action's enabled ``(slot, args)`` in one model state, and the strategy drawing one
    of them (None when there is none: the rule's precondition is false)."""

    options: list[tuple[int, dict[str, Any]]]
    strategy: st.SearchStrategy[tuple[int, dict[str, Any]]] | None


class DivergenceFound(ConformanceError):
    """Raised inside the state machine; ``divergence`` holds the report."""

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.render())
        self.divergence = divergence


def make_machine(factory: Factory, config: Config | Sequence[Config], policy: Policy, *,
                 impl_name: str = "", probe_misuse: bool = True,
                 on_example_end: Callable[[], None] | None = None,
                 before_step: Callable[[], None] | None = None, strict: bool = False,
                 warnings: list[MisuseFinding] | None = None, targets: bool = True,
                 coverage: Coverage | None = None, model_violations: set[str] | None = None
                 ) -> type[RuleBasedStateMachine]:
    """A state machine class checking ``factory``'s manager against the model under
    ``policy``; run it with ``run_state_machine_as_test`` (or ``.TestCase`` in pytest).

    ``config``: one config, or several: an ``initialize`` rule then draws each example's
    config (``self.config``; ``self.config_index`` its index). ``cls.steps_run[0]`` counts
    the lockstep steps of all examples; ``on_example_end()`` is called from ``teardown`` after
    each example (hypothesis's replays included) and ``before_step()`` before each rule
    (``run_check`` raises a pending interrupt there). ``strict``: see
    :class:`~kvspec.conformance.lockstep.Lockstep`; ``warnings``, when given, receives each
    example's misuse warnings at its teardown. ``targets``: report the pool pressure
    (:data:`TARGETS`) to ``hypothesis.target`` at each example's end (hypothesis's target
    phase, when the settings include it, then steers towards it). ``coverage``: every
    lockstep transition is counted into it (replays included); ``model_violations``:
    receives each example's model violations (the policy's own) at its teardown.

    A rule's enabled ``(slot, args)`` (its precondition, and what it draws from) are computed
    once per model state and kept for the class's later examples (``cls._memos``, one dict
    per config, emptied at :data:`MEMO_STATES` states): the examples revisit states, and every
    step asks each rule's precondition, i.e. enumerates its argument tuples. The lists are
    those a fresh enumeration gives, in the same order, so a seed draws the same examples."""
    configs = (config,) if isinstance(config, Config) else tuple(config)
    if not configs:
        raise ValueError("make_machine: no config given")
    models = [Model(c, policy) for c in configs]

    def start(self: Any, index: int) -> None:
        k = configs[index]
        self.config, self.config_index, self.model = k, index, models[index]
        self.lock = Lockstep(factory, k, policy, impl_name=impl_name, model=models[index],
                             check_structure=False, probe_misuse=probe_misuse,
                             strict=strict, coverage=coverage)
        self._evictions = 0
        div = self.lock.initial_divergence()
        if div is not None:
            raise DivergenceFound(div)

    # per config: model state -> action name -> its enabled (slot, args) and the strategy
    # drawing one of them; shared by the examples of this class (they revisit states)
    memos: list[dict[State, dict[str, Choices]]] = [{} for _ in configs]

    def init(self: Any) -> None:
        RuleBasedStateMachine.__init__(self)
        self.lock = None
        self._cache_key = None
        self._cache = {}
        if len(configs) == 1:
            start(self, 0)

    def choose_config(self: Any, index: int) -> None:
        start(self, index)

    def choices(self: Any, name: str) -> Choices:
        s = self.lock.state
        if self._cache_key is not s:
            memo = memos[self.config_index]
            found = memo.get(s)
            if found is None:
                if len(memo) >= MEMO_STATES:
                    memo.clear()
                found = memo[s] = {}
            self._cache_key, self._cache = s, found
        got = self._cache.get(name)
        if got is None:
            model = self.model
            a = model.action(name)
            slots = range(self.config.num_requests) if a.per_request else range(1)
            if a.demand is None:
                opts = [(r, args) for r in slots for args in model.enabled_args(s, a, r)]
            else:  # the victims are the implementation's choice: the lockstep reads them
                opts = [(r, args) for r in slots for args in a.argument_tuples(self.config)
                        if model.enabled(s, name, r, **args)]
            got = self._cache[name] = Choices(opts, st.sampled_from(opts) if opts else None)
        return got

    def enabled(self: Any, name: str) -> list[tuple[int, dict[str, Any]]]:
        return choices(self, name).options

    def make_rule(name: str) -> Any:
        @precondition(lambda self: bool(self._enabled(name)))
        @rule(data=st.data())
        def step(self: Any, data: st.DataObject) -> None:
            if before_step is not None:
                before_step()
            strategy = choices(self, name).strategy
            assert strategy is not None  # the precondition holds: some choice is enabled
            r, args = data.draw(strategy, label=name)
            type(self).steps_run[0] += 1
            before = self.lock.state
            div = self.lock.step(name, r, dict(args))
            if div is not None:
                raise DivergenceFound(div)
            if targets and name != "evict_to_host" and any(
                    q.host_pages > p.host_pages for i, (p, q)
                    in enumerate(zip(before.reqs, self.lock.state.reqs)) if i != r):
                self._evictions += 1
        step.__name__ = name
        return step

    def check_structure(self: Any) -> None:
        # a pending batch of forwards stays pending: it goes out at the next other step
        div = self.lock.final_check(flush=False)  # an observation that raises is a finding
        if div is not None:
            raise DivergenceFound(div)

    def teardown(self: Any) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            div = lock.flush()  # the example's last batch of forwards
            if div is not None:
                raise DivergenceFound(div)
        if warnings is not None and lock is not None:
            warnings.extend(lock.warnings)
        if model_violations is not None and lock is not None:
            model_violations.update(lock.violated)
        if targets and lock is not None:
            target(float(self._evictions), label=TARGETS[0])
        if on_example_end is not None:
            on_example_end()

    body: dict[str, Any] = {"__init__": init, "steps_run": [0], "_enabled": enabled,
                            "_memos": memos,
                            "check_structure": invariant()(check_structure),
                            "teardown": teardown, "configs": configs}
    if len(configs) > 1:
        body["choose_config"] = initialize(
            index=st.integers(0, len(configs) - 1))(choose_config)
    for a in models[0].actions:
        body[a.name] = make_rule(a.name)
    return type(f"Conformance_{policy.name.replace('-', '_')}", (RuleBasedStateMachine,), body)
