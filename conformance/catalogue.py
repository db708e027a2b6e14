"""The bug catalogue, run: every known bug as a row, each found by independent checkers.

A row is either a protocol bug of TensorRT-LLM (a policy preset under which the model itself
violates an invariant; docs/bugs.md) or an implementation slip (a broken manager of
:mod:`kvspec.conformance.broken`, among them the peers' misuse bugs: a double free, a stale free
after reuse). Each row names the checkers that apply to it:

- protocol bugs: ``bmc`` (z3 bounded model checking on the preset, shortest counterexample),
  ``walker`` (the model's seeded random walks, shrunk), ``hypothesis`` (the model's
  hypothesis state machine, shrunk by hypothesis), ``exhaustive`` (BFS over the small-scope
  states for a shortest violating behaviour, then that behaviour replayed on the reference
  manager, which must show the same violation in lockstep);
- implementation slips: ``check-walker`` and ``check-hypothesis`` (the two tiers of
  ``kvspec check`` on the broken manager, shrunk; ``check-hypothesis`` runs the tier at
  ``kvspec check``'s default size, :data:`HYPOTHESIS_RUN` examples, with seeds 0, 1, ...
  until a run finds the bug), ``exhaustive`` (``kvspec explore``: every small-scope behaviour
  replayed on it).

Each checker runs until its first detection or its budget; the result records whether it
found the bug, the seconds it took (including shrinking: an upper bound of the time to first
detection) and the length of what it reports. A row needs two detections
(:data:`MIN_DETECTIONS`). Nothing here prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import get_policy
from kvspec.spec.invariants import get_property
from kvspec.spec.machine import find_counterexample
from kvspec.spec.prove import bmc_search
from kvspec.spec.walker import shrink_trace, walk

from . import broken, impls
from .check import DEFAULT_EXAMPLES, DEFAULT_WALK_LENGTH, run_check
from .exhaustive import explore, shortest_violation
from .lockstep import Lockstep

MIN_DETECTIONS = 2
"""Independent checkers that must find each row's bug."""

PROTOCOL_CHECKERS = ("walker", "exhaustive", "bmc", "hypothesis")
IMPL_CHECKERS = ("check-walker", "exhaustive", "check-hypothesis")
"""The checkers of each kind of row, cheapest first (a bounded run stops at the second
detection)."""
CHECKERS = ("bmc", "walker", "hypothesis", "check-walker", "check-hypothesis", "exhaustive")

_SMALL = Config(num_requests=1, tokens_per_block=2, num_gpu_pages=4, num_host_pages=1,
                max_prompt_len=3, max_draft_len=1)
"""The small scope's one-request config: BFS and the model's walks start here."""


@dataclass(frozen=True)
class Bug:
    """One catalogue row.

    ``invariant`` set: a protocol bug the model shows under ``policy``; ``impl`` set: the
    broken manager (a key of :data:`kvspec.conformance.broken.BROKEN`) that checkers must
    catch under ``policy``. ``config``: the small config the model's checkers and the
    exhaustive search run (the ``kvspec check`` tiers cycle their own built-in configs).
    ``check_policy``: the preset the ``kvspec check`` tiers run, when not ``policy`` (a slip
    several presets show, each search under the one where it finds it soonest).
    """

    id: str
    title: str
    source: str
    policy: str
    invariant: str | None = None
    impl: str | None = None
    config: Config = _SMALL
    check_policy: str | None = None

    @property
    def kind(self) -> str:
        """``"protocol"`` or ``"implementation"``."""
        return "protocol" if self.invariant else "implementation"

    @property
    def checkers(self) -> tuple[str, ...]:
        """The checkers that apply to the row."""
        return PROTOCOL_CHECKERS if self.invariant else IMPL_CHECKERS


BUGS: tuple[Bug, ...] = (
    Bug("stale-snapshot", "a failed resize leaves a stale py_ctx_pre_resize_cap; a rollback"
        " consumes it and discards valid KV", "TensorRT-LLM bug 1 (PR 13805 review)",
        "stale-snapshot", invariant="NO-STALE-SNAPSHOT",
        config=_SMALL.replace(tokens_per_block=1, num_gpu_pages=2, num_host_pages=0)),
    Bug("skip-keeps-context-growth", "the can_queue skip reverts generation growth only",
        "TensorRT-LLM bug 2 (PR 13805 review)", "pr13805", invariant="NO-DEFERRED-HOLD"),
    Bug("swa-rewind", "a context revert under SWA scratch reuse shrinks past the rewind"
        " window", "TensorRT-LLM bug 3 (why PR 14849 withdrew the revert)",
        "pr13805-reviewed-swa", invariant="SWA-REWIND"),
    Bug("deferred-hold", "deferred context requests keep their growth for the wait window",
        "PR 14849 (the cost PR 13805 removed)", "pr14849", invariant="NO-DEFERRED-HOLD"),
    Bug("generation-accumulates", "generation growth accumulates on can_queue skips",
        "TensorRT-LLM bug 5 (before PR 13104)", "pre-pr13104",
        invariant="GEN-EXACTLY-ONCE", config=_SMALL.replace(num_gpu_pages=2)),
    Bug("draft-record-on-failure", "the draft length is recorded before the resize: a failed"
        " try_allocate_generation leaves a record", "TensorRT-LLM bug 6",
        "draft-before-resize", invariant="INV-ATOMIC", config=_SMALL.replace(num_gpu_pages=2)),
    Bug("revert-never-grown", "the skip reverts a generation growth that never happened,"
        " shrinking below history", "TensorRT-LLM bug 7", "draft-before-resize",
        invariant="INV-LEN", config=_SMALL.replace(num_gpu_pages=2)),
    Bug("refused-revert-consumes", "a revert refused by the SWA assertion has already"
        " consumed the snapshot", "TensorRT-LLM, May 2026 (docs/fidelity.md)",
        "trtllm-2026-05", invariant="INV-ATOMIC"),
    Bug("double-free", "a second free_resources returns the pages to the pool again",
        "vLLM BlockPool V2, SGLang S1 (peers.md)", "pr13805-reviewed",
        impl="corrupting_double_free"),
    Bug("stale-free-after-reuse", "a stale free_resources releases pages another request"
        " now holds", "vLLM V7/V9, SGLang S1 aliasing (peers.md)", "pr13805-reviewed",
        impl="stale_free_after_reuse",
        config=Config(num_requests=2, tokens_per_block=2, num_gpu_pages=2, num_host_pages=0,
                      max_prompt_len=3, max_draft_len=0)),
    Bug("shrink-below-snapshot", "a SHRINK revert lands one token below the snapshot",
        "REVERT-FLOOR slip", "pr13805-reviewed", impl="shrink_below_snapshot",
        config=_SMALL.replace(tokens_per_block=1)),
    Bug("releases-the-head", "a shrink releases the first pages of the table, not the last",
        "kept-page slip", "pr13805-reviewed", impl="releases_the_head",
        config=_SMALL.replace(tokens_per_block=1)),
    Bug("swa-assert-skipped", "the SHRINK revert skips the rewind-window assertion",
        "SWA-REWIND slip", "pr13805", impl="swa_assert_skipped"),
    Bug("snapshot-without-growth", "resize_context writes the snapshot when it did not grow",
        "snapshot slip under pr14849", "pr14849", impl="snapshot_without_growth"),
    Bug("one-token-fast-path", "with tokens_per_block 1 generation growth skips the room"
        " check", "B = 1 fast-path slip", "pr13805-reviewed",
        impl="one_token_generation_fast_path",
        config=_SMALL.replace(tokens_per_block=1, num_gpu_pages=2)),
    Bug("recall-needs-slack", "a recall refuses when evictable pages cover the shortfall"
        " exactly", "host-tier pressure slip", "pr13805-reviewed", impl="recall_needs_slack",
        check_policy="pr13805",
        config=Config(num_requests=2, tokens_per_block=1, num_gpu_pages=2, num_host_pages=2,
                      max_prompt_len=2, max_draft_len=0)),
    Bug("batch-first-only", "update_context_resources updates only the first request of a"
        " batch", "batched update slip", "pr13805-reviewed", impl="first_context_only",
        config=Config(num_requests=2, tokens_per_block=1, num_gpu_pages=2, num_host_pages=0,
                      max_prompt_len=1, max_draft_len=0)),
    Bug("resume-gate-at-limit", "the resume gate refuses at exactly max_util_for_resume",
        "RESUME-GATE slip", "pr13805-reviewed", impl="resume_gate_at_limit",
        config=Config(num_requests=2, tokens_per_block=1, num_gpu_pages=2, num_host_pages=1,
                      max_prompt_len=1, max_draft_len=0, max_util_for_resume=Fraction(1, 2))),
)
"""The rows, protocol bugs first. docs/bugs.md explains each."""


HYPOTHESIS_RUN = DEFAULT_EXAMPLES // 5
"""Examples per run of the ``check-hypothesis`` checker: the hypothesis tier's budget in a
default ``kvspec check`` (20). Ten runs of this size found the 8 rows that one run of 200
examples finds at seed 0, on each of 9 seed ranges tried, and sooner (median); the one run
found only 7 on 4 of 6 seeds (docs/performance.md, "check-hypothesis time to first detection
(session 7)"). Hypothesis starts its target phase halfway through a run, where the tier
finds most of its late rows: in runs of 20 that is at example 10, not 100."""


@dataclass(frozen=True)
class Budget:
    """How far each checker searches before it gives up on a row.

    ``walker_steps``: model walker steps (in chunks of ``walker_chunk``, a fresh seed each);
    ``hypothesis_examples``: examples of the model's machine; ``bmc_depth``: BMC depth;
    ``check_examples``: walks of :data:`~kvspec.conformance.check.DEFAULT_WALK_LENGTH` steps
    in the ``check-walker`` tier, as ``kvspec check`` runs them; ``check_hypothesis_runs``:
    runs of the hypothesis tier of :data:`HYPOTHESIS_RUN` examples each (seeds 0, 1, ...)
    in ``check-hypothesis``; ``max_states``: BFS states. ``stop_after``: a row stops once
    this many checkers found it (None: every checker runs).
    """

    walker_steps: int = 200_000
    walker_chunk: int = 2_000
    hypothesis_examples: int = 3_000
    bmc_depth: int = 12
    check_examples: int = 400
    check_hypothesis_runs: int = 10
    max_states: int = 50_000
    stop_after: int | None = None


FULL = Budget()
QUICK = Budget(walker_steps=20_000, hypothesis_examples=300, bmc_depth=10, check_examples=100,
               check_hypothesis_runs=5, max_states=3_000, stop_after=MIN_DETECTIONS)
"""The bounded form CI runs: every row, smaller budgets, cheapest checkers first, each row
stopping at its second detection. Rows in :data:`FULL_ONLY` reach their second detection
only at the full budget."""

FULL_ONLY = frozenset({"recall-needs-slack"})
"""Rows a single checker finds within :data:`QUICK` (the walker tier of ``check``, in
seconds); the second, the exhaustive search, needs two requests and about 26,000 states
(the complete small scope of its config, ~20 s)."""


@dataclass(frozen=True)
class Detection:
    """One checker on one row: ``found``; ``seconds`` until it returned (search plus
    shrinking); ``length``: steps of the counterexample or divergence it reports (None when
    not found); ``note``: one line (what bounded a miss, or what the replay showed)."""

    checker: str
    found: bool
    seconds: float
    length: int | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"checker": self.checker, "found": self.found,
                "seconds": round(self.seconds, 3), "length": self.length, "note": self.note}


@dataclass
class RowResult:
    """A row and what each of its checkers did."""

    bug: Bug
    detections: list[Detection] = field(default_factory=list)

    @property
    def found_by(self) -> list[str]:
        """The checkers that found the bug."""
        return [d.checker for d in self.detections if d.found]

    @property
    def ok(self) -> bool:
        """At least :data:`MIN_DETECTIONS` checkers found it."""
        return len(self.found_by) >= MIN_DETECTIONS

    def to_json(self) -> dict[str, Any]:
        b = self.bug
        return {"id": b.id, "title": b.title, "source": b.source, "kind": b.kind,
                "policy": b.policy, "invariant": b.invariant, "impl": b.impl, "ok": self.ok,
                "found_by": self.found_by,
                "detections": [d.to_json() for d in self.detections]}


@dataclass
class CatalogueResult:
    """Every row's result; ``ok`` when each row has :data:`MIN_DETECTIONS` detections."""

    rows: list[RowResult]
    budget: str
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """Every row run has :data:`MIN_DETECTIONS` detections (and none was cut short)."""
        return not self.interrupted and all(r.ok for r in self.rows)

    def per_checker(self) -> dict[str, list[float]]:
        """Seconds to detection per checker, over the rows it found."""
        out: dict[str, list[float]] = {}
        for row in self.rows:
            for d in row.detections:
                if d.found:
                    out.setdefault(d.checker, []).append(d.seconds)
        return out

    def render(self) -> str:
        """A table: one line per row, one column per checker (seconds and length, or
        ``miss``), then per-checker medians and maxima and the verdict."""
        width = max(len(r.bug.id) for r in self.rows) if self.rows else 4
        head = f"{'bug':<{width}}  {'kind':<5}  " + "  ".join(f"{c:<16}" for c in CHECKERS)
        lines = [f"kvspec catalogue ({self.budget} budget): {len(self.rows)} rows, each must be"
                 f" found by {MIN_DETECTIONS} independent checkers"
                 + (" (each row stops at its second detection)" if self.budget == "quick"
                    else ""), head, "-" * len(head)]
        for row in self.rows:
            by = {d.checker: d for d in row.detections}
            cells = []
            for c in CHECKERS:
                d = by.get(c)
                cell = "" if d is None else (f"{d.seconds:.2f}s [{d.length}]" if d.found
                                             else "miss")
                cells.append(f"{cell:<16}")
            mark = "" if row.ok else "   <-- found by fewer than two"
            kind = "proto" if row.bug.kind == "protocol" else "impl"
            lines.append(f"{row.bug.id:<{width}}  {kind:<5}  " + "  ".join(cells) + mark)
        lines.append("")
        lines.append("seconds to detection (search + shrinking; [n]: steps reported):")
        for c, secs in self.per_checker().items():
            secs = sorted(secs)
            med = secs[len(secs) // 2] if len(secs) % 2 else (
                secs[len(secs) // 2 - 1] + secs[len(secs) // 2]) / 2
            lines.append(f"  {c:<16} {len(secs):>2} found, median {med:.2f} s,"
                         f" max {secs[-1]:.2f} s")
        for row in self.rows:
            for d in row.detections:
                if d.note and not d.found:
                    lines.append(f"  {row.bug.id} / {d.checker}: {d.note}")
        bad = [r.bug.id for r in self.rows if not r.ok]
        verdict = "OK" if not bad else "FAIL (" + ", ".join(bad) + ")"
        if self.interrupted:
            verdict = "INTERRUPTED" + (f", {verdict}" if bad else "")
        lines.append(f"verdict: {verdict} in {self.seconds:.1f} s")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"budget": self.budget, "ok": self.ok, "seconds": round(self.seconds, 2),
                "interrupted": self.interrupted,
                "min_detections": MIN_DETECTIONS,
                "rows": [r.to_json() for r in self.rows]}


Progress = Callable[[str, str], None]


def run_catalogue(rows: Sequence[str] | None = None, *, budget: Budget = FULL,
                  budget_name: str = "full", checkers: Sequence[str] | None = None,
                  progress: Progress | None = None) -> CatalogueResult:
    """Run each row's checkers (``rows``: ids, default all; ``checkers``: a subset of
    :data:`CHECKERS`, default every one that applies). ``progress(row, checker)`` is called
    before each checker runs.

    Cost: each checker until its first detection or its budget (seconds per row at
    :data:`FULL`, a fraction at :data:`QUICK`). Deterministic searches (fixed seeds). A
    ``KeyboardInterrupt`` ends the run: the result holds the rows done so far (the row being
    run with the checkers it finished) and ``interrupted=True``.

    Raises:
        InvalidArgument: an unknown row id or checker name.
    """
    chosen = _rows(rows)
    wanted = tuple(checkers) if checkers is not None else CHECKERS
    unknown = sorted(set(wanted) - set(CHECKERS))
    if unknown:
        raise InvalidArgument(f"kvspec catalogue: unknown checker(s) {unknown}; known:"
                              f" {', '.join(CHECKERS)}")
    t0 = time.perf_counter()
    out = CatalogueResult([], budget_name)
    try:
        for bug in chosen:
            row = RowResult(bug)
            out.rows.append(row)
            for name in bug.checkers:
                if name not in wanted:
                    continue
                if budget.stop_after is not None and len(row.found_by) >= budget.stop_after:
                    break
                if progress is not None:
                    progress(bug.id, name)
                row.detections.append(_run(name, bug, budget))
    except KeyboardInterrupt:
        out.interrupted = True
    out.seconds = time.perf_counter() - t0
    return out


def _rows(ids: Sequence[str] | None) -> list[Bug]:
    if ids is None:
        return list(BUGS)
    by_id = {b.id: b for b in BUGS}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InvalidArgument(f"kvspec catalogue: unknown row(s) {missing}; known:"
                              f" {', '.join(by_id)}")
    return [by_id[i] for i in ids]


def _run(name: str, bug: Bug, budget: Budget) -> Detection:
    t0 = time.perf_counter()
    found, length, note = _CHECKERS[name](bug, budget)
    return Detection(name, found, time.perf_counter() - t0, length if found else None, note)


Outcome = tuple[bool, int | None, str]


def _bmc(bug: Bug, budget: Budget) -> Outcome:
    assert bug.invariant is not None
    res = bmc_search(bug.config, get_policy(bug.policy), [get_property(bug.invariant)],
                     budget.bmc_depth, bug.config.num_requests)
    trace = res.found.get(bug.invariant)
    if trace is not None:
        return True, len(trace.steps), ""
    reason = res.reasons.get(bug.invariant)
    return False, None, reason or f"no counterexample up to depth {budget.bmc_depth}"


def _walker(bug: Bug, budget: Budget) -> Outcome:
    assert bug.invariant is not None
    prop = get_property(bug.invariant)
    done, seed = 0, 0
    while done < budget.walker_steps:
        res = walk(bug.config, get_policy(bug.policy), steps=budget.walker_chunk, seed=seed,
                   properties=(prop,), witnesses=False)
        trace = res.counterexamples.get(bug.invariant)
        if trace is not None:
            return True, len(trace.steps), ""
        done += budget.walker_chunk
        seed += 1
    return False, None, f"not found in {done} steps"


def _hypothesis(bug: Bug, budget: Budget) -> Outcome:
    assert bug.invariant is not None
    trace = find_counterexample(bug.config, get_policy(bug.policy),
                                get_property(bug.invariant),
                                max_examples=budget.hypothesis_examples, seed=0, shrink=False)
    if trace is None:
        return False, None, f"not found in {budget.hypothesis_examples} examples"
    return True, len(shrink_trace(trace, bug.invariant).steps), ""


def _exhaustive_model(bug: Bug, budget: Budget) -> Outcome:
    """BFS's shortest violating behaviour, replayed on the reference: the reference must
    follow it step for step and the lockstep must see the same violation."""
    assert bug.invariant is not None
    policy = get_policy(bug.policy)
    path, states = shortest_violation(policy, bug.config, bug.invariant,
                                      max_states=budget.max_states)
    if path is None:
        return False, None, f"no violation in {states} states"
    lock = Lockstep(impls.reference, bug.config, policy)
    for st in path:
        div = lock.step(st.action, st.r, dict(st.args))
        if div is not None:
            return False, None, f"the reference diverged on the replay at step {div.index}"
    div = lock.flush()
    if div is not None:
        return False, None, f"the reference diverged on the replay at step {div.index}"
    return True, len(path), "replayed on the reference"


def _check_walker(bug: Bug, budget: Budget) -> Outcome:
    assert bug.impl is not None
    report = run_check(broken.BROKEN[bug.impl], bug.check_policy or bug.policy,
                       tiers=("walker",), examples=budget.check_examples,
                       walk_length=DEFAULT_WALK_LENGTH)
    div = report.divergence
    if div is None:
        return False, None, f"OK after {report.steps} steps"
    return True, len(div.trace.steps), ""


def _check_hypothesis(bug: Bug, budget: Budget) -> Outcome:
    """The hypothesis tier as a default ``kvspec check`` runs it (:data:`HYPOTHESIS_RUN`
    examples), with seed 0, 1, ... until a run diverges, at most ``check_hypothesis_runs``
    runs. The note names the seed of the run that found it (``kvspec check --seed``
    reproduces it)."""
    assert bug.impl is not None
    steps = 0
    for seed in range(budget.check_hypothesis_runs):
        report = run_check(broken.BROKEN[bug.impl], bug.check_policy or bug.policy,
                           tiers=("hypothesis",), seed=seed,
                           hypothesis_examples=HYPOTHESIS_RUN)
        div = report.divergence
        if div is not None:
            return True, len(div.trace.steps), f"seed {seed}"
        steps += report.steps
    return False, None, (f"OK after {steps} steps ({budget.check_hypothesis_runs} runs of"
                         f" {HYPOTHESIS_RUN} examples)")


def _exhaustive_impl(bug: Bug, budget: Budget) -> Outcome:
    assert bug.impl is not None
    res = explore(broken.BROKEN[bug.impl], get_policy(bug.policy), bug.config,
                  max_states=budget.max_states)
    if res.divergences:
        return True, res.divergences[0].index, ""
    return False, None, (f"{res.states} states, no divergence"
                         + (f" (bounded: {res.bounded_reason})" if res.bounded else ""))


_CHECKERS: dict[str, Callable[[Bug, Budget], Outcome]] = {
    "bmc": _bmc, "walker": _walker, "hypothesis": _hypothesis,
    "check-walker": _check_walker, "check-hypothesis": _check_hypothesis,
    "exhaustive": lambda bug, budget: (_exhaustive_model(bug, budget) if bug.invariant
                                       else _exhaustive_impl(bug, budget)),
}
