"""Divergence reports: what differed at which step, with the trace that leads there."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvspec.spec.trace import Step, Trace


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
    including the diverging one (replayable on the model with ``kvspec.spec.trace.replay``);
    ``enabled`` lists the calls the model allowed before that step; ``expected``/``actual``
    are the full observations after it, rendered.
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
                 f" {self.action}   (policy {self.trace.policy.name})"]
        if self.shrunk_from is not None:
            lines.append(f"  (shrunk from {self.shrunk_from} steps to {len(self.trace)})")
        lines.append("Steps:")
        for i, st in enumerate(self.trace.steps, start=1):
            res = "" if st.result is None else f" -> {st.result}"
            mark = "   <-- diverges" if i == self.index else ""
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
    """One tier's outcome: steps run, seconds, the (shrunk) divergence if any."""

    tier: str
    steps: int = 0
    seconds: float = 0.0
    runs: int = 0
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0
