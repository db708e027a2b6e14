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
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import z3

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy

from .actions import protocol_actions
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


# ---------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Verdict:
    """The verdict of one cell. ``status`` is PROVED, REFUTED or UNKNOWN."""

    policy: str
    invariant: str
    status: str
    method: str
    seconds: float
    k: int = 0
    trace: Trace | None = None
    reason: str = ""

    @property
    def length(self) -> int | None:
        """Steps in the counterexample, None when there is none."""
        return None if self.trace is None else len(self.trace)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "invariant": self.invariant, "status": self.status,
                "method": self.method, "k": self.k, "seconds": round(self.seconds, 4),
                "length": self.length, "reason": self.reason,
                "path": None if self.trace is None else self.trace.path()}


@dataclass
class Matrix:
    """Verdicts for policies x properties, in the order asked."""

    policies: list[str]
    properties: list[str]
    cells: dict[tuple[str, str], Verdict] = field(default_factory=dict)
    seconds: float = 0.0

    def get(self, policy: str, prop: str) -> Verdict:
        return self.cells[(policy, prop)]

    def to_json(self) -> dict[str, Any]:
        return {"policies": self.policies, "invariants": self.properties,
                "seconds": round(self.seconds, 3),
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
    params: dict[tuple[str, str], z3.ExprRef]


def transition_relation(c: Ctx, actions: Sequence[Action], s: State, t: State, tag: str,
                        bound: int | None = None) -> tuple[z3.BoolRef, StepVars]:
    """T(s, t): some enabled action with some parameters takes ``s`` to ``t``."""
    act, slot = z3.Int(f"{tag}.act"), z3.Int(f"{tag}.slot")
    params: dict[tuple[str, str], z3.ExprRef] = {}
    disjuncts = []
    for i, a in enumerate(actions):
        args: dict[str, Any] = {}
        for p in a.params:
            v = z3.Bool(f"{tag}.{a.name}.{p.name}") if p.kind == "bool" else z3.Int(
                f"{tag}.{a.name}.{p.name}")
            params[(a.name, p.name)] = v
            args[p.name] = v
        bounds = [] if bound is None else [
            z3.And(v >= -bound, v <= bound) for v in args.values() if not z3.is_bool(v)]
        for r in range(len(s.reqs) if a.per_request else 1):
            out = transition(c, a, s, r, args)
            disjuncts.append(z3.And(act == i, slot == r, a.guard(c, s, r, **args), *bounds,
                                    state_eq(out.state, t)))
    return z3.Or(*disjuncts), StepVars(act, slot, params)


def _ctx(config: Config, policy: Policy, blocks_b: int | None, abstract: bool) -> Ctx:
    u = config.max_util_for_resume
    return Ctx(Z3Ops(blocks_b, u.numerator, u.denominator), policy, config, abstract)


# ---------------------------------------------------------------------------------------------
# Induction (Houdini) and k-induction


@dataclass(frozen=True)
class InductionResult:
    """The inductive subset found by Houdini: kept property ids and lemma names."""

    properties: tuple[str, ...]
    lemmas: tuple[str, ...]
    seconds: float


def houdini(config: Config, policy: Policy,
            properties: Sequence[Property] = PROPERTIES) -> InductionResult:
    """The largest inductive subset of ``properties`` + lemmas (one tracked request, abstract
    rest, any tokens_per_block). Cost: a handful of z3 queries over one transition."""
    t0 = time.perf_counter()
    c = _ctx(config, policy, None, abstract=True)
    s0, s1 = sym_state("h0", 1), sym_state("h1", 1)
    trans, _ = transition_relation(c, protocol_actions(True), s0, s1, "h")
    names = [p.id for p in properties] + [n for n, _ in LEMMAS]
    fns = [p.check for p in properties] + [f for _, f in LEMMAS]
    at0 = [fn(c, s0) for fn in fns]
    at1 = [fn(c, s1) for fn in fns]
    init = initial_constraint(c, s0)
    assert isinstance(c.o, Z3Ops)
    axioms = c.o.block_axioms()
    active = set(range(len(names)))
    # initiation
    si = z3.Solver()
    si.add(*axioms, init)
    for i in list(active):
        if si.check(z3.Not(at0[i])) == z3.sat:
            active.discard(i)
    # consecution
    sc = z3.Solver()
    sc.add(*axioms, trans)
    while True:
        sc.push()
        sc.add(*[at0[i] for i in active])
        sc.add(z3.Not(z3.And(*[at1[i] for i in active])))
        if sc.check() != z3.sat:
            sc.pop()
            break
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


def k_induction(config: Config, policy: Policy, prop: Property, kept: InductionResult,
                k: int) -> bool:
    """Whether ``prop`` is k-inductive relative to Houdini's kept invariants (the base case is
    covered by BMC to at least depth k)."""
    c = _ctx(config, policy, None, abstract=True)
    frames = [sym_state(f"k{i}", 1) for i in range(k + 1)]
    kept_fns = [p.check for p in PROPERTIES if p.id in kept.properties] + [
        f for n, f in LEMMAS if n in kept.lemmas]
    sol = z3.Solver()
    parts = []
    for i in range(k):
        tr, _ = transition_relation(c, protocol_actions(True), frames[i], frames[i + 1], f"k{i}")
        parts.append(tr)
        parts.append(prop.check(c, frames[i]))
        parts.extend(fn(c, frames[i]) for fn in kept_fns)
    goal = z3.Not(prop.check(c, frames[k]))
    assert isinstance(c.o, Z3Ops)
    sol.add(*c.o.block_axioms(), *parts, goal)
    return bool(sol.check() == z3.unsat)


# ---------------------------------------------------------------------------------------------
# Bounded model checking


def bmc(config: Config, policy: Policy, targets: Sequence[Property], max_depth: int,
        num_requests: int = 1) -> dict[str, Trace]:
    """Shortest counterexamples (depth <= ``max_depth``) for each target property.

    Runs the concrete model's semantics symbolically: concrete tokens_per_block, pool sizes and
    parameters symbolic in [0, BMC_VALUE_BOUND]. Each trace is decoded and confirmed by a
    concrete replay before it is returned.
    """
    c = _ctx(config, policy, config.tokens_per_block, abstract=False)
    acts = protocol_actions(False)
    frames = [sym_state("b0", num_requests)]
    sol = z3.Solver()
    s0 = frames[0]
    sol.add(initial_constraint(c, s0), s0.num_gpu_pages <= BMC_VALUE_BOUND,
            s0.num_host_pages <= BMC_VALUE_BOUND, s0.max_rewind_len <= BMC_VALUE_BOUND)
    step_vars: list[StepVars] = []
    found: dict[str, Trace] = {}
    pending = list(targets)
    for depth in range(1, max_depth + 1):
        nxt = sym_state(f"b{depth}", num_requests)
        tr, sv = transition_relation(c, acts, frames[-1], nxt, f"t{depth}", BMC_VALUE_BOUND)
        sol.add(tr)
        frames.append(nxt)
        step_vars.append(sv)
        for prop in list(pending):
            if sol.check(z3.Not(prop.check(c, nxt))) == z3.sat:
                trace = _decode(sol.model(), config, policy, frames, step_vars, acts, prop)
                found[prop.id] = trace
                pending.remove(prop)
        if not pending:
            break
    return found


def _decode(m: z3.ModelRef, config: Config, policy: Policy, frames: list[State],
            step_vars: list[StepVars], acts: Sequence[Action], prop: Property) -> Trace:
    def val(e: Any) -> Any:
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
    rep = replay(trace)
    if prop.id not in rep.final_violations:  # pragma: no cover - the two readings disagree
        raise RuntimeError(
            f"BMC counterexample for {prop.id} under {policy.name} does not replay on the "
            f"concrete model: {trace.path()}")
    return trace


# ---------------------------------------------------------------------------------------------
# The matrix


def prove_policy(config: Config, policy: Policy, properties: Sequence[Property] = PROPERTIES,
                 max_depth: int = 14) -> list[Verdict]:
    """Verdicts for one policy: Houdini, then BMC for what it dropped, then k-induction."""
    ind = houdini(config, policy, PROPERTIES)
    per_cell = ind.seconds / max(1, len(PROPERTIES))
    verdicts: dict[str, Verdict] = {}
    todo = []
    for p in properties:
        if p.id in ind.properties:
            verdicts[p.id] = Verdict(policy.name, p.id, "PROVED", "induction", per_cell, k=1)
        else:
            todo.append(p)
    for n, depth in ((1, max_depth), (2, min(max_depth, 10))):
        if not todo:
            break
        t0 = time.perf_counter()
        found = bmc(config, policy, todo, depth, num_requests=n)
        spent = time.perf_counter() - t0
        for p in list(todo):
            if p.id in found:
                verdicts[p.id] = Verdict(policy.name, p.id, "REFUTED", f"bmc(n={n})",
                                         spent / max(1, len(found)), trace=found[p.id])
                todo.remove(p)
    for p in todo:
        t0 = time.perf_counter()
        proved_k = next((k for k in (2, 3) if k_induction(config, policy, p, ind, k)), 0)
        spent = time.perf_counter() - t0
        if proved_k:
            verdicts[p.id] = Verdict(policy.name, p.id, "PROVED", "k-induction", spent,
                                     k=proved_k)
        else:
            verdicts[p.id] = Verdict(
                policy.name, p.id, "UNKNOWN", "none", spent,
                reason=f"not inductive with the lemmas, not 3-inductive, no counterexample "
                       f"up to depth {max_depth}")
    return [verdicts[p.id] for p in properties]


def prove_matrix(config: Config, policies: Sequence[Policy],
                 properties: Sequence[Property] = PROPERTIES, max_depth: int = 14) -> Matrix:
    """Every (policy, property) verdict; see :func:`prove_policy`."""
    if not policies:
        raise InvalidArgument("prove_matrix needs at least one policy")
    t0 = time.perf_counter()
    mat = Matrix([p.name for p in policies], [p.id for p in properties])
    for pol in policies:
        for v in prove_policy(config, pol, properties, max_depth):
            mat.cells[(pol.name, v.invariant)] = v
    mat.seconds = time.perf_counter() - t0
    return mat
