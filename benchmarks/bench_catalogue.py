"""Figures of issue 10's catalogue and coverage (docs/performance.md, "Bug catalogue").

1. ``kvspec catalogue`` at the full budget: per checker, the median and the maximum time to
   detection over the rows it found (search plus shrinking, so an upper bound of the time to
   first detection), and the rows found by fewer than two checkers.
2. The cost of coverage in the lockstep: the walker tier's loop (``Sampler`` + ``Lockstep``
   with the reference) with and without a :class:`~kvspec.spec.coverage.Coverage`, in one
   process, interleaved with the order flipped; CPU time per step.

Usage: ``python benchmarks/bench_catalogue.py [--quick] [--repeats 6] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from interleave import machine_info, run_interleaved

from kvspec.config import Config
from kvspec.conformance import impls
from kvspec.conformance.catalogue import FULL, QUICK, run_catalogue
from kvspec.conformance.lockstep import Lockstep
from kvspec.conformance.walker import Sampler
from kvspec.policy import get_policy
from kvspec.spec.coverage import Coverage


def catalogue(quick: bool) -> dict[str, Any]:
    res = run_catalogue(budget=QUICK if quick else FULL, budget_name="quick" if quick else "full")
    print(res.render(), flush=True)
    per = {c: {"found": len(s), "median_s": statistics.median(s), "max_s": max(s)}
           for c, s in res.per_checker().items()}
    return {"seconds": res.seconds, "ok": res.ok, "per_checker": per,
            "rows": [r.to_json() for r in res.rows]}


def lockstep_block(with_coverage: bool, walks: int = 40, length: int = 120) -> float:
    """CPU seconds per step of ``walks`` seeded lockstep walks (configs cycled as check does)."""
    policy = get_policy("pr13805-reviewed")
    configs = [Config(num_requests=2), Config(num_requests=3, tokens_per_block=1,
                                             num_gpu_pages=4, num_host_pages=2)]
    steps = 0
    coverage = Coverage() if with_coverage else None  # one per tier, as check keeps it
    t = time.process_time()
    for w in range(walks):
        config = configs[w % len(configs)]
        lock = Lockstep(impls.reference, config, policy, coverage=coverage)
        sampler = Sampler(lock.model, random.Random(w))
        for _ in range(length):
            nxt = sampler.draw(lock.state)
            if nxt is None:
                break
            lock.step(*nxt)
            steps += 1
    return (time.process_time() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the catalogue's bounded budget")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--skip-catalogue", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": machine_info()}
    if not args.skip_catalogue:
        out["catalogue"] = catalogue(args.quick)
    runs = run_interleaved({"plain": lambda: lockstep_block(False),
                            "coverage": lambda: lockstep_block(True)}, args.repeats,
                           clock="cpu")
    out["coverage_overhead"] = runs.to_json([("coverage", "plain")])
    for n in runs.names:
        print(f"lockstep {n}: median {runs.median(n) * 1e6:.1f} us/step")
    print("time per step, coverage / plain:", runs.ratio("coverage", "plain"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
