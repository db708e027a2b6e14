"""One trace type for every counterexample: z3 BMC, hypothesis, the walker, conformance.

A :class:`Trace` is a policy, a config and a list of steps (action, request slot, arguments,
result, state digest). It is stored as JSON lines (a header line, then one line per step),
replays on the model with :func:`replay`, is checked against the model with
:func:`verify_trace` (each step's recorded result and digest, and the header's claimed
violations), and renders three ways: a runnable program in hypothesis's form, a one-line path,
and a table of the fields each step changed.

Loading (:meth:`Trace.load`, :meth:`Trace.from_bytes`, :meth:`Trace.from_jsonl`) validates
every field and raises only :class:`~kvspec.errors.InvalidArgument`, with a one-line message
naming the file and line, the field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument, KVSpecError
from kvspec.policy import PRESETS, Policy

from .actions import ABSTRACT_ONLY, protocol_actions
from .invariants import PROPERTY_IDS
from .model import Model
from .registry import Action
from .state import NONE, PHASE_NAMES, STAGE_NAMES, STATUS_NAMES, State

TRACE_FORMAT = "kvspec-trace/2"
"""/2: per-page host residency (``host_pages``) and the ``demote`` victims of implicit eviction."""
HEADER_FIELDS = ("format", "policy", "config", "violated", "source", "abstract_rest")
"""Every header field; ``format``, ``policy`` and ``config`` are required."""
STEP_FIELDS = ("i", "action", "r", "args", "result", "digest")
"""Every step field; ``action`` is required, and ``r`` for per-request actions."""
_REQ_OBSERVED = ("phase", "pos", "has_cache", "status", "host_pages", "capacity", "history",
                 "committed", "snapshot", "draft_record")
_MAKE_ONE = "re-export it with `kvspec prove --export DIR` or `kvspec walk --export DIR`"


@dataclass(frozen=True)
class Step:
    """One step: ``action(r, **args)`` returned ``result``; ``digest`` names the state after."""

    action: str
    r: int
    args: dict[str, Any] = field(default_factory=dict)
    result: bool | None = None
    digest: str = ""

    def call(self, per_request: bool = True) -> str:
        """``resize_context(r=0)`` style rendering."""
        parts = ([f"r={self.r}"] if per_request else []) + [f"{k}={v!r}" for k, v in
                                                             self.args.items()]
        return f"{self.action}({', '.join(parts)})"


@dataclass(frozen=True)
class Trace:
    """A behaviour of the model (usually a counterexample) with everything needed to replay.

    ``violated`` is the header's claim: the property ids the steps reach (checked by
    :func:`verify_trace`). ``abstract_rest`` marks traces of the proofs' one-request-versus-
    the-rest abstraction (they may use the ``others`` action and replay on the model only).
    """

    policy: Policy
    config: Config
    steps: tuple[Step, ...]
    violated: tuple[str, ...] = ()
    source: str = ""
    abstract_rest: bool = False

    def __len__(self) -> int:
        return len(self.steps)

    # ---- JSON lines -----------------------------------------------------------------------

    def to_jsonl(self) -> str:
        """The trace as JSON lines: a header, then one object per step."""
        header = {
            "format": TRACE_FORMAT, "source": self.source, "violated": list(self.violated),
            "policy": {"name": self.policy.name, **self.policy.switches()},
            "config": _config_to_json(self.config), "abstract_rest": self.abstract_rest,
        }
        lines = [json.dumps(header, sort_keys=True)]
        for i, s in enumerate(self.steps):
            lines.append(json.dumps({"i": i, "action": s.action, "r": s.r, "args": s.args,
                                     "result": s.result, "digest": s.digest}, sort_keys=True))
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_jsonl` to ``path`` (parents created). OSError on an unwritable path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_jsonl())
        return p

    @classmethod
    def from_jsonl(cls, text: str, *, name: str = "trace") -> Trace:
        """Parse and validate a trace; ``name`` (a file name) starts every error message.

        Checks the header (an object with ``format``, ``policy`` (a preset name, or an object
        with ``name`` and every switch as a boolean), ``config`` (every :class:`Config` field,
        integers as integers, fractions as ``"3/4"`` strings or numbers), optional ``violated``
        (known property ids), ``source`` (text) and ``abstract_rest`` (boolean)) and every step
        (an object with a known ``action``, ``r`` an integer slot below ``num_requests``,
        ``args`` the action's parameters with their types (``demote`` may be left out: the
        replay fills it in when only one victim vector fits), ``result`` true / false /
        null, ``digest`` a string, ``i`` when present its 0-based position). Blank lines are
        skipped. Whether the steps replay, and match their results and digests, is
        :func:`verify_trace`'s business.

        Cost: linear in the text. Raises only :class:`InvalidArgument` (one line: where, the
        field, the value, the fix).
        """
        if not isinstance(text, str):
            raise InvalidArgument(f"{name}: expected trace text (str), got {type(text).__name__}")
        lines = [(n, ln) for n, ln in enumerate(text.split("\n"), start=1) if ln.strip()]
        if not lines:
            raise InvalidArgument(
                f"{name}: empty trace: expected a header line ({{\"format\": "
                f"\"{TRACE_FORMAT}\", ...}}) and one line per step; {_MAKE_ONE}")
        n0, first = lines[0]
        policy, config, violated, source, abstract = _header(_json_line(name, n0, first),
                                                             f"{name} line {n0}")
        actions = {a.name: a for a in protocol_actions(abstract)}
        steps = tuple(_step(_json_line(name, n, ln), f"{name} line {n}", i, actions, config,
                            abstract)
                      for i, (n, ln) in enumerate(lines[1:]))
        return cls(policy, config, steps, violated, source, abstract)

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "trace") -> Trace:
        """Decode ``data`` as UTF-8 (a leading byte-order mark is dropped) and parse it with
        :meth:`from_jsonl`. Binary data (NUL bytes) and text that is not UTF-8 raise
        :class:`InvalidArgument`, as does everything :meth:`from_jsonl` refuses."""
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise InvalidArgument(
                f"{name}: UTF-16 text (a byte-order mark 0x{data[0]:02x}{data[1]:02x}), not"
                " UTF-8; a trace is UTF-8 JSON lines: convert it (iconv -f UTF-16 -t UTF-8)")
        nul = data.find(b"\x00")
        if nul >= 0:
            raise InvalidArgument(
                f"{name}: binary data (a NUL byte at offset {nul}), not a JSON lines trace; "
                f"{_MAKE_ONE}")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); a"
                f" trace is UTF-8 JSON lines; {_MAKE_ONE}") from None
        return cls.from_jsonl(text, name=name)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read and validate a trace file written by :meth:`save` (see :meth:`from_jsonl`).

        Raises :class:`InvalidArgument` for a path that does not exist, is a directory or
        cannot be read, and for any content :meth:`from_bytes` refuses.
        """
        p = Path(path)
        where = f"trace file {str(p)!r}"
        if p.is_dir():
            raise InvalidArgument(
                f"{where} is a directory; give one .jsonl file in it (written by "
                "`kvspec prove --export DIR` or `kvspec walk --export DIR`)")
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise InvalidArgument(f"{where} does not exist; check the path") from None
        except PermissionError:
            raise InvalidArgument(
                f"{where} is not readable (permission denied); fix its permissions") from None
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InvalidArgument(f"{where} cannot be read: {why}") from None
        return cls.from_bytes(data, name=str(p))

    # ---- renderings -----------------------------------------------------------------------

    def model(self) -> Model:
        """The model this trace runs on."""
        return Model(self.config, self.policy, abstract_rest=self.abstract_rest)

    def path(self) -> str:
        """One line: ``Path[4]: arrive(r=0, ...) / prepare_context(r=0) / ...``."""
        calls = [_call(st) for st in self.steps]
        return f"Path[{len(self.steps)}]: " + " / ".join(calls)

    def program(self) -> str:
        """A runnable program in hypothesis's form that replays the trace on the model.

        It states what the model does, not what the header claims: ``check_invariants()``
        follows the first step after which the model violates a property (the program raises
        ``PropertyViolated`` there; later steps are left out), or ends the program and passes
        when no step does. A step the model refuses ends the program (it raises
        ``InvalidArgument`` there). A header claim the steps do not reach is noted in a
        comment. Cost: one model replay.
        """
        run = _run(self)
        n = len(self.steps)
        lines = ["from kvspec.spec.machine import ModelDriver"]
        if PRESETS.get(self.policy.name) == self.policy:
            policy = repr(self.policy.name)
        else:
            lines.append("from kvspec.policy import Policy")
            policy = "Policy(" + ", ".join(
                [f"name={self.policy.name!r}"]
                + [f"{k}={v!r}" for k, v in self.policy.switches().items()]) + ")"
        if self.abstract_rest:
            lines.append("from kvspec.spec.model import Model")
        missing = _claims_not_reached(self, run.replay)
        if missing and run.refused is None:
            lines.append(f"# the trace header claims {', '.join(missing)}, which these steps "
                         "do not reach on the model")
        lines.append(f"state = ModelDriver(policy={policy}, config={_config_repr(self.config)})")
        if self.abstract_rest:
            lines += ["state.model = Model(state.config, state.policy, abstract_rest=True)"
                      "  # the proofs' one-request-versus-the-rest abstraction",
                      "state.state = state.model.initial()"]
        rep = run.replay
        for i in range(n + 1):
            if i > 0:
                st = self.steps[i - 1]
                call = f"state.{_call(st)}"
                if run.refused == i:
                    lines.append(f"{call}  # raises InvalidArgument: {_one_line(run.reason)}")
                    if i < n:
                        lines.append(f"# the trace's last {n - i} step(s) are not rendered")
                    return "\n".join(lines)
                lines.append(call)
            if rep.violations[i]:
                lines.append("state.check_invariants()  # raises PropertyViolated: "
                             + ", ".join(rep.violations[i]))
                if i < n:
                    lines.append(f"# the trace continues for {n - i} step(s) after the "
                                 "violation; they are not rendered")
                return "\n".join(lines)
        lines.append("state.check_invariants()  # passes: these steps reach no violation")
        return "\n".join(lines)

    def table(self) -> str:
        """Numbered steps, each with the model's result (and the recorded one where it
        differs), the fields it changed and the state after it. A step the model refuses is
        shown as REFUSED and ends the table. Cost: one model replay."""
        run = _run(self)
        rep = run.replay
        out: list[str] = []
        prev = rep.states[0]
        for i, st in enumerate(self.steps, start=1):
            call = _call(st)
            if i >= len(rep.states):
                out.append(f"{i:>3}. {call}   REFUSED by the model: {_one_line(run.reason)}")
                if i < len(self.steps):
                    out.append(f"     (the trace's last {len(self.steps) - i} step(s) are not"
                               " replayed)")
                break
            s, res = rep.states[i], rep.results[i - 1]
            shown = "" if res is None else f" -> {res}"
            if st.result is not None and st.result != res:
                shown += f" (the trace records -> {st.result})"
            bad = rep.violations[i]
            out.append(f"{i:>3}. {call}{shown}"
                       + (f"   VIOLATES {', '.join(bad)}" if bad else ""))
            for name, before, after in changed_fields(prev, s):
                out.append(f"       {name}: {before} -> {after}")
            out.append(f"       state: {state_line(s)}")
            prev = s
        return "\n".join(out)


@dataclass(frozen=True)
class Replay:
    """The states a trace passes through, the results, and the violations after each step."""

    states: tuple[State, ...]
    results: tuple[bool | None, ...]
    violations: tuple[tuple[str, ...], ...]  # index 0: the initial state

    @property
    def final_violations(self) -> tuple[str, ...]:
        return self.violations[-1]

    def first_violation(self) -> int | None:
        """Index of the first step after which some property is violated (1-based), or None."""
        for i, v in enumerate(self.violations):
            if v:
                return i
        return None

    def reached(self) -> tuple[str, ...]:
        """Every property id violated in some state, in order of first appearance."""
        seen: dict[str, None] = {}
        for v in self.violations:
            seen.update(dict.fromkeys(v))
        return tuple(seen)


def replay(trace: Trace) -> Replay:
    """Run ``trace`` on its model. A step the model does not allow raises InvalidArgument."""
    run = _run(trace)
    if run.refused is not None:
        st = trace.steps[run.refused - 1]
        raise InvalidArgument(
            f"trace step {run.refused} ({st.action}) does not replay: {run.reason}")
    return run.replay


# ---- checking a trace against the model -------------------------------------------------------


@dataclass(frozen=True)
class StepMismatch:
    """The first step where a trace and the model disagree.

    ``field``: ``"enabled"`` (the model's guard refuses the step), ``"result"`` or
    ``"digest"``; ``recorded`` and ``model`` are the two values as text.
    """

    step: int  # 1-based
    call: str
    field: str
    recorded: str
    model: str

    def render(self) -> str:
        """One line naming the step, the field and both values."""
        if self.field == "enabled":
            return (f"step {self.step} {self.call}: the model does not allow this step here"
                    f" ({_one_line(self.model)})")
        return (f"step {self.step} {self.call}: the trace records {self.field} "
                f"{self.recorded}, the model gives {self.model} (the trace was edited or "
                "written by another version of the model)")


@dataclass(frozen=True)
class TraceCheck:
    """The outcome of :func:`verify_trace`.

    ``replay`` covers the steps checked: all of them, or up to and including the first
    mismatching step (without it when the model refused it). ``unverified_results`` /
    ``unverified_digests``: 1-based steps replayed whose recorded result is null (for an action
    that returns one) or digest empty, so they were not compared. ``reached``: property ids the
    steps reach (in some state); ``claimed_not_reached``: ids the header claims that they do
    not reach (only when every step was checked); ``unclaimed``: ids reached but not claimed
    (reported, not a failure: an empty claim is no claim). ``refused``: the 1-based step the
    model's guard refuses, if any (also when an earlier mismatch is the one reported).
    """

    trace: Trace
    replay: Replay
    mismatch: StepMismatch | None
    unverified_results: tuple[int, ...]
    unverified_digests: tuple[int, ...]
    reached: tuple[str, ...]
    claimed_not_reached: tuple[str, ...]
    unclaimed: tuple[str, ...]
    refused: int | None = None

    @property
    def steps_checked(self) -> int:
        """Steps the model took (the refused one, if any, not counted)."""
        return len(self.replay.states) - 1

    @property
    def replays(self) -> bool:
        """The model allows every step of the trace (whatever the results and digests say), so
        it can be replayed on an implementation."""
        return self.refused is None

    @property
    def ok(self) -> bool:
        """No mismatch and every claimed violation is reached (unverified steps allowed)."""
        return self.mismatch is None and not self.claimed_not_reached

    @property
    def fully_verified(self) -> bool:
        """:attr:`ok`, and every step carried a result (where the action has one) and a digest."""
        return self.ok and not self.unverified_results and not self.unverified_digests

    def first_violation(self) -> int | None:
        """1-based step after which the model first violates something (0: the initial
        state), among the steps checked; None if none."""
        return self.replay.first_violation()

    def verdict(self) -> str:
        """The check's verdict on one line: the mismatch, the claim, or what was verified."""
        n = len(self.trace)
        if self.mismatch is not None:
            return "MISMATCH at " + self.mismatch.render()
        if self.claimed_not_reached:
            got = (f"reach only {', '.join(self.reached)}" if self.reached
                   else "reach no violation")
            return (f"header claims {', '.join(self.claimed_not_reached)} but the steps {got}"
                    " on the model")
        parts = [f"the model allows all {n} steps"]
        no_res, no_dig = len(self.unverified_results), len(self.unverified_digests)
        if not no_res and not no_dig:
            parts.append("every recorded result and digest matches")
        else:
            parts.append(f"{_count(no_res, 'step')} record no result and {no_dig} no digest"
                         " (hand-written?): replayed, those NOT verified")
            if any(st.result is not None or st.digest for st in self.trace.steps):
                parts.append("the recorded ones match")
        if self.trace.violated:
            parts.append(f"header claim {', '.join(self.trace.violated)} reached")
        return "; ".join(parts)

    def render(self, name: str = "") -> str:
        """The report: the trace (``name``, its source, length), policy, full config, what the
        model does, and the check's verdict (plus a note on unclaimed violations)."""
        t = self.trace
        first = self.first_violation()
        where = f" (first at step {first})" if first is not None else ""
        viol = self.reached
        if self.steps_checked < len(t):
            model = (f"checked {self.steps_checked} of {len(t)} steps; "
                     + (f"violates {', '.join(viol)}{where}" if viol else "no violation so far"))
        else:
            model = f"violates {', '.join(viol)}{where}" if viol else "no violation"
        lines = [
            f"Trace: {_display(name) if name else '(in memory)'}, {len(t)} steps, source "
            f"{_display(t.source) if t.source else '(none)'}"
            + (", abstract (one request versus the rest)" if t.abstract_rest else ""),
            f"Policy: {policy_summary(t.policy)}",
            f"Config: {t.config.describe()}",
            f"Model: {model}",
            f"Check: {self.verdict()}",
        ]
        if self.mismatch is not None and t.violated:
            lines.append(f"Check: header claim {', '.join(t.violated)} not checked (the replay "
                         f"stopped at step {self.mismatch.step})")
        if self.unclaimed and self.mismatch is None:
            lines.append(f"Note: the steps also reach {', '.join(self.unclaimed)}, which the "
                         "header does not claim")
        return "\n".join(lines)


def verify_trace(trace: Trace) -> TraceCheck:
    """Replay ``trace`` on its model and compare it with what it records.

    Each step must be allowed by the model's guard, and its recorded ``result`` (when not
    null) and ``digest`` (when not empty) must equal the model's; the first step that fails is
    the :class:`StepMismatch` and nothing after it is compared. When every step passes, the
    header's claimed ``violated`` ids are compared with the ids the steps reach in some state.
    Pure: returns a :class:`TraceCheck`, prints nothing, never raises for a trace
    :meth:`Trace.load` accepted. Cost: one model replay (microseconds per step).
    """
    run = _run(trace)
    rep = run.replay
    no_result: list[int] = []
    no_digest: list[int] = []
    mismatch: StepMismatch | None = None
    for i in range(1, len(rep.states)):
        st, res = trace.steps[i - 1], rep.results[i - 1]
        call = _call(st)
        if st.result is None and res is not None:
            no_result.append(i)
        elif st.result != res:
            mismatch = StepMismatch(i, call, "result", _result_text(st.result),
                                    _result_text(res))
        if mismatch is None:
            got = digest(rep.states[i])
            if not st.digest:
                no_digest.append(i)
            elif st.digest != got:
                mismatch = StepMismatch(i, call, "digest", repr(st.digest), repr(got))
        if mismatch is not None:
            rep = Replay(rep.states[:i + 1], rep.results[:i], rep.violations[:i + 1])
            break
    if mismatch is None and run.refused is not None:
        st = trace.steps[run.refused - 1]
        mismatch = StepMismatch(run.refused, _call(st), "enabled",
                                "taken", run.reason)
    reached = rep.reached()
    claimed_missing = _claims_not_reached(trace, rep) if mismatch is None else ()
    unclaimed = tuple(v for v in reached if v not in trace.violated)
    return TraceCheck(trace, rep, mismatch, tuple(no_result), tuple(no_digest), reached,
                      claimed_missing, unclaimed, run.refused)


def with_digests(trace: Trace) -> Trace:
    """``trace`` with each step's result and state digest filled in from a model replay."""
    rep = replay(trace)
    steps = tuple(Step(st.action, st.r, st.args, res, digest(s))
                  for st, res, s in zip(trace.steps, rep.results, rep.states[1:]))
    return Trace(trace.policy, trace.config, steps, rep.final_violations or trace.violated,
                 trace.source, trace.abstract_rest)


def digest(s: State) -> str:
    """A short stable hash of the observable (non-ghost) state."""
    obs = [tuple(getattr(q, f) for f in _REQ_OBSERVED) for q in s.reqs]
    glob = (s.stage, s.can_queue, s.gpu_free, s.host_free)
    return hashlib.sha1(repr((obs, glob)).encode()).hexdigest()[:12]


# ---- one-line descriptions for reports ---------------------------------------------------------

def policy_summary(p: Policy) -> str:
    """The policy's name, and the switches where it differs from the preset of that name (or,
    for a name that is no preset, from the defaults)."""
    preset = PRESETS.get(p.name)
    if preset == p:
        return p.name
    base = preset if preset is not None else Policy()
    diff = ", ".join(f"{k}={v}" for k, v in p.switches().items() if getattr(base, k) != v)
    if preset is not None:
        return f"{p.name} (NOT the preset: differs in {diff})"
    return f"{_display(p.name)} (custom; switches off the defaults: {diff or 'none'})"


def state_line(s: State) -> str:
    """The observable state on one line: each occupied slot, the stage and the free pages."""
    slots = []
    for r, q in enumerate(s.reqs):
        if q.phase == 0 and not q.has_cache:
            continue
        cache = (f"{STATUS_NAMES.get(q.status, q.status)}"
                 f"{f'({q.host_pages}@host)' if q.host_pages else ''} "
                 f"cap={q.capacity} hist={q.history} snap={_show('snapshot', q.snapshot)} "
                 f"draft_rec={_show('draft_record', q.draft_record)}"
                 if q.has_cache else "no cache")
        slots.append(f"r{r}[{PHASE_NAMES.get(q.phase, q.phase)} pos={q.pos}/{q.prompt_len} "
                     f"{cache}]")
    return (" ".join(slots) or "(empty)") + (
        f" | {STAGE_NAMES.get(s.stage, s.stage)} gpu_free={s.gpu_free}/{s.num_gpu_pages}"
        f" host_free={s.host_free}/{s.num_host_pages}")


def changed_fields(a: State, b: State) -> list[tuple[str, str, str]]:
    """(field, before, after) for every field that differs, request fields as ``r0.capacity``."""
    out: list[tuple[str, str, str]] = []
    for name in a._fields:
        if name == "reqs":
            continue
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            out.append((name, _show(name, x), _show(name, y)))
    for r, (qa, qb) in enumerate(zip(a.reqs, b.reqs)):
        for name in qa._fields:
            x, y = getattr(qa, name), getattr(qb, name)
            if x != y:
                out.append((f"r{r}.{name}", _show(name, x), _show(name, y)))
    return out


# ---- internals: replay prefix -----------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    replay: Replay  # the steps the model took
    refused: int | None  # 1-based step the model refused, if any
    reason: str


def _run(trace: Trace) -> _Run:
    """Replay as far as the model allows; never raises for a validated trace."""
    m = trace.model()
    s = m.initial()
    states, viols = [s], [tuple(m.violations(s))]
    results: list[bool | None] = []
    for i, st in enumerate(trace.steps, start=1):
        try:
            s, res = m.step(s, st.action, st.r, **st.args)
        except KVSpecError as exc:
            return _Run(Replay(tuple(states), tuple(results), tuple(viols)), i, str(exc))
        states.append(s)
        results.append(None if res is None else bool(res))
        viols.append(tuple(m.violations(s)))
    return _Run(Replay(tuple(states), tuple(results), tuple(viols)), None, "")


def _claims_not_reached(trace: Trace, rep: Replay) -> tuple[str, ...]:
    reached = set(rep.reached())
    return tuple(v for v in trace.violated if v not in reached)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _result_text(v: bool | None) -> str:
    return "nothing (null)" if v is None else str(v)


_PER_REQUEST = {a.name: a.per_request for a in protocol_actions(True)}


def _call(st: Step) -> str:
    return st.call(_PER_REQUEST.get(st.action, True))


def _display(s: str) -> str:
    """``s`` as is when printable, else its repr (control characters, lone surrogates)."""
    return s if s.isprintable() else repr(s)


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _show(name: str, v: Any) -> str:
    if name in ("snapshot", "draft_record") and v == NONE:
        return "None"
    if name == "phase":
        return PHASE_NAMES.get(v, str(v))
    if name == "status":
        return STATUS_NAMES.get(v, str(v))
    return str(v)


def _config_to_json(k: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in k.__dataclass_fields__:
        v = getattr(k, name)
        out[name] = str(v) if isinstance(v, Fraction) else v
    return out


def _config_repr(k: Config) -> str:
    """Every field (a program stays right if the defaults change); fractions as strings."""
    items = []
    for name in k.__dataclass_fields__:
        v = getattr(k, name)
        items.append(f"{name}={str(v)!r}" if isinstance(v, Fraction) else f"{name}={v!r}")
    return "dict(" + ", ".join(items) + ")"


# ---- internals: validation --------------------------------------------------------------------

_FRACTION_TEXT = re.compile(r"[+-]?(\d{1,30}(/\d{1,30})?|\d{0,30}\.\d{1,30})")
_DEFAULT_CONFIG = Config()
_CONFIG_KINDS: dict[str, type] = {f.name: type(getattr(_DEFAULT_CONFIG, f.name))
                                  for f in dataclasses.fields(Config)}
_SWITCHES: tuple[str, ...] = tuple(Policy().switches())
_ADDED_SWITCHES: tuple[str, ...] = ("gate_before_resume", "reserve_context")
"""Switches a trace may omit (read as off): added after the trace format was fixed."""


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(v), type(v).__name__)


def _v(v: Any) -> str:
    """A value as JSON text, cut to 60 characters (messages stay one line)."""
    try:
        text = json.dumps(v, ensure_ascii=True, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_line(name: str, n: int, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidArgument(f"{name} line {n} is nested too deeply to be a trace line"
                              f"; {_MAKE_ONE}") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, NaN, huge integers
        what = "the header" if n == 1 else "a step"
        raise InvalidArgument(f"{name} line {n} is not valid JSON ({_one_line(str(exc))}); "
                              f"expected {what} as one JSON object per line") from None


def _text(at: str, field_name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise InvalidArgument(f"{at}: {field_name}={_v(v)} is a JSON {_json_type(v)}; "
                              "expected a string")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{at}: {field_name}={_v(v)} is not valid Unicode text (a lone"
                              " surrogate escape); use plain text") from None
    return v


def _header(h: Any, at: str) -> tuple[Policy, Config, tuple[str, ...], str, bool]:
    if not isinstance(h, dict):
        raise InvalidArgument(
            f"{at}: the header is a JSON {_json_type(h)} ({_v(h)}); expected an object with "
            f"\"format\": \"{TRACE_FORMAT}\", \"policy\" and \"config\"; {_MAKE_ONE}")
    unknown = sorted(set(h) - set(HEADER_FIELDS))
    if unknown:
        raise InvalidArgument(f"{at}: unknown header field(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(HEADER_FIELDS)}")
    for req in ("format", "policy", "config"):
        if req not in h:
            raise InvalidArgument(
                f"{at}: the header has no {req!r} field; a {TRACE_FORMAT} header needs format, "
                f"policy and config; {_MAKE_ONE}")
    if h["format"] == "kvspec-trace/1":
        raise InvalidArgument(
            f"{at}: header format 'kvspec-trace/1' predates per-page host residency and"
            f" implicit eviction (growth and resume now take a 'demote' argument); {_MAKE_ONE}"
            f" with this kvspec ({TRACE_FORMAT!r})")
    if h["format"] != TRACE_FORMAT:
        raise InvalidArgument(f"{at}: header format={_v(h['format'])}; expected "
                              f"{TRACE_FORMAT!r} (this kvspec reads only that format)")
    policy = _policy(h["policy"], at)
    config = _config(h["config"], at)
    violated = _violated(h.get("violated", []), at)
    source = _text(at, "source", h.get("source", ""))
    abstract = h.get("abstract_rest", False)
    if not isinstance(abstract, bool):
        raise InvalidArgument(f"{at}: abstract_rest={_v(abstract)} is a JSON "
                              f"{_json_type(abstract)}; expected true or false")
    return policy, config, violated, source, abstract


def _policy(v: Any, at: str) -> Policy:
    if isinstance(v, str):
        if v in PRESETS:
            return PRESETS[v]
        raise InvalidArgument(f"{at}: policy={_v(v)} is not a preset; use one of "
                              f"{', '.join(PRESETS)}, or an object with name and every switch")
    if not isinstance(v, dict):
        raise InvalidArgument(f"{at}: policy={_v(v)} is a JSON {_json_type(v)}; expected a "
                              "preset name or an object with name and every switch")
    unknown = sorted(set(v) - set(_SWITCHES) - {"name"})
    if unknown:
        raise InvalidArgument(f"{at}: unknown policy switch(es) {', '.join(map(repr, unknown))};"
                              f" known: {', '.join(_SWITCHES)}")
    # switches added after traces were first written (issue 11's design switches): a file
    # written before them has them off, which is what it meant; every other one is required
    v = {**{s: False for s in _ADDED_SWITCHES if s not in v}, **v}
    missing = [s for s in _SWITCHES if s not in v]
    if missing:
        raise InvalidArgument(f"{at}: policy lacks switch(es) {', '.join(missing)}; every switch"
                              " must be given (true or false), or name a preset as a string")
    for s in _SWITCHES:
        if not isinstance(v[s], bool):
            raise InvalidArgument(f"{at}: policy.{s}={_v(v[s])} is a JSON {_json_type(v[s])};"
                                  " expected true or false")
    name = _text(at, "policy.name", v.get("name", "custom"))
    if not name.strip():
        raise InvalidArgument(f"{at}: policy.name is empty; name the policy (e.g. 'custom')")
    return Policy(name=name, **{s: v[s] for s in _SWITCHES})


def _config(v: Any, at: str) -> Config:
    if not isinstance(v, dict):
        raise InvalidArgument(f"{at}: config={_v(v)} is a JSON {_json_type(v)}; expected an "
                              "object with every Config field")
    unknown = sorted(set(v) - set(_CONFIG_KINDS))
    if unknown:
        raise InvalidArgument(f"{at}: unknown config field(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(_CONFIG_KINDS)}")
    missing = [f for f in _CONFIG_KINDS if f not in v]
    if missing:
        raise InvalidArgument(f"{at}: config lacks {', '.join(missing)}; every Config field "
                              "must be given (a missing one would silently take its default)")
    vals: dict[str, Any] = {}
    for name, kind in _CONFIG_KINDS.items():
        x = v[name]
        if kind is bool:
            if not isinstance(x, bool):
                raise InvalidArgument(f"{at}: config.{name}={_v(x)} is a JSON {_json_type(x)}; "
                                      "expected true or false")
        elif kind is int:
            if isinstance(x, bool) or not isinstance(x, int):
                raise InvalidArgument(f"{at}: config.{name}={_v(x)} is a JSON {_json_type(x)}; "
                                      "expected an integer")
        elif kind is Fraction:
            x = _fraction(at, name, x)
        vals[name] = x
    try:
        return Config(**vals)
    except KVSpecError as exc:
        raise InvalidArgument(f"{at}: config: {exc}") from None


def _fraction(at: str, name: str, x: Any) -> Fraction:
    bad = (f"{at}: config.{name}={_v(x)} is not a fraction; write it as a string such as "
           "\"3/4\" or \"0.95\"")
    if isinstance(x, str):
        if not _FRACTION_TEXT.fullmatch(x):
            raise InvalidArgument(bad)
        try:
            return Fraction(x)
        except (ValueError, ZeroDivisionError):
            raise InvalidArgument(bad) from None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise InvalidArgument(bad)
    try:
        return Fraction(x)
    except (ValueError, OverflowError):
        raise InvalidArgument(bad) from None


def _violated(v: Any, at: str) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise InvalidArgument(f"{at}: violated={_v(v)} is a JSON {_json_type(v)}; expected a "
                              "list of property ids such as [\"NO-DEFERRED-HOLD\"]")
    out: list[str] = []
    for x in v:
        if not isinstance(x, str) or x not in PROPERTY_IDS:
            raise InvalidArgument(f"{at}: violated lists {_v(x)}, not a property id; known: "
                                  f"{', '.join(PROPERTY_IDS)}")
        if x not in out:
            out.append(x)
    return tuple(out)


def _step(d: Any, at: str, index: int, actions: dict[str, Action], config: Config,
          abstract: bool) -> Step:
    if not isinstance(d, dict):
        raise InvalidArgument(f"{at}: a step is a JSON {_json_type(d)} ({_v(d)}); expected an "
                              "object with action, r and args")
    unknown = sorted(set(d) - set(STEP_FIELDS))
    if unknown:
        raise InvalidArgument(f"{at}: unknown step field(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(STEP_FIELDS)}")
    if "i" in d and (isinstance(d["i"], bool) or d["i"] != index
                     or not isinstance(d["i"], int)):
        raise InvalidArgument(f"{at}: step index i={_v(d['i'])} is out of order; expected "
                              f"{index} (steps are numbered from 0 in file order)")
    if "action" not in d:
        raise InvalidArgument(f"{at}: the step has no 'action'; known actions: "
                              f"{', '.join(actions)}")
    name = d["action"]
    if not isinstance(name, str) or name not in actions:
        hint = (f" ({name!r} exists only in abstract traces, abstract_rest: true)"
                if name in ABSTRACT_ONLY and not abstract else "")
        raise InvalidArgument(f"{at}: unknown action={_v(name)}{hint}; known: "
                              f"{', '.join(actions)}")
    a = actions[name]
    r = _slot(d, at, a, config)
    args = _args(d.get("args", {}), at, a, config.num_requests + (1 if abstract else 0))
    result = d.get("result")
    if result is not None and not isinstance(result, bool):
        raise InvalidArgument(f"{at}: result={_v(result)} is a JSON {_json_type(result)}; "
                              "expected true, false or null")
    dig = _text(at, "digest", d.get("digest", ""))
    return Step(name, r, args, result, dig)


def _slot(d: dict[str, Any], at: str, a: Action, config: Config) -> int:
    n = config.num_requests
    if not a.per_request:
        r = d.get("r", 0)
        if isinstance(r, bool) or r != 0 or not isinstance(r, int):
            raise InvalidArgument(f"{at}: {a.name} is a global action; r={_v(r)} must be 0 "
                                  "or left out")
        return 0
    if "r" not in d:
        raise InvalidArgument(f"{at}: {a.name} takes a request slot; add \"r\": 0..{n - 1}")
    r = d["r"]
    if isinstance(r, bool) or not isinstance(r, int):
        raise InvalidArgument(f"{at}: {a.name} r={_v(r)} is a JSON {_json_type(r)}; expected "
                              f"an integer slot 0..{n - 1}")
    if not 0 <= r < n:
        raise InvalidArgument(f"{at}: {a.name} r={r} is outside 0..{n - 1} "
                              f"(config.num_requests={n})")
    return r


def _args(v: Any, at: str, a: Action, victim_slots: int) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InvalidArgument(f"{at}: {a.name} args={_v(v)} is a JSON {_json_type(v)}; expected"
                              f" an object with {', '.join(p.name for p in a.params) or 'nothing'}")
    names = [p.name for p in a.params]
    unknown = sorted(set(v) - set(names))
    if unknown:
        raise InvalidArgument(f"{at}: {a.name} has no parameter(s) "
                              f"{', '.join(map(repr, unknown))}; its parameters: "
                              f"{', '.join(names) or 'none'}")
    missing = [p.name for p in a.params if p.name not in v and p.kind != "slots"]
    if missing:
        raise InvalidArgument(f"{at}: {a.name} args lack {', '.join(missing)}; give every "
                              f"parameter ({', '.join(names)})")
    out: dict[str, Any] = {}
    for p in a.params:  # in declaration order, as the renderings show them
        if p.name not in v:
            continue  # omitted victims: the replay fills them in when only one fits
        x = v[p.name]
        if p.kind == "slots":
            if (not isinstance(x, list) or len(x) != victim_slots or not all(
                    isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in x)):
                raise InvalidArgument(
                    f"{at}: {a.name} args.{p.name}={_v(x)} must be a list of {victim_slots}"
                    " page counts >= 0: one per request slot (config.num_requests), plus one"
                    " for the requests outside the model in an abstract trace; or leave it"
                    " out when no eviction is needed")
            out[p.name] = tuple(x)
            continue
        if p.kind == "bool" and not isinstance(x, bool):
            raise InvalidArgument(f"{at}: {a.name} args.{p.name}={_v(x)} is a JSON "
                                  f"{_json_type(x)}; expected true or false")
        if p.kind != "bool" and (isinstance(x, bool) or not isinstance(x, int)):
            raise InvalidArgument(f"{at}: {a.name} args.{p.name}={_v(x)} is a JSON "
                                  f"{_json_type(x)}; expected an integer")
        out[p.name] = x
    return out
