"""Replay a model trace (a z3 counterexample, a walker or hypothesis trace) on an
implementation, comparing every step, and say whether it shows the same violation."""

from __future__ import annotations

from dataclasses import dataclass

from kvspec.spec.trace import Trace

from .adapter import Factory, resolve_factory
from .lockstep import Lockstep, StepRejected
from .report import Divergence


@dataclass
class ImplReplay:
    """Outcome of :func:`replay_on_impl`.

    ``model_violations[i]`` / ``impl_violations[i]``: ids newly violated at step i + 1 by the
    model (its ghost flags) and shown by the implementation (raised or detected).
    ``same_violation``: the implementation shows every violation at the step the model does
    and the run never diverged.
    """

    trace: Trace
    steps_run: int
    model_violations: list[frozenset[str]]
    impl_violations: list[frozenset[str]]
    divergence: Divergence | None

    @property
    def first_violation_step(self) -> int | None:
        """1-based step at which the model first violates something, or None."""
        for i, v in enumerate(self.model_violations, start=1):
            if v:
                return i
        return None

    @property
    def same_violation(self) -> bool:
        return (self.divergence is None and self.steps_run == len(self.trace)
                and self.model_violations == self.impl_violations)

    def render(self) -> str:
        """One summary line, then the divergence report if any."""
        hits = [f"{', '.join(sorted(v))} at step {i}"
                for i, v in enumerate(self.model_violations, start=1) if v]
        what = "model violates " + "; ".join(hits) if hits else "model violates nothing"
        verdict = ("implementation shows the same violation(s) at the same step(s)"
                   if self.same_violation else "implementation does NOT agree")
        out = f"replay of {len(self.trace)} steps ({self.trace.source}): {what}; {verdict}"
        if self.divergence is not None:
            out += "\n" + self.divergence.render()
        return out


def replay_on_impl(trace: Trace, factory: str | Factory, *, impl_name: str = "") -> ImplReplay:
    """Run ``trace`` through the driver on a fresh manager, in lockstep with the model.

    Cost: one lockstep step per trace step. Raises :class:`StepRejected` (an
    InvalidArgument) when the trace does not replay on the model itself, and
    InvalidArgument for a bad factory.
    """
    fac = resolve_factory(factory)
    name = impl_name or (factory if isinstance(factory, str) else
                         getattr(factory, "__qualname__", "impl"))
    ls = Lockstep(fac, trace.config, trace.policy, impl_name=str(name))
    model_v: list[frozenset[str]] = []
    impl_v: list[frozenset[str]] = []
    div = ls.initial_divergence()
    if div is None:
        for i, st in enumerate(trace.steps, start=1):
            try:
                div = ls.step(st.action, st.r, dict(st.args))
            except StepRejected as exc:
                raise StepRejected(f"trace step {i} ({st.action}) does not replay on the"
                                   f" model: {exc}") from None
            model_now = ls.last_model_violations
            model_v.append(model_now)
            impl_v.append(ls.last_impl_violations if div is None else frozenset())
            if div is not None:
                break
    return ImplReplay(trace, len(model_v), model_v, impl_v, div)
