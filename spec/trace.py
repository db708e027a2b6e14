"""One trace type for every counterexample: z3 BMC, hypothesis, the walker, conformance.

A :class:`Trace` is a policy, a config and a list of steps (action, request slot, arguments,
result, state digest). It is stored as JSON lines (a header line, then one line per step),
replays on the model with :func:`replay`, and renders three ways: a runnable program in
hypothesis's form, a one-line path, and a table of the fields each step changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy

from .model import Model
from .state import NONE, PHASE_NAMES, STAGE_NAMES, STATUS_NAMES, State

TRACE_FORMAT = "kvspec-trace/1"
_REQ_OBSERVED = ("phase", "pos", "has_cache", "status", "on_host", "capacity", "history",
                 "committed", "snapshot", "draft_record")


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
    """A behaviour of the model (usually a counterexample) with everything needed to replay."""

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
        """Write :meth:`to_jsonl` to ``path`` (parents created)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_jsonl())
        return p

    @classmethod
    def from_jsonl(cls, text: str) -> Trace:
        """Parse a trace; a malformed one raises :class:`InvalidArgument` naming the line."""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise InvalidArgument("empty trace: expected a header line")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"trace line 1 is not JSON: {exc}") from None
        if header.get("format") != TRACE_FORMAT:
            raise InvalidArgument(
                f"trace header format {header.get('format')!r}; expected {TRACE_FORMAT!r}")
        pol = dict(header["policy"])
        policy = Policy(name=pol.pop("name", "custom")).replace(**pol)
        config = _config_from_json(header["config"])
        steps = []
        for n, ln in enumerate(lines[1:], start=2):
            try:
                d = json.loads(ln)
                steps.append(Step(d["action"], int(d["r"]), dict(d.get("args", {})),
                                  d.get("result"), d.get("digest", "")))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise InvalidArgument(f"trace line {n} is not a step: {exc}") from None
        return cls(policy, config, tuple(steps), tuple(header.get("violated", ())),
                   header.get("source", ""), bool(header.get("abstract_rest", False)))

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace file written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise InvalidArgument(f"trace file {str(p)!r} does not exist")
        return cls.from_jsonl(p.read_text())

    # ---- renderings -----------------------------------------------------------------------

    def model(self) -> Model:
        """The model this trace runs on."""
        return Model(self.config, self.policy, abstract_rest=self.abstract_rest)

    def path(self) -> str:
        """One line: ``Path[4]: arrive(r=0, ...) / prepare_context(r=0) / ...``."""
        m = self.model()
        calls = [s.call(m.action(s.action).per_request) for s in self.steps]
        return f"Path[{len(self.steps)}]: " + " / ".join(calls)

    def program(self) -> str:
        """A runnable program in hypothesis's form that replays the trace on the model."""
        m = self.model()
        lines = [
            "from kvspec.spec.machine import ModelDriver",
            f"state = ModelDriver(policy={self.policy.name!r}, config={_config_repr(self.config)})",
        ]
        for s in self.steps:
            lines.append(f"state.{s.call(m.action(s.action).per_request)}")
        lines.append("state.check_invariants()  # fails: " + ", ".join(self.violated))
        return "\n".join(lines)

    def table(self) -> str:
        """Numbered steps, each with its result, the fields it changed and the state after it."""
        rep = replay(self)
        out: list[str] = []
        prev = rep.states[0]
        m = self.model()
        for i, (st, s) in enumerate(zip(self.steps, rep.states[1:]), start=1):
            res = "" if st.result is None else f" -> {st.result}"
            bad = rep.violations[i]
            out.append(f"{i:>3}. {st.call(m.action(st.action).per_request)}{res}"
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


def replay(trace: Trace) -> Replay:
    """Run ``trace`` on its model. A step the model does not allow raises InvalidArgument."""
    m = trace.model()
    s = m.initial()
    states, results, viols = [s], [], [tuple(m.violations(s))]
    for i, st in enumerate(trace.steps, start=1):
        try:
            s, res = m.step(s, st.action, st.r, **st.args)
        except InvalidArgument as exc:
            raise InvalidArgument(f"trace step {i} ({st.action}) does not replay: {exc}") from None
        states.append(s)
        results.append(None if res is None else bool(res))
        viols.append(tuple(m.violations(s)))
    return Replay(tuple(states), tuple(results), tuple(viols))


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


def state_line(s: State) -> str:
    """The observable state on one line: each occupied slot, the stage and the free pages."""
    slots = []
    for r, q in enumerate(s.reqs):
        if q.phase == 0 and not q.has_cache:
            continue
        cache = (f"{STATUS_NAMES.get(q.status, q.status)}{'@host' if q.on_host else ''} "
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


def _config_from_json(d: dict[str, Any]) -> Config:
    known = set(Config.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise InvalidArgument(f"trace config has unknown fields {unknown}")
    fractions = ("max_util_for_resume", "batch_wait_max_tokens_ratio")
    vals: dict[str, Any] = {k: (Fraction(v) if k in fractions else v) for k, v in d.items()}
    return Config(**vals)


def _config_repr(k: Config) -> str:
    items = []
    default = Config()
    for name in k.__dataclass_fields__:
        v = getattr(k, name)
        if v != getattr(default, name):
            items.append(f"{name}={str(v)!r}" if isinstance(v, Fraction) else f"{name}={v!r}")
    return "dict(" + ", ".join(items) + ")"
