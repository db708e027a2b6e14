"""The volume tier: a seeded random walker over the model's actions, and a trace shrinker.

hypothesis costs ~100x per step; the walker runs the same actions in a plain loop (rejection
sampling of action, slot and arguments against the guards) for tens of thousands of steps per
second. A violation is never a bare seed: it becomes a :class:`~kvspec.spec.trace.Trace`,
shrunk by :func:`shrink_trace` (delta debugging over steps, then smaller arguments), replayable
with ``kvspec replay``. The walker also counts each property's "sometimes" witness.
"""

from __future__ import annotations

import dataclasses
import operator
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy

from .compiled import CompiledModel, compiled_model
from .invariants import PROPERTIES, Property
from .model import Model
from .ops import UNKNOWN, ConcreteOps, ThreeValuedOps
from .readset import ReadSetMemo
from .registry import Action, Ctx
from .state import REQ_BOOL_FIELDS, STATE_BOOL_FIELDS, Req, State
from .trace import Step, Trace, with_digests


@dataclass
class WalkResult:
    """What a walk did: steps, time, the first counterexample per property, witness counts."""

    steps: int = 0
    seconds: float = 0.0
    counterexamples: dict[str, Trace] = field(default_factory=dict)
    witnesses: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    """True when a ``KeyboardInterrupt`` stopped the walk: the fields hold what was done."""

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def walk(config: Config, policy: Policy, *, steps: int = 10_000, seed: int = 0,
         walk_length: int = 60, properties: Sequence[Property] = PROPERTIES,
         shrink: bool = True, witnesses: bool = True,
         progress: Callable[[int, int], None] | None = None) -> WalkResult:
    """Random walks of ``walk_length`` steps from the initial state, ``steps`` in total.

    Invariants are checked after every step; the first violation of each property is kept
    (shrunk when ``shrink``) and that walk restarts. Deterministic for a given seed.

    ``progress(steps_done, steps_total)`` is called every :data:`PROGRESS_EVERY` steps and
    once at the end (one integer comparison per step otherwise). A ``KeyboardInterrupt``
    raised inside the loop (Ctrl-C, or from ``progress``) ends the walk: the result has
    ``interrupted=True`` and holds the steps, witnesses and counterexamples found so far (a
    counterexample whose shrinking was interrupted is kept unshrunk).

    Cost: one model step plus the invariant checks per step (tens of microseconds); the
    guards and invariants that a state's small fields decide are looked up, not called
    (:class:`DecidedGuards`); effects and the other guards and invariants run compiled
    (:mod:`.compiled`); the walk is the one the plain rejection sampler draws with the
    spec's own functions.

    Raises:
        InvalidArgument: ``steps`` < 0 or ``walk_length`` < 1.
    """
    if steps < 0 or walk_length < 1:
        raise InvalidArgument(f"walk: steps={steps} must be >= 0, walk_length={walk_length} >= 1")
    m = Model(config, policy)
    rng = random.Random(seed)
    decided = DecidedGuards(m)
    pick = _step_picker(m, rng, decided)
    out = WalkResult()
    # effects and checks compiled, shared by the walks of this config and policy (a check
    # that cannot be compiled is remembered by the fields it reads)
    compiled = compiled_model(m)
    checks = [(p.id, compiled.check(p) or ReadSetMemo(p.check, m.ctx)) for p in properties]
    wit = [p for p in PROPERTIES if p.applies(policy)] if witnesses else []
    ctx = m.ctx
    actions = out.actions
    t0 = time.perf_counter()
    initial = m.initial()
    s = initial
    # the walk so far as (action, slot, args, result): Steps are built for a trace only
    path: list[tuple[Action, int, dict[str, Any], Any]] = []
    notify = progress if progress is not None else _no_progress
    next_report = PROGRESS_EVERY if progress is not None else steps + 1
    done = 0
    try:
        while done < steps:
            if done >= next_report:
                next_report += PROGRESS_EVERY
                notify(done, steps)
            chosen = pick(s)
            if chosen is None or len(path) >= walk_length:
                s, path = initial, []
                continue
            a, r, args = chosen
            # the picker returns enabled steps only: apply the effect without re-checking
            nxt, res = compiled.step(a, s, r, args)
            path.append((a, r, args, res))
            done += 1
            out.steps = done
            actions[a.name] += 1
            if wit:
                for p in wit:
                    if p.witness(ctx, s, nxt):
                        out.witnesses[p.id] += 1
                        if out.witnesses[p.id] >= WITNESS_SATURATION:
                            wit = [w for w in wit if w is not p]
            s = nxt
            bad = [pid for pid, check in decided.checks(s, checks)
                   if check is None or not check(ctx, s)]
            if bad:
                for pid in bad:
                    if pid not in out.counterexamples:
                        trace = Trace(policy, config, _steps(path), (pid,),
                                      f"walker(seed={seed})")
                        # kept unshrunk first: an interrupt during shrinking keeps it
                        out.counterexamples[pid] = with_digests(trace)
                        if shrink:
                            out.counterexamples[pid] = shrink_trace(trace, pid)
                s, path = initial, []
        notify(done, steps)
    except KeyboardInterrupt:
        out.interrupted = True
    out.seconds = time.perf_counter() - t0
    return out


def _steps(path: Sequence[tuple[Action, int, dict[str, Any], Any]]) -> tuple[Step, ...]:
    """The walk's ``path`` as trace steps."""
    return tuple(Step(a.name, r, args, None if res is None else bool(res))
                 for a, r, args, res in path)


PROGRESS_EVERY = 1024
"""Steps between two calls of ``walk``'s ``progress`` callback."""


def _no_progress(done: int, total: int) -> None:
    """The ``progress`` callback when none is given."""


STAGE_ACTION_WEIGHT = 0.3
"""Iteration-level actions (decide, end_iteration) are tried with this probability per pick,
so iterations hold more scheduling and generation steps (uniform choice ends them early)."""
WITNESS_SATURATION = 50
"""A witness is no longer evaluated once it has been reached this many times."""


def _picker(m: Model, rng: random.Random
            ) -> Callable[[State], tuple[str, int, dict[str, Any]] | None]:
    """:func:`_step_picker` with the action given by name (for callers outside the walk)."""
    pick = _step_picker(m, rng)

    def pick_named(s: State) -> tuple[str, int, dict[str, Any]] | None:
        chosen = pick(s)
        return None if chosen is None else (chosen[0].name, chosen[1], chosen[2])

    return pick_named


def _step_picker(m: Model, rng: random.Random, decided: DecidedGuards | None = None
                 ) -> Callable[[State], tuple[Action, int, dict[str, Any]] | None]:
    """Uniform over actions in a random order; for each, one random slot and argument tuple
    against its guard (an evicting action's candidates are enabled already); the first
    enabled wins. A second pass tries every slot and argument tuple, so a state with any
    enabled step always yields one.

    The draws and their order are part of the walk's seeded determinism and stay as they
    are; what is saved is guard work. A guard (an evicting action's precondition) that the
    state's small fields decide (:class:`DecidedGuards`) is looked up instead of called; an
    evicting action's admissible victims are computed once per pick and slot; in the second
    pass a guard whose value does not depend on the arguments in this state is called once
    instead of once per argument tuple (:func:`_argument_free_value`). Guards the tables
    leave undecided run compiled (:mod:`.compiled`), and so do evicting actions'
    preconditions and demands: a demand of 0 gets the one vector that demotes nothing, as an
    action planned :data:`EVICTS_NOTHING` does, and only a positive demand enumerates
    victims (code that cannot be compiled is remembered by the fields it reads,
    :class:`~kvspec.spec.readset.ReadSetMemo`). Cost: a shuffle, the compiled guards the
    tables leave undecided, and victims only where pages must be demoted."""
    c = m.ctx
    decided = decided if decided is not None else DecidedGuards(m)
    plan_of = decided.guards
    off = decided.off
    # per action, its fixed argument tuples (an evicting one's get "demote" added)
    fixed_of = [a.argument_tuples(m.config) for a in m.actions]
    acts = [(a, a.demand is not None, a.per_request, a.guard,
             STAGE_ACTION_WEIGHT if not a.per_request else 1.0,
             fixed_of[i] if a.demand is None else [],
             {p.name: UNKNOWN for p in a.params})
            for i, a in enumerate(m.actions)]
    zeros = m.no_victims

    def no_eviction(i: int) -> list[dict[str, Any]]:
        return [{**args, "demote": zeros} for args in fixed_of[i]]

    # the guards the tables leave undecided, and an evicting action's victims, compiled
    # (or remembered by the fields they read where the code cannot be compiled)
    compiled = compiled_model(m)
    guard_of = [_guard_caller(m, compiled, i, fixed_of[i]) for i in range(len(m.actions))]
    victims_of = [_victims_caller(m, compiled, i, no_eviction) for i in range(len(m.actions))]

    n = m.config.num_requests
    order = list(range(len(acts)))
    rand = rng.random
    shuffle = _shuffler(rng, len(order))

    def pick(s: State) -> tuple[Action, int, dict[str, Any]] | None:
        shuffle(order)
        plan = plan_of(s)
        victims: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for i in order:
            a, evicts, per_request, guard, weight, fixed, _ = acts[i]
            if weight < 1.0 and rand() > weight:
                continue
            r = int(rand() * n) if per_request else 0
            value = plan[i][r]
            if evicts:
                options = victims[i, r] = (
                    [] if value is False else no_eviction(i) if value is EVICTS_NOTHING
                    else victims_of[i](c, s, r, value is True))
                if options:
                    return a, r, options[int(rand() * len(options))]
                continue
            if not fixed:
                continue
            k = int(rand() * len(fixed))
            if value is True or (value is None and guard_of[i](c, s, r, k)):
                return a, r, fixed[k]
        for i in order:  # second pass: no weights, every slot, every argument tuple
            candidates = plan[i]
            if candidates is off[i]:
                continue
            a, evicts, _, guard, _, fixed, unknown = acts[i]
            for r, value in enumerate(candidates):
                if value is False:
                    continue
                if evicts:
                    got = victims.get((i, r))
                    options = got if got is not None else no_eviction(i) \
                        if value is EVICTS_NOTHING else victims_of[i](c, s, r, value is True)
                    if options:
                        return a, r, options[0]
                    continue
                if value is None and len(fixed) > 1:
                    value = _argument_free_value(guard, c, s, r, unknown)
                    if value is False:
                        continue
                if value is True:
                    if fixed:
                        return a, r, fixed[0]
                    continue
                for k, args in enumerate(fixed):
                    if guard_of[i](c, s, r, k):
                        return a, r, args
        return None

    return pick


def _guard_caller(m: Model, compiled: CompiledModel, i: int, fixed: list[dict[str, Any]]
                  ) -> Callable[[Ctx, State, int, int], Any]:
    """``(c, s, r, k) -> guard of action i on slot r with its k-th fixed argument tuple``:
    the guard compiled per slot at its first call (:class:`~kvspec.spec.compiled.
    CompiledModel`), or where it cannot be traced remembered by the fields it reads
    (:class:`~kvspec.spec.readset.ReadSetMemo`)."""
    a = m.actions[i]
    memo = ReadSetMemo(lambda c, s, r, k: a.guard(c, s, r, **fixed[k]), m.ctx)
    fns: dict[int, Callable[..., Any]] = {}

    def guard(c: Ctx, s: State, r: int, k: int) -> Any:
        fn = fns.get(r)
        if fn is None:
            got = compiled.guard(a, r) if a.demand is None else None
            fn = fns[r] = (lambda c, s, r, k: got(s, fixed[k])) if got is not None else memo
        return fn(c, s, r, k)

    return guard


def _victims_caller(m: Model, compiled: CompiledModel, i: int,
                    no_eviction: Callable[[int], list[dict[str, Any]]]
                    ) -> Callable[[Ctx, State, int, bool], list[dict[str, Any]]]:
    """``(c, s, r, holds) -> m.arguments(s, action i, r, holds=holds)`` for an evicting
    action: its precondition and demand compiled per slot at first use, so that a step that
    demotes nothing (the usual one) computes no victims; the model's own enumeration
    otherwise. Where the code cannot be traced, the arguments are remembered by the fields
    they read (:class:`~kvspec.spec.readset.ReadSetMemo`)."""
    a = m.actions[i]
    arguments = m.arguments
    memo = ReadSetMemo(lambda c, s, r, holds: arguments(s, a, r, holds=holds), m.ctx)
    if a.demand is None or any(p.kind != "slots" for p in a.params):
        return memo  # (victims beside other arguments: the model's enumeration, remembered)
    none: dict[str, Any] = {}
    fns: dict[int, Callable[[Ctx, State, int, bool], list[dict[str, Any]]]] = {}

    def compiled_victims(r: int) -> Callable[[Ctx, State, int, bool], list[dict[str, Any]]]:
        pre, demand = compiled.guard(a, r), compiled.demand(a, r)
        if pre is None or demand is None:
            return memo

        def by_compiled(c: Ctx, s: State, r: int, holds: bool) -> list[dict[str, Any]]:
            if not holds and not pre(s, none):
                return []
            if demand(s) == 0:
                return no_eviction(i)
            return arguments(s, a, r, holds=True)

        return by_compiled

    def victims(c: Ctx, s: State, r: int, holds: bool) -> list[dict[str, Any]]:
        fn = fns.get(r)
        if fn is None:
            fn = fns[r] = compiled_victims(r)
        return fn(c, s, r, holds)

    return victims


def _shuffler(rng: random.Random, size: int) -> Callable[[list[int]], None]:
    """``rng.shuffle`` for lists of ``size`` items: the same permutations from the same
    draws, without a Python call per draw. It draws as ``random.Random.shuffle`` does on
    this Python (``_randbelow``: ``getrandbits`` of the bound's bit length, retried when out
    of range); checked against it on copies of ``rng`` (64 shuffles, then the generators'
    states), else ``rng.shuffle`` itself is used. Cost: the check, ~0.1 ms per walk."""
    mine, theirs = random.Random(), random.Random()
    mine.setstate(rng.getstate())
    theirs.setstate(rng.getstate())
    probe = _fast_shuffle(mine, size)
    for _ in range(64):
        a, b = list(range(size)), list(range(size))
        probe(a)
        theirs.shuffle(b)
        if a != b:
            return rng.shuffle
    return _fast_shuffle(rng, size) if mine.getstate() == theirs.getstate() else rng.shuffle


def _fast_shuffle(rng: random.Random, size: int) -> Callable[[list[int]], None]:
    """Fisher-Yates over lists of ``size`` items with ``rng.getrandbits`` (see
    :func:`_shuffler`)."""
    getrandbits = rng.getrandbits
    steps = [(i, i + 1, (i + 1).bit_length()) for i in reversed(range(1, size))]

    def shuffle(x: list[int]) -> None:
        for i, bound, k in steps:
            j = getrandbits(k)
            while j >= bound:
                j = getrandbits(k)
            x[i], x[j] = x[j], x[i]

    return shuffle


PLAN_CACHE_SIZE = 4096
"""The most per-key guard plans a :class:`DecidedGuards` keeps (least recently used dropped
first). The cap holds every plan a walk meets at up to 3 requests (2,539 in 30,000 steps at
3 requests, ``pr13805``) and bounds the table beyond that, where the keys multiply with the
slots: at 6 requests 15,847 plans met in 30,000 steps, ~1.8 MB kept instead of ~10 MB
(a plan with its key and entry is ~430 bytes there; equal rows are shared).
``benchmarks/bench_walker_plans.py`` measures it."""

STATE_KEY_FIELDS = ("stage",)
"""Besides its bool fields, the state fields that key :class:`DecidedGuards`'s tables."""
REQ_KEY_FIELDS = ("phase", "status")
"""Besides its bool fields, the request fields that key :class:`DecidedGuards`'s tables."""


class _EvictsNothing:
    """The plan value of an evicting action whose precondition holds and whose demand is 0
    on every state with the key (truthy, like True): its only argument vector demotes
    nothing, so the picker needs neither the precondition nor the demand."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "EVICTS_NOTHING"


EVICTS_NOTHING = _EvictsNothing()
PlanValue = bool | _EvictsNothing | None
"""A guard's decided value on a key: True, False, :data:`EVICTS_NOTHING`, or None (call it)."""


class DecidedGuards:
    """Guards and invariants that a state's small fields decide, learnt once per key.

    The key of a state is its stage and bool fields (:data:`STATE_KEY_FIELDS`); for a guard
    on slot ``r``, also slot ``r``'s phase, status and bool fields. The first time a key is
    met, each guard (each evicting action's precondition) and each invariant is run once on
    the *abstract* state that has those fields and :data:`~kvspec.spec.ops.UNKNOWN`
    everywhere else (arguments included), with the three-valued ops
    (:class:`~kvspec.spec.ops.ThreeValuedOps`). A plain bool result is the value on every
    state with that key, whatever the other fields and arguments: it is kept and used in
    place of the call. Anything else (an unknown result, code that branches on an unknown)
    keeps the call. Sound for code written against the ops interface, i.e. code that also
    runs on z3 variables (the rule in docs/model.md, "One spec, two readings"). An evicting
    action's demand is learnt the same way where its precondition holds: a plain 0 makes the
    value :data:`EVICTS_NOTHING` (no victims to compute).

    Per state key (the whole tuple of the state's and every slot's key), the guards' values
    form a *plan*, looked up once per pick. Plans are kept least recently used first and at
    most ``max_plans`` of them (:data:`PLAN_CACHE_SIZE`): a dropped plan is rebuilt from the
    per-slot values, which are kept for good (their number grows with the slots, not with
    their product). A plan is a function of its key, so the bound changes no value and no
    draw. Cost: one abstract call per guard and invariant per new key (a walk meets a few
    hundred keys); then one key per state and list lookups.

    Raises:
        InvalidArgument: ``max_plans`` < 1.
    """

    def __init__(self, m: Model, max_plans: int = PLAN_CACHE_SIZE) -> None:
        if max_plans < 1:
            raise InvalidArgument(f"DecidedGuards: max_plans={max_plans} must be >= 1")
        self._acts = m.actions
        self._n = m.config.num_requests
        concrete = m.ctx.o
        assert isinstance(concrete, ConcreteOps)
        self._ctx = dataclasses.replace(m.ctx, o=ThreeValuedOps(concrete))
        s0 = m.initial()
        q0 = s0.reqs[0]
        self._state_fields = tuple(
            f for f in (*STATE_KEY_FIELDS, *sorted(STATE_BOOL_FIELDS)) if f in State._fields)
        self._req_fields = tuple(
            f for f in (*REQ_KEY_FIELDS, *sorted(REQ_BOOL_FIELDS)) if f in Req._fields)
        self._state_key = operator.attrgetter(*self._state_fields)
        self._req_key = operator.attrgetter(*self._req_fields)
        self._unknown_req = q0._replace(**{f: UNKNOWN for f in Req._fields})
        unknown: dict[str, Any] = {f: UNKNOWN for f in State._fields if f != "reqs"}
        self._unknown_state = s0._replace(**unknown)
        self._ids: dict[Any, int] = {}
        self._values: dict[tuple[int, int, int, int], PlanValue] = {}
        self._plans: OrderedDict[tuple[int, ...], list[Sequence[PlanValue]]] = OrderedDict()
        self._max_plans = max_plans
        # one object per distinct plan row, shared by the plans that have it (kept for good:
        # 725 rows for 15,847 plans after 30,000 steps at 6 requests)
        self._rows: dict[tuple[PlanValue, ...], tuple[PlanValue, ...]] = {}
        self._checks: dict[int, list[tuple[str, Any]]] = {}
        self._last: tuple[State | None, tuple[int, ...]] = (None, ())
        self.off = [(False,) * (self._n if a.per_request else 1) for a in self._acts]
        """Per action, its plan entry when the key decides its guard False on every slot
        (the same object each time: compare with ``is``)."""

    def _id(self, key: Any) -> int:
        """A small int naming ``key`` (the same one every time)."""
        return self._ids.setdefault(key, len(self._ids))

    def _key(self, s: State) -> tuple[int, ...]:
        """(state key id, each slot's key id) of ``s``. The last state's key is kept, and a
        slot whose record is the last state's (an effect replaces only what it changes)
        keeps its key id."""
        last, key = self._last
        if s is last:
            return key
        ids = self._ids
        req_key = self._req_key
        before = last.reqs if last is not None else ()
        out = [ids.setdefault(self._state_key(s), len(ids))]
        for j, q in enumerate(s.reqs):
            if j < len(before) and q is before[j]:
                out.append(key[1 + j])
            else:
                out.append(ids.setdefault(req_key(q), len(ids)))
        key = tuple(out)
        self._last = (s, key)
        return key

    def _abstract(self, state_key: Any, r: int | None, req_key: Any) -> State:
        """The abstract state with the key's fields and UNKNOWN elsewhere."""
        reqs = [self._unknown_req] * self._n
        if r is not None:
            reqs[r] = self._unknown_req._replace(**dict(zip(self._req_fields, req_key)))
        return self._unknown_state._replace(reqs=tuple(reqs),
                                            **dict(zip(self._state_fields, state_key)))

    def guards(self, s: State) -> list[Sequence[PlanValue]]:
        """For state ``s``, per action (registry order) and slot: the value of the guard
        (an evicting action's precondition) for every argument tuple when the key decides
        it, else None; :data:`EVICTS_NOTHING` (truthy) for an evicting action whose
        precondition holds and whose demand the key decides to be 0; ``off[i]`` for an
        action decided False on every slot."""
        key = self._key(s)
        plans = self._plans
        plan = plans.get(key)
        if plan is None:
            plan = [self._plan(i, s, key) for i in range(len(self._acts))]
            if len(plans) >= self._max_plans:
                plans.popitem(last=False)
            plans[key] = plan
        else:
            plans.move_to_end(key)
        return plan

    def _plan(self, i: int, s: State, key: tuple[int, ...]) -> Sequence[PlanValue]:
        a = self._acts[i]
        slots = range(self._n) if a.per_request else range(1)
        values = []
        for r in slots:
            vkey = (i, r, key[0], key[1 + r])
            if vkey not in self._values:
                self._values[vkey] = self._learn_guard(a, r, s)
            values.append(self._values[vkey])
        if all(v is False for v in values):
            return self.off[i]
        row = tuple(values)
        return self._rows.setdefault(row, row)

    def _learn_guard(self, a: Action, r: int, s: State) -> PlanValue:
        guard = a.precondition if a.demand is not None else a.guard
        assert guard is not None
        args = {p.name: UNKNOWN for p in a.params if p.kind != "slots"}
        abstract = self._abstract(self._state_key(s), r, self._req_key(s.reqs[r]))
        value = _plain(guard, self._ctx, abstract, r, **args)
        if value is True and a.demand is not None:
            try:
                demand = a.demand(self._ctx, abstract, r)
            except Exception:
                demand = None
            if type(demand) is int and demand == 0:
                return EVICTS_NOTHING
        return value

    def checks(self, s: State, props: Sequence[tuple[str, Any]]
               ) -> list[tuple[str, Any]]:
        """For state ``s``, ``props`` (``(id, check)`` pairs, the same sequence on every
        call) less those its key decides to hold; a property its key decides to be violated
        has ``None`` for its check. In the order of ``props``."""
        sid = self._key(s)[0]
        got = self._checks.get(sid)
        if got is None:
            abstract = self._abstract(self._state_key(s), None, None)
            got = []
            for pid, check in props:
                value = _plain(check, self._ctx, abstract)
                if value is not True:
                    got.append((pid, None if value is False else check))
            self._checks[sid] = got
        return got


_MISSING = object()


def _plain(f: Callable[..., Any], *args: Any, **kwargs: Any) -> bool | None:
    """``f(*args, **kwargs)`` when that is a plain bool; None when it is anything else or
    raises."""
    try:
        value = f(*args, **kwargs)
    except Exception:
        return None
    return value if value is True or value is False else None


def _argument_free_value(guard: Callable[..., Any], c: Ctx, s: State, r: int,
                         unknown: dict[str, Any]) -> bool | None:
    """The guard's value on slot ``r`` of ``s`` for *every* argument tuple when it does not
    depend on the arguments there, else None.

    The guard runs once, on the concrete ops, with every argument
    :data:`~kvspec.spec.ops.UNKNOWN`: arithmetic and comparisons on an argument give it
    back and its truth value raises (as a z3 variable's does), so a plain bool returned
    without an exception was computed without the arguments' values (the guard is written
    against the ops interface, to run on z3 variables too). Cost: one guard call."""
    return _plain(guard, c, s, r, **unknown)


def violates(trace: Trace, property_id: str) -> Trace | None:
    """Replay ``trace`` skipping steps the model no longer allows; the executed prefix up to
    the first violation of ``property_id``, or None if it is never violated."""
    m = trace.model()
    s = m.initial()
    kept: list[Step] = []
    for st in trace.steps:
        a = m.action(st.action)
        if a.demand is not None and "demote" not in st.args:
            args = _rechosen(m, s, st)
        else:
            args = st.args if m.enabled(s, st.action, st.r, **st.args) else _rechosen(m, s, st)
        if args is None:
            continue
        s, res = m.step(s, st.action, st.r, **args)
        kept.append(Step(st.action, st.r, args, None if res is None else bool(res)))
        if property_id in m.violations(s):
            return Trace(trace.policy, trace.config, tuple(kept), (property_id,), trace.source,
                         trace.abstract_rest)
    return None


def _rechosen(m: Model, s: State, st: Step) -> dict[str, Any] | None:
    """For a step whose recorded victims no longer fit (an earlier step was dropped), the
    same call with the first admissible ``demote`` vector; None if the action is disabled."""
    a = m.action(st.action)
    fixed = {k: v for k, v in st.args.items() if k != "demote"}
    options = m.victim_options(s, a, st.r, fixed)
    return {**fixed, "demote": options[0]} if options else None


def lower_arguments(trace: Trace, property_id: str) -> Trace:
    """``trace`` with each integer argument lowered as far as it keeps violating
    ``property_id`` at no greater length (used on BMC traces for readable values)."""
    best = violates(trace, property_id)
    if best is None:
        raise InvalidArgument(f"trace does not violate {property_id}")
    return with_digests(_lower_arguments(best, property_id))


def shrink_trace(trace: Trace, property_id: str) -> Trace:
    """A locally minimal trace that still violates ``property_id``.

    Delta debugging over steps (chunks, then single steps), then each integer argument lowered
    as far as it goes. Every candidate is validated by a model replay. Cost: O(n^2) replays in
    the worst case for n steps (n is tens here).
    """
    best = violates(trace, property_id)
    if best is None:
        raise InvalidArgument(f"trace does not violate {property_id}; nothing to shrink")
    while True:
        size = (len(best.steps), _weight(best))
        best = _delete_steps(best, property_id)
        best = _lower_arguments(best, property_id)
        if (len(best.steps), _weight(best)) == size:
            break
    return with_digests(best)


def _weight(t: Trace) -> int:
    return sum(v for st in t.steps for v in st.args.values()
               if isinstance(v, int) and not isinstance(v, bool))


def _delete_steps(best: Trace, property_id: str) -> Trace:
    """Delta debugging: drop chunks of steps (halving the chunk size) while it still fails."""
    chunk = max(1, len(best.steps) // 2)
    while chunk >= 1:
        i = 0
        while i < len(best.steps):
            cand = _with_steps(best, best.steps[:i] + best.steps[i + chunk:])
            got = violates(cand, property_id)
            if got is not None and len(got.steps) < len(best.steps):
                best = got
            else:
                i += chunk
        chunk //= 2
    return best


def _lower_arguments(best: Trace, property_id: str) -> Trace:
    """Lower each integer argument as far as the trace keeps failing (no longer)."""
    improved = True
    while improved:
        improved = False
        for i, st in enumerate(best.steps):
            for name, v in st.args.items():
                if isinstance(v, bool) or not isinstance(v, int):
                    continue
                for smaller in range(0, v):
                    args = {**st.args, name: smaller}
                    steps = best.steps[:i] + (Step(st.action, st.r, args),) + best.steps[i + 1:]
                    got = violates(_with_steps(best, steps), property_id)
                    if got is not None and len(got.steps) <= len(best.steps):
                        best, improved = got, True
                        break
                if improved:
                    break
            if improved:
                break
    return best


def _with_steps(t: Trace, steps: Sequence[Step]) -> Trace:
    return Trace(t.policy, t.config, tuple(steps), t.violated, t.source, t.abstract_rest)
