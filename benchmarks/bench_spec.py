"""Figures of the model: z3 matrix time, counterexample times, fuzzing throughput, shrink quality.

    python benchmarks/bench_spec.py [--seeds 5] [--hypothesis-examples 1000] [--json PATH]

Measures, side by side in one run:
  * the whole default policy x invariant matrix (median over z3 random seeds),
  * each refuted cell's shortest counterexample (BMC time, median over seeds),
  * walker steps/s (model only; with and without witness tracking), hypothesis steps/s,
  * for every refuted cell, hypothesis's shrunk length (raw and after the trace shrinker)
    next to the BMC minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import z3
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from kvspec.config import Config
from kvspec.policy import PRESETS, get_policy
from kvspec.spec.invariants import PROPERTIES, get_property
from kvspec.spec.machine import find_counterexample, make_state_machine
from kvspec.spec.prove import bmc, prove_matrix
from kvspec.spec.walker import shrink_trace, walk


def matrix_times(seeds: int) -> tuple[list[float], dict[str, list[float]], object]:
    totals: list[float] = []
    cex: dict[str, list[float]] = {}
    mat = None
    for seed in range(1, seeds + 1):
        z3.set_param("smt.random_seed", seed)
        t0 = time.perf_counter()
        mat = prove_matrix(Config(), list(PRESETS.values()))
        totals.append(time.perf_counter() - t0)
        for (pol, inv), v in mat.cells.items():
            if v.status == "REFUTED":
                t1 = time.perf_counter()
                bmc(Config(), get_policy(pol), [get_property(inv)], max_depth=14)
                cex.setdefault(f"{pol}/{inv}", []).append(time.perf_counter() - t1)
    z3.set_param("smt.random_seed", 0)
    return totals, cex, mat


def walker_rates(steps: int) -> dict[str, float]:
    pol = get_policy("pr13805-reviewed")
    out = {}
    for label, wit in (("walker_no_witnesses", False), ("walker_with_witnesses", True)):
        rates = [walk(Config(), pol, steps=steps, seed=s, witnesses=wit, shrink=False)
                 .steps_per_second for s in range(3)]
        out[label] = statistics.median(rates)
    return out


def hypothesis_rate(examples: int) -> float:
    """Steps per second of the generated RuleBasedStateMachine (derandomized, 50 steps)."""
    t0 = time.perf_counter()
    steps = _count_steps(examples)
    return steps / (time.perf_counter() - t0)


def _count_steps(examples: int) -> int:
    total = {"n": 0}
    base = make_state_machine(Config(), get_policy("pr13805-reviewed"))

    class Counting(base):  # type: ignore[valid-type, misc]
        def teardown(self) -> None:
            total["n"] += len(self.driver.steps)

    run_state_machine_as_test(Counting, settings=settings(
        max_examples=examples, stateful_step_count=50, database=None, deadline=None,
        derandomize=True))
    return total["n"]


def shrink_table(mat: object, hyp_examples: int) -> list[dict[str, object]]:
    rows = []
    for (pol, inv), v in mat.cells.items():  # type: ignore[attr-defined]
        if v.status != "REFUTED":
            continue
        t0 = time.perf_counter()
        found = find_counterexample(v.trace.config, get_policy(pol), get_property(inv),
                                    max_examples=hyp_examples)
        hyp_s = time.perf_counter() - t0
        raw = None if found is None else len(found)
        post = None if found is None else len(shrink_trace(found, inv))
        rows.append({"cell": f"{pol}/{inv}", "bmc": v.length, "hypothesis_raw": raw,
                     "hypothesis_shrunk": post, "hypothesis_seconds": round(hyp_s, 1),
                     "within_bmc_plus_2": post is not None and post <= v.length + 2})
        print(f"  {pol}/{inv}: bmc={v.length} hypothesis={raw} after shrinker={post} "
              f"({hyp_s:.1f}s)", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--walk-steps", type=int, default=30_000)
    ap.add_argument("--hypothesis-examples", type=int, default=1_000)
    ap.add_argument("--skip-shrink-table", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    machine = {"nproc": os.cpu_count(), "python": platform.python_version(),
               "z3": z3.get_version_string(), "platform": platform.platform()}
    print(f"machine: {machine}", flush=True)
    totals, cex, mat = matrix_times(a.seeds)
    med = statistics.median(totals)
    print(f"matrix ({len(PRESETS)} policies x {len(PROPERTIES)} invariants): median "
          f"{med:.2f}s over {a.seeds} z3 seeds (min {min(totals):.2f}, max {max(totals):.2f})")
    cex_med = {k: statistics.median(v) for k, v in cex.items()}
    for k, v in cex_med.items():
        print(f"  shortest counterexample {k}: {v:.2f}s")
    rates = walker_rates(a.walk_steps)
    for k, v in rates.items():
        print(f"{k}: {v:,.0f} steps/s")
    hyp = hypothesis_rate(50)
    print(f"hypothesis tier: {hyp:,.0f} steps/s")
    table = [] if a.skip_shrink_table else shrink_table(mat, a.hypothesis_examples)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "matrix_seconds": totals, "matrix_median": med,
                       "counterexample_seconds_median": cex_med, **rates,
                       "hypothesis_steps_per_second": hyp, "shrink_table": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
