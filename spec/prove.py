"""z3 verdicts for every (policy, invariant) cell: induction, k-induction, bounded model checking.

The transition relation is generated from the action registry: one disjunct per (action,
request slot), with symbolic action parameters, evaluated by the same guard and effect code the
concrete model runs (:class:`kvspec.spec.z3ops.Z3Ops`).

* PROVED by induction: Houdini keeps the largest subset of properties + lemmas
  (:mod:`.lemmas`) that holds initially and is preserved by every transition. Proofs run one
  tracked request against an abstract rest (``others`` action), for any tokens_per_block
  (uninterpreted ``blocks``), any pool sizes and any capacities; docs/model.md argues why this
  covers any number of requests.
* PROVED by k-induction (k = 2, 3) for a property Houdini dropped but BMC cannot refute.
* REFUTED: the shortest counterexample by BMC over the concrete model (1, then 2 request slots,
  concrete tokens_per_block, symbolic pool sizes and parameters), decoded into a
  :class:`~kvspec.spec.trace.Trace` and confirmed by replaying it on the concrete model.
* UNKNOWN: z3 answered ``unknown`` (a time limit, a resource limit, a theory it gave up on) on a
  query a verdict needed, or no route decided the cell; the reason says which.
* INTERRUPTED: the run was interrupted (SIGINT) before the cell was decided.

Soundness rules. Every solver answer goes through :func:`ask` and is one of sat / unsat /
unknown. A PROVED cell needs ``unsat`` on every query that justifies it, and it is PROVED only
after its certificate (the inductive set Houdini kept, or k with that set) is re-verified from
scratch in fresh solvers (:func:`recheck_certificate`, :func:`k_induction`) and, independently,
bounded model checking with two request slots finds no counterexample up to a stated depth
(``bmc2_depth``). Anything short of that is UNKNOWN, with the reason. SIGINT during
:func:`prove_matrix` cancels the running solver query (z3 answers ``unknown``, "interrupted",
which is never taken for an answer) or stops at the next one: cells decided so far keep their
verdicts, the rest are INTERRUPTED and ``Matrix.interrupted`` is True.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import z3

from kvspec.config import Config
from kvspec.errors import InvalidArgument, KVSpecError
from kvspec.policy import Policy

from .actions import protocol_actions
from .eviction import victim_slots
from .invariants import PROPERTIES, Property
from .lemmas import LEMMAS
from .model import transition
from .registry import Action, Ctx
from .state import REQ_BOOL_FIELDS, STATE_BOOL_FIELDS, Req, State, initial_state
from .trace import Step, Trace, replay, with_digests
from .walker import lower_arguments
from .z3ops import Z3Ops

BMC_VALUE_BOUND = 12
"""BMC keeps pool sizes and action parameters <= this, so counterexamples stay readable."""

DEFAULT_TIMEOUT = 60.0
"""Seconds of z3 time per proof phase of a cell (``kvspec prove --timeout``)."""

DEFAULT_BMC2_DEPTH = 4
"""Depth of the two-request BMC cross-check every PROVED cell passes (``--bmc2-depth``)."""

PROVED, REFUTED, UNKNOWN, INTERRUPTED = "PROVED", "REFUTED", "UNKNOWN", "INTERRUPTED"
STATUSES = (PROVED, REFUTED, UNKNOWN, INTERRUPTED)


# ---------------------------------------------------------------------------------------------
# Solver answers


SAT, UNSAT, UNKNOWN_ANSWER = "sat", "unsat", "unknown"


@dataclass(frozen=True)
class Answer:
    """One solver answer: ``result`` is ``"sat"``, ``"unsat"`` or ``"unknown"``; ``reason`` is
    z3's ``reason_unknown()`` (or ours, for a phase out of time) when unknown."""

    result: str
    reason: str = ""

    @property
    def unsat(self) -> bool:
        return self.result == UNSAT

    @property
    def sat(self) -> bool:
        return self.result == SAT

    @property
    def unknown(self) -> bool:
        return self.result == UNKNOWN_ANSWER


class ProofInterrupted(KeyboardInterrupt):
    """SIGINT reached a proof (z3 answered "interrupted", or the interrupt flag
    of :func:`prove_matrix` was set). A KeyboardInterrupt, so callers outside
    :func:`prove_matrix` see the interrupt they sent."""


class SolverIncomplete(KVSpecError):
    """A bounded search could not finish: z3 answered unknown before the depth asked for."""


@dataclass
class Guard:
    """Per-run limits every query checks: a phase deadline and the interrupt flag.

    ``timeout`` seconds (None: no limit) start afresh with each proof phase (:meth:`phase`).
    """

    timeout: float | None = None
    interrupted: bool = False
    deadline: float | None = None

    def phase(self) -> Guard:
        """Start a phase: the deadline is now + timeout. Returns self."""
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout
        return self


def ask(solver: z3.Solver, *assumptions: Any, guard: Guard | None = None) -> Answer:
    """Check ``solver`` (under ``assumptions``) within the guard's deadline.

    Cost: one z3 check. Effect: sets the solver's ``timeout`` parameter to the time left.
    Raises :class:`ProofInterrupted` when SIGINT arrived (before or during the check); a check
    that runs out of time, or that z3 gives up on, is an ``unknown`` answer, never an error.
    """
    if guard is not None:
        if guard.interrupted:
            raise ProofInterrupted()
        if guard.deadline is not None:
            left = guard.deadline - time.monotonic()
            if left <= 0:
                return Answer(UNKNOWN_ANSWER, "timeout (the phase's time limit was reached)")
            solver.set("timeout", max(1, int(left * 1000)))
    r = solver.check(*assumptions)
    if r == z3.sat:
        return Answer(SAT)
    if r == z3.unsat:
        return Answer(UNSAT)
    reason = solver.reason_unknown() or "z3 gave no reason"
    if "interrupted" in reason or (guard is not None and guard.interrupted):
        if guard is not None:
            guard.interrupted = True
        raise ProofInterrupted()
    return Answer(UNKNOWN_ANSWER, reason)


@contextmanager
def _sigint_sets(guard: Guard) -> Iterator[None]:
    """While active (main thread only), SIGINT sets ``guard.interrupted`` and cancels the
    running z3 query, instead of raising KeyboardInterrupt at an arbitrary point.

    z3's own Ctrl-C handling is switched off (``ctrl_c=false``: it can swallow a SIGINT that
    arrives as a query finishes). The signal reaches a watcher thread at once through
    ``signal.set_wakeup_fd``; the thread sets the flag and calls z3's thread-safe
    ``interrupt()``, so the query answers unknown and :func:`ask` raises ProofInterrupted.
    A SIGINT the caller chose to ignore stays ignored. Everything is restored on exit.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield
        return
    ctx = z3.main_ctx()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    done = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        guard.interrupted = True

    def watch() -> None:
        while True:
            data = os.read(read_fd, 64)
            if done.is_set() or not data:
                return
            if signal.SIGINT in data:
                guard.interrupted = True
                ctx.interrupt()

    watcher = threading.Thread(target=watch, name="kvspec-sigint", daemon=True)
    watcher.start()
    previous = signal.signal(signal.SIGINT, handler)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    z3.set_param("ctrl_c", False)
    try:
        yield
    finally:
        z3.set_param("ctrl_c", True)
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous)
        done.set()
        os.write(write_fd, b"\0")
        watcher.join()
        os.close(read_fd)
        os.close(write_fd)


# ---------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Verdict:
    """The verdict of one cell.

    ``status``: PROVED, REFUTED, UNKNOWN or INTERRUPTED. ``route``: how it was decided
    (``induction``, ``k-induction``, ``bmc(n=1)``, ``bmc(n=2)``, ``none``). ``certificate``:
    for PROVED, the names of the inductive set (properties and lemmas) that was re-verified;
    ``k`` the induction depth (1 plain induction). ``bmc_depth``: for PROVED, the depth to which
    two-request BMC found no counterexample; for REFUTED, the counterexample's length; for
    UNKNOWN, the depth one-request BMC covered. ``reason``: why a cell is UNKNOWN (z3's
    ``reason_unknown()`` among it) or how a PROVED cell was cross-checked.
    """

    policy: str
    invariant: str
    status: str
    route: str
    seconds: float
    k: int = 0
    trace: Trace | None = None
    reason: str = ""
    certificate: tuple[str, ...] = ()
    bmc_depth: int = 0

    @property
    def length(self) -> int | None:
        """Steps in the counterexample, None when there is none."""
        return None if self.trace is None else len(self.trace)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "invariant": self.invariant, "status": self.status,
                "route": self.route, "k": self.k, "seconds": round(self.seconds, 4),
                "certificate": {"size": len(self.certificate), "members": list(self.certificate)},
                "bmc_depth": self.bmc_depth, "length": self.length, "reason": self.reason,
                "path": None if self.trace is None else self.trace.path()}


@dataclass
class Matrix:
    """Verdicts for policies x properties, in the order asked.

    ``interrupted``: SIGINT stopped the run; undecided cells are INTERRUPTED. ``settings``:
    the limits the run used (timeout, depths).
    """

    policies: list[str]
    properties: list[str]
    cells: dict[tuple[str, str], Verdict] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def get(self, policy: str, prop: str) -> Verdict:
        return self.cells[(policy, prop)]

    def count(self, status: str) -> int:
        """Cells with this status."""
        return sum(v.status == status for v in self.cells.values())

    def to_json(self) -> dict[str, Any]:
        return {"policies": self.policies, "invariants": self.properties,
                "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
                "settings": dict(self.settings),
                "counts": {s.lower(): self.count(s) for s in STATUSES},
                "cells": [self.cells[(p, q)].to_json() for p in self.policies
                          for q in self.properties]}


# ---------------------------------------------------------------------------------------------
# Encoding


def _sym_req(prefix: str) -> Req:
    vals = [z3.Bool(f"{prefix}.{f}") if f in REQ_BOOL_FIELDS else z3.Int(f"{prefix}.{f}")
            for f in Req._fields]
    return Req(*vals)


def sym_state(prefix: str, n: int) -> State:
    """Fresh z3 constants for every field of a state with ``n`` request slots."""
    reqs = tuple(_sym_req(f"{prefix}.r{i}") for i in range(n))
    vals: list[Any] = [reqs]
    for f in State._fields[1:]:
        vals.append(z3.Bool(f"{prefix}.{f}") if f in STATE_BOOL_FIELDS else z3.Int(f"{prefix}.{f}"))
    return State(*vals)


def _flat(s: State) -> list[Any]:
    out: list[Any] = []
    for q in s.reqs:
        out.extend(q)
    out.extend(s[1:])
    return out


def state_eq(a: State, b: State) -> z3.BoolRef:
    """Field-by-field equality of two states of the same shape."""
    return z3.And(*[x == y for x, y in zip(_flat(a), _flat(b))])


def initial_constraint(c: Ctx, s: State) -> z3.BoolRef:
    """``s`` is an initial state for some pool sizes and rewind bound >= 0."""
    init = initial_state(len(s.reqs), s.num_gpu_pages, s.num_host_pages, s.max_rewind_len,
                         c.policy.host_tier)
    return z3.And(s.num_gpu_pages >= 0, s.num_host_pages >= 0, s.max_rewind_len >= 0,
                  state_eq(s, init))


@dataclass
class StepVars:
    """The decoding handles of one transition: action index, slot, parameters."""

    act: z3.ArithRef
    slot: z3.ArithRef
    params: dict[tuple[str, str], Any]  # a z3 term, or a tuple of them for ``slots``


def transition_relation(c: Ctx, actions: Sequence[Action], s: State, t: State, tag: str,
                        bound: int | None = None) -> tuple[z3.BoolRef, StepVars]:
    """T(s, t): some enabled action with some parameters takes ``s`` to ``t``."""
    act, slot = z3.Int(f"{tag}.act"), z3.Int(f"{tag}.slot")
    params: dict[tuple[str, str], Any] = {}
    disjuncts = []
    for i, a in enumerate(actions):
        args: dict[str, Any] = {}
        for p in a.params:
            name = f"{tag}.{a.name}.{p.name}"
            v: Any
            if p.kind == "slots":
                v = tuple(z3.Int(f"{name}.{j}") for j in range(victim_slots(c, s)))
            else:
                v = z3.Bool(name) if p.kind == "bool" else z3.Int(name)
            params[(a.name, p.name)] = v
            args[p.name] = v
        ints = [x for v in args.values() for x in (v if isinstance(v, tuple) else (v,))
                if not z3.is_bool(x)]
        bounds = [] if bound is None else [z3.And(v >= -bound, v <= bound) for v in ints]
        for r in range(len(s.reqs) if a.per_request else 1):
            out = transition(c, a, s, r, args)
            disjuncts.append(z3.And(act == i, slot == r, a.guard(c, s, r, **args), *bounds,
                                    state_eq(out.state, t)))
    return z3.Or(*disjuncts), StepVars(act, slot, params)


class RelationTemplate:
    """One transition relation built once and instantiated per pair of frames by z3's
    ``substitute`` (C-side, far cheaper than building the terms again in Python): BMC and
    k-induction unroll the same relation many times. With the uninterpreted ``blocks`` the
    template's ``blocks`` arguments are substituted too and noted with the ops, so that
    ``block_axioms`` covers every instance as it covered terms built directly."""

    def __init__(self, c: Ctx, actions: Sequence[Action], n: int, bound: int | None = None
                 ) -> None:
        self.s, self.t = sym_state("tpl.s", n), sym_state("tpl.t", n)
        self.ops = c.o if isinstance(c.o, Z3Ops) else None
        mark = self.ops.blocks_mark() if self.ops is not None else 0
        self.relation, self.vars = transition_relation(c, actions, self.s, self.t, "tpl", bound)
        self.block_args = self.ops.blocks_since(mark) if self.ops is not None else []

    def instance(self, s: State, t: State, tag: str) -> tuple[z3.BoolRef, StepVars]:
        """T(s, t) with fresh step variables named after ``tag``."""
        pairs = list(zip(_flat(self.s), _flat(s))) + list(zip(_flat(self.t), _flat(t)))
        act, slot = z3.Int(f"{tag}.act"), z3.Int(f"{tag}.slot")
        pairs += [(self.vars.act, act), (self.vars.slot, slot)]
        params: dict[tuple[str, str], Any] = {}
        for key, v in self.vars.params.items():
            if isinstance(v, tuple):
                fresh: Any = tuple(z3.Const(str(x).replace("tpl.", f"{tag}.", 1), x.sort())
                                   for x in v)
                pairs += list(zip(v, fresh))
            else:
                fresh = z3.Const(str(v).replace("tpl.", f"{tag}.", 1), v.sort())
                pairs.append((v, fresh))
            params[key] = fresh
        if self.ops is not None and self.block_args:  # the blocks axioms must cover them
            self.ops.note_blocks([z3.substitute(x, *pairs) for x in self.block_args])
        return z3.substitute(self.relation, *pairs), StepVars(act, slot, params)


def _ctx(config: Config, policy: Policy, blocks_b: int | None, abstract: bool) -> Ctx:
    u = config.max_util_for_resume
    return Ctx(Z3Ops(blocks_b, u.numerator, u.denominator), policy, config, abstract)


# ---------------------------------------------------------------------------------------------
# Induction (Houdini), its re-check, and k-induction


Check = Callable[[Ctx, State], Any]


def _candidates(properties: Sequence[Property]) -> list[tuple[str, Check]]:
    """(name, predicate) of every property asked for, then every lemma."""
    return [(p.id, p.check) for p in properties] + [(n, f) for n, f in LEMMAS]


def _by_name(names: Sequence[str]) -> list[Check]:
    table = dict(_candidates(PROPERTIES))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise InvalidArgument(f"certificate names unknown properties or lemmas {unknown}; "
                              f"known: {', '.join(table)}")
    return [table[n] for n in names]


@dataclass(frozen=True)
class InductionResult:
    """The inductive subset found by Houdini: kept property ids and lemma names.

    ``complete`` is False when z3 answered unknown on a consecution query: then nothing is
    kept (an unverified set is no certificate) and ``reason`` says why.
    """

    properties: tuple[str, ...]
    lemmas: tuple[str, ...]
    seconds: float
    complete: bool = True
    reason: str = ""

    @property
    def certificate(self) -> tuple[str, ...]:
        """The inductive set: kept properties, then kept lemmas."""
        return self.properties + self.lemmas


def houdini(config: Config, policy: Policy, properties: Sequence[Property] = PROPERTIES, *,
            guard: Guard | None = None) -> InductionResult:
    """The largest inductive subset of ``properties`` + lemmas (one tracked request, abstract
    rest, any tokens_per_block). Cost: a handful of z3 queries over one transition.

    A candidate is kept only on ``unsat`` answers: one that z3 cannot settle at initiation is
    dropped (dropping keeps the result sound), and an ``unknown`` consecution query ends the
    search with an empty, incomplete result.
    """
    t0 = time.perf_counter()
    c = _ctx(config, policy, None, abstract=True)
    s0, s1 = sym_state("h0", 1), sym_state("h1", 1)
    trans, _ = transition_relation(c, protocol_actions(True), s0, s1, "h")
    named = _candidates(properties)
    names = [n for n, _ in named]
    at0 = [fn(c, s0) for _, fn in named]
    at1 = [fn(c, s1) for _, fn in named]
    init = initial_constraint(c, s0)
    assert isinstance(c.o, Z3Ops)
    axioms = c.o.block_axioms()
    active = set(range(len(names)))
    # initiation
    si = z3.Solver()
    si.add(*axioms, init)
    for i in sorted(active):
        if not ask(si, z3.Not(at0[i]), guard=guard).unsat:
            active.discard(i)
    # consecution
    sc = z3.Solver()
    sc.add(*axioms, trans)
    while True:
        sc.push()
        sc.add(*[at0[i] for i in active])
        sc.add(z3.Not(z3.And(*[at1[i] for i in active])))
        a = ask(sc, guard=guard)
        if a.unsat:
            sc.pop()
            break
        if a.unknown:
            sc.pop()
            return InductionResult((), (), time.perf_counter() - t0, complete=False,
                                   reason=f"induction: z3 answered unknown on consecution "
                                          f"({a.reason})")
        m = sc.model()
        dropped = {i for i in active if z3.is_false(m.eval(at1[i], model_completion=True))}
        sc.pop()
        if not dropped:  # pragma: no cover - z3 returned a model violating nothing
            raise RuntimeError("Houdini made no progress; z3 model inconsistent")
        active -= dropped
    n_props = len(properties)
    return InductionResult(tuple(names[i] for i in sorted(active) if i < n_props),
                           tuple(names[i] for i in sorted(active) if i >= n_props),
                           time.perf_counter() - t0)


def recheck_certificate(config: Config, policy: Policy, certificate: Sequence[str], *,
                        guard: Guard | None = None) -> Answer:
    """Re-verify an inductive set from scratch: fresh symbolic states, a freshly generated
    transition relation and two fresh solvers, one for initiation (init and not cert) and one
    for consecution (cert, a transition, and not cert after). ``unsat`` when both are unsat;
    ``sat`` (reason names the failing half) or ``unknown`` otherwise. Cost: two z3 queries."""
    fns = _by_name(certificate)
    c = _ctx(config, policy, None, abstract=True)
    s0, s1 = sym_state("c0", 1), sym_state("c1", 1)
    trans, _ = transition_relation(c, protocol_actions(True), s0, s1, "c")
    cert0 = z3.And(*[fn(c, s0) for fn in fns])
    cert1 = z3.And(*[fn(c, s1) for fn in fns])
    init = initial_constraint(c, s0)
    assert isinstance(c.o, Z3Ops)
    axioms = c.o.block_axioms()
    halves = (("initiation", [init, z3.Not(cert0)]),
              ("consecution", [trans, cert0, z3.Not(cert1)]))
    for half, goal in halves:
        sol = z3.Solver()
        sol.add(*axioms, *goal)
        a = ask(sol, guard=guard)
        if a.sat:
            return Answer(SAT, f"{half} fails: the certificate is not inductive")
        if a.unknown:
            return Answer(UNKNOWN_ANSWER, f"{half}: z3 answered unknown ({a.reason})")
    return Answer(UNSAT)


def k_induction(config: Config, policy: Policy, prop: Property, kept: InductionResult,
                k: int, *, guard: Guard | None = None) -> Answer:
    """Whether ``prop`` is k-inductive relative to Houdini's kept invariants: ``unsat`` means
    it is (the base case must be covered by BMC to at least depth k). ``kept`` must be a
    verified inductive set (complete), else it is not assumed. Cost: one z3 query over k
    transitions."""
    c = _ctx(config, policy, None, abstract=True)
    frames = [sym_state(f"k{i}", 1) for i in range(k + 1)]
    kept_fns = _by_name(kept.certificate) if kept.complete else []
    sol = z3.Solver()
    parts = []
    template = RelationTemplate(c, protocol_actions(True), 1)
    for i in range(k):
        tr, _ = template.instance(frames[i], frames[i + 1], f"k{i}")
        parts.append(tr)
        parts.append(prop.check(c, frames[i]))
        parts.extend(fn(c, frames[i]) for fn in kept_fns)
    goal = z3.Not(prop.check(c, frames[k]))
    assert isinstance(c.o, Z3Ops)
    sol.add(*c.o.block_axioms(), *parts, goal)
    return ask(sol, guard=guard)


# ---------------------------------------------------------------------------------------------
# Bounded model checking


@dataclass
class BmcResult:
    """What a BMC run established per target property.

    ``found``: the shortest counterexample. ``depth``: the deepest depth at which z3 answered
    unsat (no counterexample of that length or shorter); for a found property, its length - 1.
    ``reasons``: targets whose search stopped on an ``unknown`` answer, with z3's reason.
    """

    found: dict[str, Trace] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


def bmc_search(config: Config, policy: Policy, targets: Sequence[Property], max_depth: int,
               num_requests: int = 1, *, guard: Guard | None = None) -> BmcResult:
    """Shortest counterexamples (depth <= ``max_depth``) for each target property.

    Runs the concrete model's semantics symbolically: concrete tokens_per_block, pool sizes and
    parameters symbolic in [0, BMC_VALUE_BOUND]. At each depth one query asks whether any
    pending target can fail; only when it can are the targets asked one by one. Each trace is
    decoded and confirmed by a concrete replay before it is returned. A target whose query
    answers unknown leaves the search with its reason (its depth stays the last unsat one).
    """
    c = _ctx(config, policy, config.tokens_per_block, abstract=False)
    acts = protocol_actions(False)
    frames = [sym_state("b0", num_requests)]
    sol = z3.Solver()
    s0 = frames[0]
    sol.add(initial_constraint(c, s0), s0.num_gpu_pages <= BMC_VALUE_BOUND,
            s0.num_host_pages <= BMC_VALUE_BOUND, s0.max_rewind_len <= BMC_VALUE_BOUND)
    step_vars: list[StepVars] = []
    out = BmcResult()
    pending = list(targets)
    template: RelationTemplate | None = None
    for depth in range(0, max_depth + 1):
        if depth > 0:
            nxt = sym_state(f"b{depth}", num_requests)
            if template is None:
                template = RelationTemplate(c, acts, num_requests, BMC_VALUE_BOUND)
            tr, sv = template.instance(frames[-1], nxt, f"t{depth}")
            sol.add(tr)
            frames.append(nxt)
            step_vars.append(sv)
        now = frames[-1]
        if ask(sol, z3.Not(z3.And(*[p.check(c, now) for p in pending])), guard=guard).unsat:
            out.depth.update({p.id: depth for p in pending})
            continue
        for prop in list(pending):
            a = ask(sol, z3.Not(prop.check(c, now)), guard=guard)
            if a.unsat:
                out.depth[prop.id] = depth
                continue
            pending.remove(prop)
            if a.sat:
                out.found[prop.id] = _decode(sol.model(), config, policy, frames, step_vars,
                                             acts, prop)
            else:
                out.reasons[prop.id] = (f"z3 answered unknown at depth {depth} with "
                                        f"{num_requests} request slot(s) ({a.reason})")
        if not pending:
            break
    return out


def bmc(config: Config, policy: Policy, targets: Sequence[Property], max_depth: int,
        num_requests: int = 1, *, guard: Guard | None = None) -> dict[str, Trace]:
    """The counterexamples of :func:`bmc_search`, for callers that need a complete search.

    Raises:
        SolverIncomplete: z3 answered unknown for some target before ``max_depth``.
    """
    res = bmc_search(config, policy, targets, max_depth, num_requests, guard=guard)
    if res.reasons:
        raise SolverIncomplete(
            "bounded model checking incomplete: " + "; ".join(
                f"{k}: {v}" for k, v in res.reasons.items()) + "; raise the time limit")
    return res.found


def _decode(m: z3.ModelRef, config: Config, policy: Policy, frames: list[State],
            step_vars: list[StepVars], acts: Sequence[Action], prop: Property) -> Trace:
    def val(e: Any) -> Any:
        if isinstance(e, tuple):
            return tuple(val(x) for x in e)
        v = m.eval(e, model_completion=True)
        return bool(z3.is_true(v)) if z3.is_bool(v) else v.as_long()

    s0 = frames[0]
    k = config.replace(num_gpu_pages=val(s0.num_gpu_pages),
                       num_host_pages=val(s0.num_host_pages),
                       max_rewind_len=val(s0.max_rewind_len), num_requests=len(s0.reqs))
    steps = []
    for sv in step_vars:
        a = acts[val(sv.act)]
        args = {p.name: val(sv.params[(a.name, p.name)]) for p in a.params}
        steps.append(Step(a.name, val(sv.slot) if a.per_request else 0, args))
    trace = with_digests(Trace(policy, k, tuple(steps), (prop.id,), "z3-bmc"))
    if prop.id in replay(trace).final_violations:
        # same length (BMC found the minimum), smallest argument values: readable and stable
        trace = lower_arguments(trace, prop.id)
        trace = Trace(trace.policy, trace.config, trace.steps, (prop.id,), "z3-bmc")
    trace = _within_domains(trace)
    rep = replay(trace)
    if prop.id not in rep.final_violations:  # pragma: no cover - the two readings disagree
        raise RuntimeError(
            f"BMC counterexample for {prop.id} under {policy.name} does not replay on the "
            f"concrete model: {trace.path()}")
    return trace


def _within_domains(trace: Trace) -> Trace:
    """``trace`` with its config's prompt and draft maxima raised to the arguments z3 chose
    (BMC bounds them by :data:`BMC_VALUE_BOUND`, not by the config), so the walker, hypothesis
    and ``kvspec explore`` can generate the counterexample under the trace's own config."""
    prompt = max((int(v) for st in trace.steps for k, v in st.args.items()
                  if k in ("prompt_len", "chunk_size")), default=0)
    draft = max((int(st.args["draft_len"]) for st in trace.steps if "draft_len" in st.args),
                default=0)
    k = trace.config
    if prompt <= k.max_prompt_len and draft <= k.max_draft_len:
        return trace
    wider = k.replace(max_prompt_len=max(prompt, k.max_prompt_len),
                      max_draft_len=max(draft, k.max_draft_len))
    return with_digests(Trace(trace.policy, wider, trace.steps, trace.violated, trace.source,
                              trace.abstract_rest))


# ---------------------------------------------------------------------------------------------
# The matrix


@dataclass
class _Candidate:
    """A cell one route proved, waiting for its cross-checks."""

    prop: Property
    route: str
    k: int
    seconds: float


def _decide_policy(config: Config, policy: Policy, properties: Sequence[Property],
                   max_depth: int, bmc2_depth: int, guard: Guard,
                   emit: Callable[[Verdict], None]) -> None:
    """Decide every cell of one policy, calling ``emit`` as each becomes final (REFUTED at
    once; PROVED only after its cross-checks). Raises ProofInterrupted on SIGINT."""
    name = policy.name
    ind = houdini(config, policy, PROPERTIES, guard=guard.phase())
    per_cell = ind.seconds / max(1, len(PROPERTIES))
    candidates: list[_Candidate] = []
    todo: list[Property] = []
    for p in properties:
        if p.id in ind.properties:
            candidates.append(_Candidate(p, "induction", 1, per_cell))
        else:
            todo.append(p)
    notes: dict[str, list[str]] = {p.id: [] if ind.complete else [ind.reason] for p in todo}
    bmc1_depth: dict[str, int] = {}
    for n, depth in ((1, max_depth), (2, min(max_depth, 10))):
        if not todo:
            break
        t0 = time.perf_counter()
        res = bmc_search(config, policy, todo, depth, num_requests=n, guard=guard.phase())
        spent = time.perf_counter() - t0
        for p in list(todo):
            if p.id in res.found:
                tr = res.found[p.id]
                emit(Verdict(name, p.id, REFUTED, f"bmc(n={n})", spent / len(res.found),
                             trace=tr, bmc_depth=len(tr)))
                todo.remove(p)
                continue
            if n == 1:
                bmc1_depth[p.id] = res.depth.get(p.id, -1)
            if p.id in res.reasons:
                notes[p.id].append(f"bmc(n={n}): {res.reasons[p.id]}")
    for p in todo:
        t0 = time.perf_counter()
        guard.phase()
        proved_k = 0
        for k in (2, 3):
            if bmc1_depth.get(p.id, -1) < k:
                notes[p.id].append(f"{k}-induction: its base case (BMC to depth {k}) is not "
                                   "covered")
                break
            a = k_induction(config, policy, p, ind, k, guard=guard)
            if a.unsat:
                proved_k = k
                break
            if a.unknown:
                notes[p.id].append(f"{k}-induction: z3 answered unknown ({a.reason})")
        spent = time.perf_counter() - t0
        if proved_k:
            candidates.append(_Candidate(p, "k-induction", proved_k, spent))
            continue
        covered = bmc1_depth.get(p.id, -1)
        searched = (f"no counterexample up to depth {covered}" if covered >= 0 else
                    "BMC covered no depth")
        why = [f"not inductive with the lemmas, not 3-inductive, {searched}"] + notes[p.id]
        emit(Verdict(name, p.id, UNKNOWN, "none", spent, bmc_depth=max(covered, 0),
                     reason="; ".join(why)))
    if candidates:
        _cross_check(config, policy, ind, candidates, bmc2_depth, guard, emit)


def _cross_check(config: Config, policy: Policy, ind: InductionResult,
                 candidates: Sequence[_Candidate], bmc2_depth: int, guard: Guard,
                 emit: Callable[[Verdict], None]) -> None:
    """The second route every PROVED verdict passes: the certificate re-verified in fresh
    solvers, then two-request BMC to ``bmc2_depth`` finding nothing."""
    t0 = time.perf_counter()
    recheck = recheck_certificate(config, policy, ind.certificate, guard=guard.phase())
    b2 = bmc_search(config, policy, [c.prop for c in candidates], bmc2_depth, num_requests=2,
                    guard=guard.phase())
    share = (time.perf_counter() - t0) / len(candidates)
    for cand in candidates:
        pid, route, secs = cand.prop.id, cand.route, cand.seconds + share
        # k-induction's certificate: k, the property and the (re-checked) set it assumed
        cert = ind.certificate if pid in ind.certificate else (pid,) + ind.certificate
        if not recheck.unsat:
            emit(Verdict(policy.name, pid, UNKNOWN, route, secs, k=cand.k, certificate=cert,
                         bmc_depth=b2.depth.get(pid, 0),
                         reason=f"{route} found a certificate, but its re-check from scratch "
                                f"gave {recheck.result}: {recheck.reason}"))
        elif pid in b2.found:
            tr = b2.found[pid]
            emit(Verdict(policy.name, pid, REFUTED, "bmc(n=2)", secs, trace=tr,
                         bmc_depth=len(tr),
                         reason=f"{route} proved it for one tracked request, but two-request "
                                "BMC refutes it: the one-request abstraction does not cover "
                                "this case (a kvspec bug: please report it)"))
        elif pid in b2.reasons:
            emit(Verdict(policy.name, pid, UNKNOWN, route, secs, k=cand.k, certificate=cert,
                         bmc_depth=b2.depth.get(pid, 0),
                         reason=f"{route} proved it and its certificate re-checked, but the "
                                f"two-request BMC cross-check stopped: {b2.reasons[pid]}"))
        else:
            emit(Verdict(policy.name, pid, PROVED, route, secs, k=cand.k, certificate=cert,
                         bmc_depth=bmc2_depth,
                         reason=f"certificate of {len(cert)} re-verified (initiation and "
                                f"consecution unsat); two-request BMC clean to depth "
                                f"{bmc2_depth}"))


def prove_policy(config: Config, policy: Policy, properties: Sequence[Property] = PROPERTIES,
                 max_depth: int = 14, *, timeout: float | None = DEFAULT_TIMEOUT,
                 bmc2_depth: int = DEFAULT_BMC2_DEPTH) -> list[Verdict]:
    """Verdicts for one policy: Houdini, BMC for what it dropped, k-induction, cross-checks.

    Raises:
        ProofInterrupted: SIGINT arrived (use :func:`prove_matrix` for partial results).
    """
    got: dict[str, Verdict] = {}
    _decide_policy(config, policy, properties, max_depth, bmc2_depth, Guard(timeout),
                   lambda v: got.__setitem__(v.invariant, v))
    return [got[p.id] for p in properties]


def prove_matrix(config: Config, policies: Sequence[Policy],
                 properties: Sequence[Property] = PROPERTIES, max_depth: int = 14, *,
                 timeout: float | None = DEFAULT_TIMEOUT,
                 bmc2_depth: int = DEFAULT_BMC2_DEPTH,
                 on_cell: Callable[[Verdict], None] | None = None) -> Matrix:
    """Every (policy, property) verdict; see the module docstring for the routes and rules.

    Args:
        timeout: seconds of z3 time per proof phase of a cell (Houdini, each BMC pass, the
            k-induction queries, each cross-check); a phase that runs out leaves its cells
            UNKNOWN. None: no limit.
        bmc2_depth: depth of the two-request BMC every PROVED cell must pass.
        on_cell: called with each verdict as it becomes final (progress reporting).

    Returns a :class:`Matrix`; on SIGINT (main thread) it returns early with
    ``interrupted=True``, the decided cells kept and the rest INTERRUPTED.

    Raises:
        InvalidArgument: no policy, a non-positive timeout or depth.
    """
    if not policies:
        raise InvalidArgument("prove: needs at least one policy")
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise InvalidArgument(f"prove: timeout={timeout!r} must be a number of seconds > 0")
    for label, v in (("max_depth", max_depth), ("bmc2_depth", bmc2_depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidArgument(f"prove: {label}={v!r} must be an integer >= 1")
    t0 = time.perf_counter()
    mat = Matrix([p.name for p in policies], [p.id for p in properties],
                 settings={"timeout": timeout, "max_depth": max_depth, "bmc2_depth": bmc2_depth,
                           "bmc_value_bound": BMC_VALUE_BOUND})
    guard = Guard(timeout)

    def emit(v: Verdict) -> None:
        mat.cells[(v.policy, v.invariant)] = v
        if on_cell is not None:
            on_cell(v)

    with _sigint_sets(guard):
        try:
            for pol in policies:
                _decide_policy(config, pol, properties, max_depth, bmc2_depth, guard, emit)
        except ProofInterrupted:
            mat.interrupted = True
        except z3.Z3Exception:
            # z3's interrupt() cancels whatever z3 call runs when SIGINT arrives, not only a
            # check (a model evaluation raises "canceled"): the same interruption
            if not guard.interrupted:
                raise
            mat.interrupted = True
    for pname in mat.policies:
        for prop in mat.properties:
            if (pname, prop) not in mat.cells:
                mat.cells[(pname, prop)] = Verdict(pname, prop, INTERRUPTED, "none", 0.0,
                                                   reason="interrupted before it was decided")
    mat.seconds = time.perf_counter() - t0
    return mat
