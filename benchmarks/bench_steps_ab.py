"""A/B of step throughput between two installs, interleaved: the model-only walker
(``kvspec.spec.walker.walk``, witnesses off, no shrinking) and the lockstep of the model with
the reference manager (the walker tier's loop: ``Sampler`` + ``Lockstep``, structural checks
every step).

Each variant is a Python interpreter with kvspec installed (this checkout's venv and a venv
with an older commit installed editable). One sample is one subprocess that runs a fixed,
seeded workload and reports its own CPU time per step (``time.process_time`` around the
workload only, so interpreter start-up and imports are excluded). Blocks run interleaved
(``interleave.py``: order flipped every repeat); reported: per-variant medians in steps/s and
the median of the paired ratios B / A of the time per step. Usage:

    python benchmarks/bench_steps_ab.py --a /tmp/venv-old/bin/python --b .venv/bin/python \\
        --repeats 6 [--policy pr13805-reviewed] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from interleave import machine_info, run_interleaved

WALKER = """
import time
from kvspec.config import Config
from kvspec.policy import get_policy
from kvspec.spec.walker import walk
t = time.process_time()
walk(Config(), get_policy({policy!r}), steps={steps}, seed=1, shrink=False, witnesses=False)
print((time.process_time() - t) / {steps})
"""

LOCKSTEP = """
import random, time
from kvspec.config import Config
from kvspec.conformance import impls
from kvspec.conformance.lockstep import Lockstep
from kvspec.conformance.walker import Sampler
from kvspec.policy import get_policy
try:  # guard tables shared by the walks, as kvspec check shares them (where they exist)
    from kvspec.spec.walker import DecidedGuards
except ImportError:
    DecidedGuards = None
config, policy = Config(num_requests=2), get_policy({policy!r})
n = 0
decided = None
t = time.process_time()
for seed in range({walks}):
    rng = random.Random(seed)
    lock = Lockstep(impls.reference, config, policy)
    if DecidedGuards is not None and decided is None:
        decided = DecidedGuards(lock.model)
    sampler = (Sampler(lock.model, rng) if decided is None
               else Sampler(lock.model, rng, None, decided))
    for _ in range(60):
        step = sampler.draw(lock.state)
        if step is None:
            break
        if lock.step(*step) is not None:
            raise SystemExit(f"divergence at seed {{seed}}")
        n += 1
print((time.process_time() - t) / n)
"""


def seconds_per_step(python: str, code: str) -> float:
    """The CPU seconds per step one subprocess reports for ``code``."""
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="interpreter of variant A (the baseline)")
    ap.add_argument("--b", required=True, help="interpreter of variant B")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--policy", default="pr13805-reviewed")
    ap.add_argument("--walker-steps", type=int, default=30_000)
    ap.add_argument("--lockstep-walks", type=int, default=60)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    out: dict[str, Any] = {"machine": machine_info(), "a": a.a, "b": a.b,
                           "command": " ".join(["python", *sys.argv])}
    workloads = {
        "walker": WALKER.format(policy=a.policy, steps=a.walker_steps),
        "lockstep": LOCKSTEP.format(policy=a.policy, walks=a.lockstep_walks),
    }
    for name, code in workloads.items():
        res = run_interleaved(
            {"A": lambda c=code: seconds_per_step(a.a, c),
             "B": lambda c=code: seconds_per_step(a.b, c)},
            a.repeats, warmup=0, clock="cpu")
        out[name] = res.to_json([("B", "A")])
        print(f"{name}: A {1 / res.median('A'):,.0f} steps/s  B {1 / res.median('B'):,.0f}"
              f" steps/s  time per step B/A {res.ratio('B', 'A')}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
