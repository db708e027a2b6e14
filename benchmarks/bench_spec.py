"""Figures of the model: z3 matrix time, counterexample times, fuzzing throughput, shrink quality.

    python benchmarks/bench_spec.py [--seeds 5] [--hypothesis-examples 1000] [--json PATH]
        [--skip-matrix-timing] [--skip-shrink-table] [--only-shrink-table]

Measures in one run:
  * the whole default policy x invariant matrix (median over z3 random seeds),
  * each refuted cell's shortest counterexample (BMC time, median over seeds),
  * walker steps/s (model only), with and without witness tracking, interleaved
    (``interleave.py``: alternating blocks, order flipped every repeat, paired ratio),
  * hypothesis steps/s,
  * for every refuted cell, hypothesis's shrunk length (raw and after the trace shrinker)
    next to the BMC minimum, one run per ``--hypothesis-seeds`` seed (really seeded: see
    ``find_seeded``); a cell hypothesis does not find within the example budget is
    reported as not found in that many examples.

``--skip-matrix-timing`` still runs the matrix once (untimed) to list the refuted cells and
their counterexamples' configs, but times neither the matrix nor BMC.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import z3
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from interleave import CLOCKS, machine_info, run_interleaved

from kvspec.config import Config
from kvspec.policy import PRESETS, get_policy
from kvspec.spec.invariants import PROPERTIES, get_property
from kvspec.spec.machine import make_state_machine
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


def walker_rates(steps: int, repeats: int = 6, clock: str = "cpu") -> dict[str, object]:
    """Walker steps/s with and without witness tracking, interleaved (seed = repeat)."""
    pol = get_policy("pr13805-reviewed")
    seed = {"walker_no_witnesses": 0, "walker_with_witnesses": 0}
    now = CLOCKS[clock]

    def variant(label: str, wit: bool):
        def block() -> float:
            t0 = now()
            r = walk(Config(), pol, steps=steps, seed=seed[label], witnesses=wit,
                     shrink=False)
            seed[label] += 1
            return (now() - t0) / r.steps          # seconds per step
        return block

    res = run_interleaved({"walker_no_witnesses": variant("walker_no_witnesses", False),
                           "walker_with_witnesses": variant("walker_with_witnesses", True)},
                          repeats, warmup=0, clock=clock)
    out: dict[str, object] = {k: 1.0 / res.median(k) for k in res.names}
    ratio = res.ratio("walker_with_witnesses", "walker_no_witnesses")
    out["witness_cost_ratio"] = ratio.to_json()
    out["interleaved"] = res.to_json([("walker_with_witnesses", "walker_no_witnesses")])
    return out


def hypothesis_rate(examples: int, clock: str = "cpu") -> float:
    """Steps per second of the generated RuleBasedStateMachine (derandomized, 50 steps)."""
    now = CLOCKS[clock]
    t0 = now()
    steps = _count_steps(examples)
    return steps / (now() - t0)


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


def find_seeded(config: Config, pol: object, prop: object, max_examples: int,
                seed: int, step_count: int = 30) -> object:
    """``find_counterexample`` with hypothesis's seed really set.

    ``spec.machine.find_counterexample(seed=...)`` seeds Python's global ``random``, which
    hypothesis (6.170) does not read: it seeds from a private ``Random()``, so each call is
    an independent random run. Here the seed goes where ``conformance.check`` puts it
    (``_hypothesis_internal_use_seed`` on the machine), so a row can be reproduced.
    """
    from hypothesis import HealthCheck

    from kvspec.spec.machine import PropertyViolated

    machine = make_state_machine(config, pol, (prop,))  # type: ignore[arg-type]
    machine._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    cfg = settings(max_examples=max_examples, stateful_step_count=step_count, database=None,
                   deadline=None, derandomize=False, report_multiple_bugs=False,
                   suppress_health_check=list(HealthCheck), print_blob=False)
    try:
        run_state_machine_as_test(machine, settings=cfg)
    except PropertyViolated as exc:
        return exc.kvspec_trace
    return None


def shrink_table(mat: object, hyp_examples: int, seeds: list[int],
                 cells: list[str] | None = None) -> list[dict[str, object]]:
    """One row per refuted cell and hypothesis seed (``cells``: only these pol/INV)."""
    rows = []
    for (pol, inv), v in mat.cells.items():  # type: ignore[attr-defined]
        if v.status != "REFUTED" or (cells and f"{pol}/{inv}" not in cells):
            continue
        for seed in seeds:
            t0, c0 = time.perf_counter(), time.process_time()
            found = find_seeded(v.trace.config, get_policy(pol), get_property(inv),
                                hyp_examples, seed)
            hyp_s, hyp_cpu = time.perf_counter() - t0, time.process_time() - c0
            raw = None if found is None else len(found)  # type: ignore[arg-type]
            post = None if found is None else len(shrink_trace(found, inv))  # type: ignore
            rows.append({"cell": f"{pol}/{inv}", "seed": seed, "bmc": v.length,
                         "hypothesis_raw": raw, "hypothesis_shrunk": post,
                         "hypothesis_seconds": round(hyp_s, 1),
                         "hypothesis_cpu_seconds": round(hyp_cpu, 1),
                         "max_examples": hyp_examples, "found": found is not None,
                         "within_bmc_plus_2": post is not None and post <= v.length + 2})
            shown = (f"hypothesis={raw} after shrinker={post}" if found is not None
                     else f"hypothesis: not found in {hyp_examples} examples")
            print(f"  {pol}/{inv} seed {seed}: bmc={v.length} {shown} ({hyp_s:.1f}s wall, "
                  f"{hyp_cpu:.1f}s CPU)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="z3 seeds for the matrix timing")
    ap.add_argument("--walk-steps", type=int, default=30_000, help="walker steps per block")
    ap.add_argument("--walk-repeats", type=int, default=6,
                    help="interleaved walker blocks per variant (seeds 0..N-1)")
    ap.add_argument("--hypothesis-examples", type=int, default=1_000,
                    help="hypothesis example budget per refuted cell (shrink table)")
    ap.add_argument("--hypothesis-seeds", type=int, nargs="+", default=[0],
                    help="hypothesis seeds per refuted cell (one run each)")
    ap.add_argument("--cells", nargs="+", metavar="POLICY/INV",
                    help="shrink table for these refuted cells only")
    ap.add_argument("--skip-shrink-table", action="store_true")
    ap.add_argument("--skip-matrix-timing", action="store_true",
                    help="run the matrix once untimed (to list refuted cells); no BMC timing")
    ap.add_argument("--only-shrink-table", action="store_true",
                    help="the shrink table alone (implies --skip-matrix-timing)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="clock of the interleaved walker blocks (cpu: the thread's CPU time)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    machine = {**machine_info(), "z3": z3.get_version_string()}
    machine["command"] = " ".join(["python", *sys.argv])
    print(f"machine: {machine}", flush=True)
    out: dict[str, object] = {"machine": machine}
    mat = None
    if a.skip_matrix_timing or a.only_shrink_table:
        if not a.skip_shrink_table:
            mat = prove_matrix(Config(), list(PRESETS.values()))
    else:
        totals, cex, mat = matrix_times(a.seeds)
        med = statistics.median(totals)
        print(f"matrix ({len(PRESETS)} policies x {len(PROPERTIES)} invariants): median "
              f"{med:.2f}s over {a.seeds} z3 seeds (min {min(totals):.2f}, "
              f"max {max(totals):.2f})")
        cex_med = {k: statistics.median(v) for k, v in cex.items()}
        for k, v in cex_med.items():
            print(f"  shortest counterexample {k}: {v:.2f}s")
        out.update({"matrix_seconds": totals, "matrix_median": med,
                    "counterexample_seconds_median": cex_med})
    if not a.only_shrink_table:
        rates = walker_rates(a.walk_steps, a.walk_repeats, a.clock)
        for k in ("walker_no_witnesses", "walker_with_witnesses"):
            print(f"{k}: {rates[k]:,.0f} steps/s (median of {a.walk_repeats} interleaved "
                  f"blocks of {a.walk_steps:,} steps)")
        wr = rates["witness_cost_ratio"]
        print(f"witness tracking: {wr['median']:.3f}x the time per step "
              f"(paired, min {wr['min']:.3f}, max {wr['max']:.3f})")
        hyp = hypothesis_rate(50, a.clock)
        print(f"hypothesis tier: {hyp:,.0f} steps/s")
        out.update(rates)
        out["hypothesis_steps_per_second"] = hyp
    if not a.skip_shrink_table:
        out["shrink_table"] = shrink_table(mat, a.hypothesis_examples, a.hypothesis_seeds,
                                           a.cells)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
