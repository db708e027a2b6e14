"""Divergence reports: what differed at which step, with the trace that leads there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvspec.config import Config
from kvspec.spec.coverage import Coverage
from kvspec.spec.trace import Step, Trace

from .misuse import MisuseFinding


def render_config(config: Config) -> str:
    """The config as every report names it (:meth:`kvspec.config.Config.describe`)."""
    return config.describe()


def impl_label(spec: str | Callable[..., Any]) -> str:
    """The name reports use for an implementation: the ``module:factory`` string as given, or
    ``module:qualname`` of a callable."""
    if isinstance(spec, str):
        return spec
    return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', spec)}"


@dataclass(frozen=True)
class FieldDiff:
    """One differing field: ``r0.capacity``, ``gpu_free``, ``result``, ``violations``, ..."""

    name: str
    expected: str
    actual: str

    def render(self) -> str:
        return f"{self.name}: expected {self.expected}, actual {self.actual}"


@dataclass
class Divergence:
    """The first step at which an implementation and the model disagree.

    ``index`` is 1-based (0: the initial states differ); ``trace`` holds the steps up to and
    including the diverging one, each with the model's result and state digest
    (``Trace.save`` it; ``kvspec replay`` or
    :func:`~kvspec.conformance.replay.replay_on_impl` on the same factory reproduces this
    divergence at the same step); ``enabled`` lists the calls the model allowed before that
    step; ``expected``/``actual`` are the full observations after it, rendered (empty slots
    left out). ``impl_result`` is what the implementation did at the diverging step:
    ``-> True``/``-> False``/``-> None`` (a forgotten ``return``), ``raised ExcType: message``,
    or "" for a call without a result. ``shrunk_from``: the length before shrinking (None:
    not shrunk); ``one_minimal`` (set by :func:`~kvspec.conformance.shrink.shrink`): True when
    its final pass completed within its budget, so removing any single step or any pair of
    steps no longer shows the same bug; False when the budget ran out first; None: not
    recorded.
    """

    index: int
    action: str
    diffs: list[FieldDiff]
    trace: Trace
    enabled: tuple[str, ...] = ()
    expected: str = ""
    actual: str = ""
    impl: str = ""
    shrunk_from: int | None = None
    impl_result: str = ""
    one_minimal: bool | None = None

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.trace.steps

    def kinds(self) -> frozenset[str]:
        """The differing field names with the slot prefix removed (``capacity``, ``misuse``)."""
        return frozenset(d.name.split(".", 1)[-1] for d in self.diffs)

    def render(self) -> str:
        """Numbered steps, the diverging step, expected vs actual per field, observations."""
        m = self.trace.model()
        lines = [f"DIVERGENCE{' of ' + self.impl if self.impl else ''} at step {self.index}:"
                 f" {self.action}   (policy {self.trace.policy.name})",
                 f"  config: {render_config(self.trace.config)}"]
        if self.shrunk_from is not None:
            note = {True: ", 1-minimal", None: "",
                    False: ", not certified 1-minimal: shrink budget spent"}[self.one_minimal]
            lines.append(f"  (shrunk from {self.shrunk_from} steps to {len(self.trace)}{note})")
        lines.append("Steps:" if self.trace.steps else "Steps: none (the fresh manager differs)")
        for i, st in enumerate(self.trace.steps, start=1):
            res = "" if st.result is None else f" -> {st.result}"
            mark = ""
            if i == self.index:
                mark = "   <-- diverges"
                got = self.impl_result
                if got and got != res.strip():
                    mark += f" (model: {res.strip() or 'no result'})"
                    res = f" {got}"
            lines.append(f"  {i:>3}. {st.call(m.action(st.action).per_request)}{res}{mark}")
        lines.append("Differences (expected = model, actual = implementation):")
        lines.extend(f"  {d.render()}" for d in self.diffs)
        if self.expected or self.actual:
            lines.append(f"Expected observation: {self.expected}")
            lines.append(f"Actual observation:   {self.actual}")
        if self.enabled:
            lines.append("Model-enabled calls before the step: " + ", ".join(self.enabled))
        return "\n".join(lines)


@dataclass
class TierResult:
    """One tier's outcome: steps and runs done (of ``runs_total``), seconds, the (shrunk)
    divergence if any and the run it came from: ``failed_run`` (1-based), the ``config`` it
    ran under, ``config_index`` into the configs the tier cycled (None: one config) and
    ``run_seed`` (the walker's per-run RNG seed). ``interrupted``: a ``KeyboardInterrupt``
    stopped the tier; everything here is what was done before it. ``warnings``: the first
    tolerated misuse of each kind (:mod:`~kvspec.conformance.misuse`), with its run.
    ``model_violations``: invariant ids the model itself violated during the tier's runs (the
    policy breaks them; the implementation had to show the same violation at the same step,
    so an OK means it matched them). ``coverage``: the model transitions of the tier's runs
    (:class:`~kvspec.spec.coverage.Coverage`: branches, witnesses, configs)."""

    tier: str
    steps: int = 0
    seconds: float = 0.0
    runs: int = 0
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)
    runs_total: int = 0
    interrupted: bool = False
    failed_run: int | None = None
    config: Config | None = None
    config_index: int | None = None
    run_seed: str = ""
    warnings: list[MisuseFinding] = field(default_factory=list)
    model_violations: set[str] = field(default_factory=set)
    coverage: Coverage = field(default_factory=Coverage)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0
