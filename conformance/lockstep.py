"""Model and implementation in lockstep: compare after every step.

Compared per step: the return value, every observed field of every slot, the free page
counts, the structural checks of :func:`~kvspec.conformance.driver.structure`, the misuse
probes of the driver, and "the same violation": the set of invariant ids the model's ghost
flags newly set at this step against the ids the implementation raised
(:class:`~kvspec.errors.InvariantViolation`, state unchanged) or
:func:`~kvspec.conformance.detect.observe_step` detected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy
from kvspec.spec.model import Model
from kvspec.spec.registry import Outcome
from kvspec.spec.state import State
from kvspec.spec.trace import Step, Trace, with_digests

from .adapter import Factory, make_manager
from .detect import FLAG_IDS, observe_step
from .driver import OBS_FIELDS, Driver, Observation, abstract, structure
from .driver import F as _F
from .misuse import EXPECTED as _MISUSE_EXPECTED
from .misuse import MisuseFinding
from .report import Divergence, FieldDiff

_FLAGS = tuple(FLAG_IDS)
_CLEAR = {f: False for f in _FLAGS}
_get_obs = attrgetter(*OBS_FIELDS)
_get_flags = attrgetter(*_FLAGS)
_NEVER = _F["never_resumed"]


class StepRejected(InvalidArgument):
    """The model does not allow a step (its guard is false): the sequence is not a behaviour."""


def model_observation(s: State, mask_never_resumed: bool = False) -> Observation:
    """The model state's observable fields in the driver's :data:`Observation` layout."""
    slots = tuple(_get_obs(q) for q in s.reqs)
    if mask_never_resumed:
        slots = tuple(q[:_NEVER] + (-2,) + q[_NEVER + 1:] for q in slots)
    return slots, s.gpu_free, s.host_free


_EMPTY_ZERO = tuple(_F[f] for f in ("phase", "pos", "has_cache", "host_pages", "capacity",
                                     "history", "committed"))
_EMPTY_NONE = (_F["snapshot"], _F["draft_record"])


def is_empty_slot(q: tuple[Any, ...]) -> bool:
    """A slot without a request and without a cache (``DONE``, no cache, nothing recorded)."""
    return not any(q[i] for i in _EMPTY_ZERO) and all(q[i] == -1 for i in _EMPTY_NONE)


def render_observation(obs: Observation) -> str:
    """``r0{phase=CONTEXT pos=0 ...} gpu_free=4 host_free=4`` (fields as the model names);
    empty slots (:func:`is_empty_slot`) are left out, ``(no requests)`` when all are."""
    parts = []
    for r, q in enumerate(obs[0]):
        if is_empty_slot(q):
            continue
        parts.append(f"r{r}{{" + " ".join(f"{n}={_show(n, v)}" for n, v in zip(OBS_FIELDS, q))
                     + "}")
    return (" ".join(parts) or "(no requests)") + f" gpu_free={obs[1]} host_free={obs[2]}"


def _show(name: str, v: Any) -> str:
    if name in ("snapshot", "draft_record") and v == -1:
        return "None"
    if name == "phase":
        return ("DONE", "CONTEXT", "GENERATION")[v] if v in (0, 1, 2) else str(v)
    if name == "status":
        return ("ACTIVE", "SUSPENDED")[v] if v in (0, 1) else str(v)
    if isinstance(v, bool) or name in ("has_cache", "never_resumed"):
        return "n/a" if v == -2 else str(bool(v))
    return str(v)


class Lockstep:
    """One model and one implementation instance advanced together.

    Cost per step: one model step (~10 us), one or two manager calls, one observation
    (~10 manager calls per slot) and, with ``check_structure``, O(pages) structural checks.

    Args:
        factory: ``factory(config, policy) -> manager``.
        config, policy: shared by both sides.
        check_structure: run :func:`structure` after every step (else only at the end).
        probe_misuse: see :class:`~kvspec.conformance.driver.Driver`.
        impl_name: used in reports.
        follow_victims: for an action that evicts, step the model with the victims the
            implementation chose when the model admits them (checks and explore); False
            (trace replay): the step's recorded ``demote`` must be what the implementation
            chose, else a ``victims`` difference.
        strict: a tolerated misuse (a probe :mod:`~kvspec.conformance.misuse` reports as a
            warning) is a divergence; without it the first warning of each kind is kept in
            ``warnings`` and the run goes on. A misuse that changed the state is a divergence
            either way.

    Raises:
        InvalidArgument: the factory's manager lacks the adapter API.
    """

    def __init__(self, factory: Factory, config: Config, policy: Policy, *,
                 check_structure: bool = True, probe_misuse: bool = True,
                 impl_name: str = "", model: Model | None = None, strict: bool = False,
                 follow_victims: bool = True) -> None:
        self.config, self.policy, self.impl_name = config, policy, impl_name
        self.model = model if model is not None else Model(config, policy)
        self.state = self.model.initial()
        self.driver = Driver(make_manager(factory, config, policy), config, policy,
                             probe_misuse=probe_misuse)
        self.check_structure = check_structure
        self._mask = not self.driver._never_resumed
        self._init_error: BaseException | None = None
        try:
            self.obs = abstract(self.driver)
        except Exception as exc:  # noqa: BLE001 - reported by initial_divergence
            self._init_error = exc
            self.obs = model_observation(self.state, self._mask)
        self.steps: list[Step] = []
        self.violated: list[str] = []
        self.last_model_violations: frozenset[str] = frozenset()
        self.last_impl_violations: frozenset[str] = frozenset()
        self.strict = strict
        self.follow_victims = follow_victims
        self.warnings: list[MisuseFinding] = []
        """The first tolerated misuse of each kind, stamped with its step, in order found."""

    def initial_divergence(self) -> Divergence | None:
        """A divergence at step 0 if the fresh manager does not look like the initial state."""
        exp = model_observation(self.state, self._mask)
        if self._init_error is not None:
            return self._divergence(0, "initial state", [_raised(self._init_error)], exp,
                                    self.state, impl_result=_raised_text(self._init_error))
        try:
            msgs = structure(self.driver)
        except Exception as exc:  # noqa: BLE001 - an observation that raises is a finding
            return self._divergence(0, "initial state", [_raised(exc)], exp, self.state,
                                    self.obs, impl_result=_raised_text(exc))
        diffs = _diff_obs(exp, self.obs) + [FieldDiff("structure", "[]", m) for m in msgs]
        return self._divergence(0, "initial state", diffs, exp, self.state, self.obs) \
            if diffs else None

    def step(self, name: str, r: int = 0, args: dict[str, Any] | None = None
             ) -> Divergence | None:
        """Apply ``name(r, **args)`` to both sides and compare; None when they agree.

        Raises:
            StepRejected: the model's guard is false (nothing changed on either side).
        """
        args = {} if args is None else args
        m = self.model
        before_state = self.state
        try:
            evicts = m.action(name).demand is not None
            if evicts:
                # The implementation chooses the victims: call it first, read its choice from
                # the host page counts, and let the model check it (trace validation).
                m.check_args(before_state, name, r, args, fill=False)
                if not m.enabled(before_state, name, r, **_without_victims(args)):
                    raise StepRejected(f"{name}(r={r}) is not enabled in this state")
            else:
                out = m.step(before_state, name, r, **args)
        except InvalidArgument as exc:
            raise StepRejected(str(exc)) from None
        before = self.obs
        diffs: list[FieldDiff] = []
        d = self.driver
        impl_args = _without_victims(args)
        try:
            outcome = d.apply(name, r, impl_args)
            after = abstract(d)
        except Exception as exc:  # noqa: BLE001 - an implementation bug is a finding
            if evicts:
                out, args, _ = self._model_step_with_victims(before_state, name, r, args, None)
            self._advance(out, name, r, args)
            return self._crash(name, r, args, exc, before_state)
        if evicts:
            chosen = _victims_chosen(before, after, r)
            if outcome.raised is not None or (not outcome.result and not any(chosen)):
                chosen_or_none = None  # a refusal chose nothing: the result tells
            else:
                chosen_or_none = chosen
            out, args, victim_diff = self._model_step_with_victims(
                before_state, name, r, args, chosen_or_none)
            if victim_diff is not None:
                diffs.append(victim_diff)
        new_state, model_new, expected_result = self._advance(out, name, r, args)
        try:
            found = observe_step(d, name, r, impl_args, outcome, before, after)
            struct = structure(d, per_step=True) if self.check_structure else ()
        except Exception as exc:  # noqa: BLE001 - an implementation bug is a finding
            return self._crash(name, r, args, exc, before_state)
        self.obs = after
        self.last_model_violations = model_new
        self.last_impl_violations = found
        exp = model_observation(new_state, self._mask)
        returns = m.action(name).returns
        if outcome.raised is not None:
            pass  # a refusal returns nothing; the violation and the unchanged state count
        elif returns and outcome.result != expected_result:
            diffs.append(FieldDiff("result", str(expected_result), str(outcome.result)))
        elif name == "evict_to_host" and outcome.result is False:
            diffs.append(FieldDiff("result", "None (evicted)", "False (host tier refused)"))
        if found != model_new:
            shown = _ids(found)
            if outcome.raised is not None:
                shown += f" (raised InvariantViolation: {outcome.raised})"
            diffs.append(FieldDiff("violations", _ids(model_new), shown))
        if exp != after:
            diffs.extend(_diff_obs(exp, after))
        for finding in outcome.misuse:
            finding = replace(finding, step=len(self.steps))
            if finding.failure or self.strict:
                diffs.append(FieldDiff("misuse", _MISUSE_EXPECTED,
                                       f"{finding.kind}: {finding.action}: {finding.detail}"))
            elif all(w.kind != finding.kind for w in self.warnings):
                self.warnings.append(finding)
        if struct:
            diffs.extend(FieldDiff("structure", "[]", msg) for msg in struct)
        if diffs:
            if outcome.raised is not None:
                got = _raised_text(outcome.raised)
            else:
                got = f"-> {outcome.result}" if returns or outcome.result is not None else ""
            return self._divergence(len(self.steps), self._call(name, r, args), diffs, exp,
                                    before_state, after, impl_result=got)
        return None

    def _model_step_with_victims(self, s: State, name: str, r: int, args: dict[str, Any],
                                 chosen: tuple[int, ...] | None
                                 ) -> tuple[Outcome, dict[str, Any], FieldDiff | None]:
        """The model's step for an action that evicts. With ``follow_victims``: the victims
        the implementation ``chosen`` when the model admits them. Otherwise (or when they
        are not admissible, or nothing was chosen): the given victims when admissible, else
        the first admissible vector; a ``victims`` difference names what was read."""
        m = self.model
        a = m.action(name)
        fixed = _without_victims(args)
        given = args.get("demote")
        if chosen is not None and (self.follow_victims or given is None or given == chosen):
            full = {**fixed, "demote": chosen}
            try:  # the common case: one model step, whose guard checks the choice
                return m.step(s, name, r, **full), full, None
            except InvalidArgument:
                pass  # not admissible: reported below
        options = m.victim_options(s, a, r, fixed)
        diff = None
        use = given if isinstance(given, tuple) and given in options else options[0]
        if chosen is not None and chosen not in options:
            diff = FieldDiff(
                "victims", "demote one of " + ", ".join(str(list(v)) for v in options[:4])
                + (" ..." if len(options) > 4 else ""),
                f"demote {list(chosen)} (read from host pages)")
        elif chosen is not None and chosen != use:
            diff = FieldDiff("victims", f"demote {list(use)} (the trace's choice)",
                             f"demote {list(chosen)} (read from host pages; both"
                             " admissible, but the trace's later steps assume its own)")
        full = {**fixed, "demote": use}
        return m.step(s, name, r, **full), full, diff

    def _advance(self, out: Outcome, name: str, r: int, args: dict[str, Any]
                 ) -> tuple[State, frozenset[str], bool | None]:
        """Take the model's step: clear and record its new violation flags, append it to
        the trace. Returns (new state, new violation ids, expected result)."""
        new_state = out.state
        flags = _get_flags(new_state)
        model_new: frozenset[str] = frozenset()
        if any(flags):
            model_new = frozenset(FLAG_IDS[f] for f, v in zip(_FLAGS, flags) if v)
            new_state = new_state._replace(**_CLEAR)
            self.violated.extend(sorted(model_new - set(self.violated)))
        expected_result = None if out.result is None else bool(out.result)
        self.state = new_state
        self.steps.append(Step(name, r, dict(args), expected_result))
        return new_state, model_new, expected_result

    def final_check(self) -> Divergence | None:
        """Structural checks once more (for runs with ``check_structure=False``); a manager
        whose observations raise here is a divergence too."""
        try:
            msgs = structure(self.driver)
        except Exception as exc:  # noqa: BLE001 - an observation that raises is a finding
            return self._divergence(len(self.steps), "end of run", [_raised(exc)],
                                    model_observation(self.state, self._mask), self.state)
        if not msgs:
            return None
        return self._divergence(len(self.steps), "end of run",
                                [FieldDiff("structure", "[]", msg) for msg in msgs],
                                model_observation(self.state, self._mask), self.state,
                                self.obs)

    # ---- helpers ---------------------------------------------------------------------------

    def _call(self, name: str, r: int, args: dict[str, Any]) -> str:
        return Step(name, r, args).call(self.model.action(name).per_request)

    def _crash(self, name: str, r: int, args: dict[str, Any], exc: BaseException,
               before_state: State) -> Divergence:
        exp = model_observation(self.state, self._mask)
        try:
            after: Observation | None = abstract(self.driver)
        except Exception:  # noqa: BLE001 - the observation itself may be what is broken
            after = None
        return self._divergence(len(self.steps), self._call(name, r, args), [_raised(exc)],
                                exp, before_state, after, impl_result=_raised_text(exc))

    def _divergence(self, index: int, action: str, diffs: list[FieldDiff], exp: Observation,
                    before_state: State, after: Observation | None = None, *,
                    impl_result: str = "") -> Divergence:
        """The report; its trace has the model's results and digests (one model replay of
        the steps so far: cheap next to the lockstep run that found it)."""
        enabled = summarize_enabled(self.model, before_state)
        trace = with_digests(Trace(self.policy, self.config, tuple(self.steps),
                                   tuple(self.violated),
                                   source=f"conformance:{self.impl_name}"))
        return Divergence(index, action, diffs, trace, enabled, render_observation(exp),
                          "" if after is None else render_observation(after), self.impl_name,
                          impl_result=impl_result)


def _without_victims(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` without ``demote`` (the implementation chooses its victims itself)."""
    return {k: v for k, v in args.items() if k != "demote"}


_HOST = _F["host_pages"]
_HAS = _F["has_cache"]


def _victims_chosen(before: Observation, after: Observation, r: int) -> tuple[int, ...]:
    """The victims an implementation demoted in a step on slot ``r``: per slot, the growth
    of its host page count (0 for ``r`` itself, whose recall is not a demotion)."""
    return tuple(0 if j == r else (a[_HOST] if a[_HAS] else 0) - (b[_HOST] if b[_HAS] else 0)
                 for j, (b, a) in enumerate(zip(before[0], after[0])))


def summarize_enabled(model: Model, s: State, limit: int = 4) -> tuple[str, ...]:
    """The model's enabled calls in ``s``, at most ``limit`` argument tuples per (action,
    slot) and a count of the rest (``arrive(r=1, ...) +71 more``)."""
    groups: dict[tuple[str, int], list[str]] = {}
    for n, r, a in model.enabled_steps(s):
        groups.setdefault((n, r), []).append(Step(n, r, a).call(model.action(n).per_request))
    out: list[str] = []
    for calls in groups.values():
        out.extend(calls[:limit])
        if len(calls) > limit:
            out.append(f"... +{len(calls) - limit} more {calls[0].split('(')[0]}")
    return tuple(out)


def _raised_text(exc: BaseException) -> str:
    """``raised ExcType: message`` (what a step shows when the manager raised)."""
    msg = str(exc)
    return f"raised {type(exc).__name__}" + (f": {msg}" if msg else "")


def _raised(exc: BaseException) -> FieldDiff:
    msg = str(exc)
    return FieldDiff("raised", "no exception", type(exc).__name__ + (f": {msg}" if msg else ""))


def _ids(ids: Iterable[str]) -> str:
    s = sorted(ids)
    return "{" + ", ".join(s) + "}" if s else "{} (none)"


def _diff_obs(exp: Observation, act: Observation) -> list[FieldDiff]:
    out: list[FieldDiff] = []
    for r, (qe, qa) in enumerate(zip(exp[0], act[0])):
        if qe != qa:
            for n, ve, va in zip(OBS_FIELDS, qe, qa):
                if ve != va:
                    out.append(FieldDiff(f"r{r}.{n}", _show(n, ve), _show(n, va)))
    for i, n in ((1, "gpu_free"), (2, "host_free")):
        if exp[i] != act[i]:
            out.append(FieldDiff(n, str(exp[i]), str(act[i])))
    return out


def run_steps(factory: Factory, config: Config, policy: Policy,
              steps: Sequence[tuple[str, int, dict[str, Any]]] | Sequence[Step], *,
              impl_name: str = "", check_structure: bool = True,
              probe_misuse: bool = True, strict: bool = False,
              warnings: list[MisuseFinding] | None = None) -> Divergence | None:
    """Run a step sequence in lockstep; the first divergence or None. ``strict``: see
    :class:`Lockstep`; ``warnings``, when given, receives the run's misuse warnings (the
    first of each kind, :attr:`Lockstep.warnings`).

    Raises:
        StepRejected: a step is not allowed by the model (the sequence is not a behaviour).
    """
    ls = Lockstep(factory, config, policy, impl_name=impl_name,
                  check_structure=check_structure, probe_misuse=probe_misuse, strict=strict)
    try:
        div = ls.initial_divergence()
        if div is not None:
            return div
        for st in steps:
            name, r, args = (st.action, st.r, st.args) if isinstance(st, Step) else st
            div = ls.step(name, r, dict(args))
            if div is not None:
                return div
        return ls.final_check()
    finally:
        if warnings is not None:
            warnings.extend(ls.warnings)
