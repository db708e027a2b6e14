"""Model and implementation in lockstep: compare after every step.

Compared per step: the return value, every observed field of every slot, the free page
counts, the structural checks of :func:`~kvspec.conformance.driver.structure`, the misuse
probes of the driver, and "the same violation": the set of invariant ids the model's ghost
flags newly set at this step against the ids the implementation raised
(:class:`~kvspec.errors.InvariantViolation`, state unchanged) or
:func:`~kvspec.conformance.detect.observe_step` detected. Each step's observation is built
once (:func:`~kvspec.conformance.observe.observe`) and compared with the model's step by one
pure function (:func:`~kvspec.conformance.observe.compare`).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy
from kvspec.spec.coverage import Coverage
from kvspec.spec.model import Model
from kvspec.spec.registry import Outcome
from kvspec.spec.state import State
from kvspec.spec.trace import Step, Trace, with_digests

from .adapter import Factory, make_manager
from .detect import EXECUTOR_IDS, FLAG_IDS
from .driver import OBS_FIELDS, Driver, Observation, abstract, structure
from .driver import F as _F
from .misuse import MisuseFinding
from .observe import Expected, compare, diff_fields, observe, observe_batch, show
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
        parts.append(f"r{r}{{" + " ".join(f"{n}={show(n, v)}" for n, v in zip(OBS_FIELDS, q))
                     + "}")
    return (" ".join(parts) or "(no requests)") + f" gpu_free={obs[1]} host_free={obs[2]}"


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
        coverage: when given, each model transition is counted into it (branches taken,
            witnesses hit: :class:`~kvspec.spec.coverage.Coverage`).
        batch_forward: consecutive ``forward`` steps reach the manager as one batch, as an
            executor sends them: one ``update_context_resources`` and one
            ``update_resources`` call with every request of the batch and its own accepted
            count, in a shuffled order (seeded by the step index: a replay of the same steps
            sends the same batches). The model steps them one by one; the two sides are
            compared once the batch is sent, at the next non-forward step, at
            :meth:`flush` or :meth:`final_check` (a batch is the same as its requests one
            by one). False: each forward is sent alone.

    Raises:
        InvalidArgument: the factory's manager lacks the adapter API.
    """

    def __init__(self, factory: Factory, config: Config, policy: Policy, *,
                 check_structure: bool = True, probe_misuse: bool = True,
                 impl_name: str = "", model: Model | None = None, strict: bool = False,
                 follow_victims: bool = True, coverage: Coverage | None = None,
                 batch_forward: bool = True) -> None:
        self.config, self.policy, self.impl_name = config, policy, impl_name
        self.coverage = coverage
        # the forwards sent to the model but not yet to the manager: (slot, args, model
        # violations, model state before the step)
        self._batch: list[tuple[int, dict[str, Any], frozenset[str], State]] = []
        self.model = model if model is not None else Model(config, policy)
        self.state = self.model.initial()
        self.driver = Driver(make_manager(factory, config, policy), config, policy,
                             probe_misuse=probe_misuse, batch_forward=batch_forward)
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
        diffs = diff_fields(exp, self.obs) + [FieldDiff("structure", "[]", m) for m in msgs]
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
        if self._batch and name != "forward":
            div = self.flush()  # the batch goes out before the executor's next call
            if div is not None:
                return div
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
        d = self.driver
        impl_args = _without_victims(args)
        try:
            outcome = d.apply(name, r, impl_args)
            staged = bool(d.pending)  # a forward waiting for its batch: observed then
            got = None if staged else observe(d, name, r, impl_args, outcome, before,
                                              check_structure=self.check_structure)
        except Exception as exc:  # noqa: BLE001 - an implementation bug is a finding
            if evicts:
                out, args, _ = self._model_step_with_victims(before_state, name, r, args, None)
            self._advance(out, name, r, args)
            return self._crash(name, r, args, exc, before_state)
        diffs: list[FieldDiff] = []
        if evicts and got is not None:
            chosen = _victims_chosen(before, got.fields, r)
            if outcome.raised is not None or (not outcome.result and not any(chosen)):
                chosen_or_none = None  # a refusal chose nothing: the result tells
            else:
                chosen_or_none = chosen
            out, args, victim_diff = self._model_step_with_victims(
                before_state, name, r, args, chosen_or_none)
            if victim_diff is not None:
                diffs.append(victim_diff)
        new_state, model_new, expected_result = self._advance(out, name, r, args)
        if self.coverage is not None:
            self.coverage.add(m.ctx, name, r, before_state, out.state, expected_result)
        if got is None:  # a staged forward: compared when its batch is sent
            self._batch.append((r, impl_args, model_new, before_state))
            # pending: the batch's comparison confirms them (a mismatch is a divergence)
            self.last_model_violations = self.last_impl_violations = model_new
            return None
        self.obs = got.fields
        self.last_model_violations = model_new
        self.last_impl_violations = got.violated
        exp = Expected(name, model_observation(new_state, self._mask),
                       model_new - EXECUTOR_IDS,
                       expected_result, m.action(name).returns)
        found, tolerated = compare(exp, got, step=len(self.steps), strict=self.strict)
        diffs.extend(found)
        self._tolerate(tolerated)
        if diffs:
            if outcome.raised is not None:
                shown = _raised_text(outcome.raised)
            else:
                shown = f"-> {outcome.result}" if exp.returns or outcome.result is not None \
                    else ""
            return self._divergence(len(self.steps), self._call(name, r, args), diffs,
                                    exp.fields, before_state, got.fields, impl_result=shown)
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

    def flush(self) -> Divergence | None:
        """Send the pending batch of forwards (see ``batch_forward``) and compare; None when
        nothing is pending or the two sides agree. A divergence is reported at the batch's
        last step."""
        if not self._batch:
            return None
        batch, self._batch = self._batch, []
        d, before = self.driver, self.obs
        last = batch[-1]
        label = "forward batch [" + ", ".join(
            self._call("forward", r, args) for r, args, _, _ in batch) + "]"
        try:
            sent = d.flush_forwards(f"{len(self.steps)}:{[r for r, *_ in batch]}")
            got = observe_batch(d, [(r, args) for r, args, _, _ in batch], before,
                                check_structure=self.check_structure)
        except Exception as exc:  # noqa: BLE001 - an implementation bug is a finding
            return self._crash_at(label, exc, last[3])
        self.obs = got.fields
        model_new = frozenset().union(*(v for _, _, v, _ in batch))
        self.last_model_violations, self.last_impl_violations = model_new, got.violated
        exp = Expected("forward", model_observation(self.state, self._mask),
                       model_new - EXECUTOR_IDS,
                       None, False)
        diffs, tolerated = compare(exp, got, step=len(self.steps), strict=self.strict)
        self._tolerate(tolerated)
        if not diffs:
            return None
        order = ", ".join(f"r={r}" for r, _ in sent)
        return self._divergence(len(self.steps), f"{label} (sent in the order {order})",
                                diffs, exp.fields, last[3], got.fields)

    def final_check(self, *, flush: bool = True) -> Divergence | None:
        """Send a pending batch of forwards (unless ``flush`` is False) and compare, then the
        structural checks once more (for runs with ``check_structure=False``); a manager
        whose observations raise here is a divergence too."""
        if flush:
            div = self.flush()
            if div is not None:
                return div
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

    def _tolerate(self, findings: list[MisuseFinding]) -> None:
        """Keep the first tolerated misuse finding of each kind."""
        for finding in findings:
            if all(w.kind != finding.kind for w in self.warnings):
                self.warnings.append(finding)

    def _call(self, name: str, r: int, args: dict[str, Any]) -> str:
        return Step(name, r, args).call(self.model.action(name).per_request)

    def _crash(self, name: str, r: int, args: dict[str, Any], exc: BaseException,
               before_state: State) -> Divergence:
        return self._crash_at(self._call(name, r, args), exc, before_state)

    def _crash_at(self, action: str, exc: BaseException, before_state: State) -> Divergence:
        exp = model_observation(self.state, self._mask)
        try:
            after: Observation | None = abstract(self.driver)
        except Exception:  # noqa: BLE001 - the observation itself may be what is broken
            after = None
        return self._divergence(len(self.steps), action, [_raised(exc)], exp, before_state,
                                after, impl_result=_raised_text(exc))

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
