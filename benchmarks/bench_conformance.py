"""Conformance throughput: lockstep model + reference steps/s (walker and hypothesis tiers)
and small-scope exhaustive BFS (states, behaviours, time).

    python benchmarks/bench_conformance.py [--json PATH] [--walks N] [--policy P]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time

from kvspec.config import Config
from kvspec.conformance import impls
from kvspec.conformance.check import hypothesis_tier, walk
from kvspec.conformance.exhaustive import explore
from kvspec.conformance.lockstep import Lockstep
from kvspec.conformance.walker import Sampler
from kvspec.policy import get_policy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None, help="write results to this path")
    ap.add_argument("--walks", type=int, default=200, help="walker walks of 60 steps")
    ap.add_argument("--hypothesis-examples", type=int, default=50)
    ap.add_argument("--policy", default="pr13805-reviewed")
    a = ap.parse_args(argv)
    pol = get_policy(a.policy)
    out: dict[str, object] = {"nproc": os.cpu_count(), "python": sys.version.split()[0],
                              "platform": platform.platform(), "policy": pol.name}
    for label, cfg in (("default", Config()),):
        w = walk(impls.reference, (cfg,), pol, walks=a.walks, seed=0)
        out[f"walker_{label}"] = {"steps": w.steps, "seconds": round(w.seconds, 3),
                                  "steps_per_s": round(w.steps_per_second)}
    t0 = time.perf_counter()
    ls = Lockstep(impls.reference, Config(), pol, check_structure=False)
    smp = Sampler(ls.model, random.Random(0))
    n = 0
    for _ in range(a.walks * 60):
        if n % 60 == 0:
            ls = Lockstep(impls.reference, Config(), pol, check_structure=False)
            smp = Sampler(ls.model, random.Random(n))
        step = smp.draw(ls.state)
        assert step is not None
        assert ls.step(*step) is None
        n += 1
    dt = time.perf_counter() - t0
    out["walker_no_structure"] = {"steps": n, "seconds": round(dt, 3),
                                  "steps_per_s": round(n / dt)}
    h = hypothesis_tier(impls.reference, Config(), pol, examples=a.hypothesis_examples, seed=0)
    out["hypothesis"] = {"steps": h.steps, "seconds": round(h.seconds, 3),
                         "steps_per_s": round(h.steps_per_second)}
    small = Config(num_gpu_pages=2, num_host_pages=1, num_requests=1, tokens_per_block=2,
                   max_prompt_len=2, max_draft_len=1)
    ex = explore(impls.reference, pol, small)
    two = Config(num_gpu_pages=2, num_host_pages=1, num_requests=2, tokens_per_block=2,
                 max_prompt_len=2, max_draft_len=0)
    ex2 = explore(impls.reference, pol, two, max_depth=10)
    for key, e in (("exhaustive_N1", ex), ("exhaustive_N2_depth10", ex2)):
        out[key] = {"states": e.states, "behaviours": e.behaviours,
                    "transitions": e.transitions, "replayed_steps": e.replayed_steps,
                    "bfs_seconds": round(e.bfs_seconds, 3), "seconds": round(e.seconds, 3),
                    "bounded": e.bounded, "reason": e.bounded_reason, "ok": e.ok}
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
