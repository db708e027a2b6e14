"""The volume tier: a seeded random walker over the model's actions, and a trace shrinker.

hypothesis costs ~100x per step; the walker runs the same actions in a plain loop (rejection
sampling of action, slot and arguments against the guards) for tens of thousands of steps per
second. A violation is never a bare seed: it becomes a :class:`~kvspec.spec.trace.Trace`,
shrunk by :func:`shrink_trace` (delta debugging over steps, then smaller arguments), replayable
with ``kvspec replay``. The walker also counts each property's "sometimes" witness.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy

from .invariants import PROPERTIES, Property
from .model import Model, transition
from .state import State
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

    Cost: one model step plus the invariant checks per step (tens of microseconds).

    Raises:
        InvalidArgument: ``steps`` < 0 or ``walk_length`` < 1.
    """
    if steps < 0 or walk_length < 1:
        raise InvalidArgument(f"walk: steps={steps} must be >= 0, walk_length={walk_length} >= 1")
    m = Model(config, policy)
    rng = random.Random(seed)
    pick = _picker(m, rng)
    out = WalkResult()
    props = [p for p in properties]
    wit = [p for p in PROPERTIES if p.applies(policy)] if witnesses else []
    t0 = time.perf_counter()
    s = m.initial()
    path: list[Step] = []
    notify = progress if progress is not None else _no_progress
    next_report = PROGRESS_EVERY if progress is not None else steps + 1
    try:
        while out.steps < steps:
            if out.steps >= next_report:
                next_report += PROGRESS_EVERY
                notify(out.steps, steps)
            chosen = pick(s)
            if chosen is None or len(path) >= walk_length:
                s, path = m.initial(), []
                continue
            name, r, args = chosen
            # the picker returns enabled steps only: apply the effect without re-checking
            nxt, res = transition(m.ctx, m.action(name), s, r, args)
            path.append(Step(name, r, args, None if res is None else bool(res)))
            out.steps += 1
            out.actions[name] += 1
            if wit:
                for p in wit:
                    if p.witness(m.ctx, s, nxt):
                        out.witnesses[p.id] += 1
                        if out.witnesses[p.id] >= WITNESS_SATURATION:
                            wit = [w for w in wit if w is not p]
            s = nxt
            bad = [p.id for p in props if not p.check(m.ctx, s)]
            if bad:
                for pid in bad:
                    if pid not in out.counterexamples:
                        trace = Trace(policy, config, tuple(path), (pid,),
                                      f"walker(seed={seed})")
                        # kept unshrunk first: an interrupt during shrinking keeps it
                        out.counterexamples[pid] = with_digests(trace)
                        if shrink:
                            out.counterexamples[pid] = shrink_trace(trace, pid)
                s, path = m.initial(), []
        notify(out.steps, steps)
    except KeyboardInterrupt:
        out.interrupted = True
    out.seconds = time.perf_counter() - t0
    return out


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
    """Uniform over actions in a random order; for each, one random slot and argument tuple
    against its guard (an evicting action's candidates are enabled already); the first
    enabled wins. A second pass tries every slot and argument
    tuple, so a state with any enabled step always yields one."""
    acts = list(m.actions)
    n = m.config.num_requests
    arguments = m.arguments
    weight = [STAGE_ACTION_WEIGHT if not a.per_request else 1.0 for a in acts]
    order = list(range(len(acts)))
    rand = rng.random

    def pick(s: State) -> tuple[str, int, dict[str, Any]] | None:
        rng.shuffle(order)
        for i in order:
            a = acts[i]
            if weight[i] < 1.0 and rand() > weight[i]:
                continue
            r = int(rand() * n) if a.per_request else 0
            options = arguments(s, a, r)
            if not options:
                continue
            args = options[int(rand() * len(options))]
            if a.demand is not None or a.guard(m.ctx, s, r, **args):
                return a.name, r, args
        for i in order:  # second pass: no weights, every slot, every argument tuple
            a = acts[i]
            for r in a.slots(m.config):
                for args in arguments(s, a, r):
                    if a.demand is not None or a.guard(m.ctx, s, r, **args):
                        return a.name, r, args
        return None

    return pick


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
