"""Replay a model trace (a z3 counterexample, a walker or hypothesis trace) on an
implementation, comparing every step, and say whether it shows the same violation."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvspec.errors import InvalidArgument
from kvspec.spec.trace import Trace, policy_summary

from .adapter import Factory, resolve_factory
from .lockstep import Lockstep, StepRejected
from .misuse import MisuseFinding, render_warnings
from .report import Divergence


@dataclass
class ImplReplay:
    """Outcome of :func:`replay_on_impl`.

    ``model_violations[i]`` / ``impl_violations[i]``: ids newly violated at step i + 1 by the
    model (its ghost flags) and shown by the implementation (raised or detected).
    ``same_violation``: the implementation shows every violation at the step the model does
    and the run never diverged. ``impl_name``: the implementation, as given or its factory's
    qualified name. ``warnings``: the first tolerated misuse of each kind
    (:mod:`~kvspec.conformance.misuse`); they do not affect ``same_violation``.
    """

    trace: Trace
    steps_run: int
    model_violations: list[frozenset[str]]
    impl_violations: list[frozenset[str]]
    divergence: Divergence | None
    impl_name: str = ""
    warnings: list[MisuseFinding] = field(default_factory=list)

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

    def render(self, *, context: bool = True) -> str:
        """The report: with ``context``, a line naming the implementation, the trace source,
        the policy and the full config; then one summary line (what the model violates and at
        which step, whether the implementation agrees, how many steps ran), then the
        divergence report if any, then the misuse warnings. ``context=False`` leaves the first
        line out (for a caller that already printed the trace's policy and config)."""
        t = self.trace
        hits = [f"{', '.join(sorted(v))} at step {i}"
                for i, v in enumerate(self.model_violations, start=1) if v]
        what = "model violates " + "; ".join(hits) if hits else "model violates nothing"
        if self.same_violation:
            verdict = ("implementation shows the same violation(s) at the same step(s)" if hits
                       else "implementation agrees at every step")
        elif self.divergence is not None:
            verdict = (f"implementation does NOT agree: it diverged at step {self.steps_run} of "
                       f"{len(t)}")
        else:
            shown = [f"{', '.join(sorted(v))} at step {i}"
                     for i, v in enumerate(self.impl_violations, start=1) if v]
            verdict = ("implementation does NOT agree: it shows "
                       + ("; ".join(shown) if shown else "no violation"))
        name = self.impl_name or "implementation"
        lines = []
        if context:
            source = t.source if t.source.isprintable() else repr(t.source)
            lines.append(f"Implementation {name} on trace {source or '(no source)'}: policy "
                         f"{policy_summary(t.policy)}; config {t.config.describe()}")
        lines.append(f"Implementation {name}: replay of {len(t)} steps: {what}; {verdict}")
        if self.divergence is not None:
            lines.append(self.divergence.render())
        lines.extend(render_warnings(self.warnings))
        return "\n".join(lines)


def replay_on_impl(trace: Trace, factory: str | Factory, *, impl_name: str = "",
                   strict: bool = False) -> ImplReplay:
    """Run ``trace`` through the driver on a fresh manager, in lockstep with the model.
    ``strict``: a tolerated misuse is a divergence (see
    :class:`~kvspec.conformance.lockstep.Lockstep`); replay a divergence that ``run_check``
    found with ``strict=True`` the same way.

    Cost: one lockstep step per trace step. Raises :class:`StepRejected` (an
    InvalidArgument) when the trace does not replay on the model itself (check it first with
    :func:`kvspec.spec.trace.verify_trace`), and InvalidArgument for a bad factory or a trace
    of the proofs' abstraction (``abstract_rest``), which replays on the model only.
    """
    if trace.abstract_rest:
        raise InvalidArgument(
            "this trace uses the proofs' one-request-versus-the-rest abstraction "
            "(abstract_rest: true); it replays on the model only, not on an implementation")
    fac = resolve_factory(factory)
    name = impl_name or (factory if isinstance(factory, str) else
                         getattr(factory, "__qualname__", "impl"))
    ls = Lockstep(fac, trace.config, trace.policy, impl_name=str(name), strict=strict,
                  follow_victims=False)
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
        if div is None:
            div = ls.flush()  # the trace's last batch of forwards
            if div is not None and impl_v:
                impl_v[-1] = ls.last_impl_violations
    return ImplReplay(trace, len(model_v), model_v, impl_v, div, str(name), list(ls.warnings))
