"""Conformance throughput: lockstep model + reference steps/s (walker and hypothesis tiers)
and small-scope exhaustive BFS (states, behaviours, time).

    python benchmarks/bench_conformance.py [--json PATH] [--walks N] [--repeats R]
        [--policy P] [--clock cpu|wall]

Lockstep walks (model + reference, the walker tier's loop) with structural checks on and off
are compared interleaved (``interleave.py``): ``repeats`` blocks of ``walks/repeats`` walks
of 60 sampled steps each, the same seeds for both, order flipped every repeat; steps/s from
the median time per step, and the paired on/off cost ratio with its spread.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from interleave import CLOCKS, machine_info, run_interleaved

from kvspec.config import Config
from kvspec.conformance import impls
from kvspec.conformance.check import hypothesis_tier
from kvspec.conformance.exhaustive import explore
from kvspec.conformance.lockstep import Lockstep
from kvspec.conformance.walker import Sampler
from kvspec.policy import get_policy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None, help="write results to this path")
    ap.add_argument("--walks", type=int, default=240,
                    help="walker walks of 60 steps per variant, split over the repeats")
    ap.add_argument("--repeats", type=int, default=8, help="interleaved blocks per variant")
    ap.add_argument("--hypothesis-examples", type=int, default=50)
    ap.add_argument("--policy", default="pr13805-reviewed")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="cpu: the thread's CPU time (robust on a loaded machine), or wall")
    a = ap.parse_args(argv)
    pol = get_policy(a.policy)
    now = CLOCKS[a.clock]
    out: dict[str, object] = {"machine": machine_info(), "policy": pol.name,
                              "command": " ".join(["python", *sys.argv]), "clock": a.clock}
    per_block = max(1, a.walks // a.repeats)
    seeds = {True: 0, False: 0}

    def lockstep_block(check_structure: bool) -> float:
        """``per_block`` walks of 60 sampled steps in lockstep; seconds per step."""
        n = 0
        t0 = now()
        for k in range(per_block):
            ls = Lockstep(impls.reference, Config(), pol, check_structure=check_structure)
            smp = Sampler(ls.model, random.Random(seeds[check_structure] * 1_000 + k))
            for _ in range(60):
                step = smp.draw(ls.state)
                assert step is not None
                assert ls.step(*step) is None
                n += 1
        dt = now() - t0
        seeds[check_structure] += 1
        return dt / n

    res = run_interleaved({"structure_on": lambda: lockstep_block(True),
                           "structure_off": lambda: lockstep_block(False)}, a.repeats,
                          clock=a.clock)
    out["walker_default"] = {"steps_per_s": round(1 / res.median("structure_on")),
                             "steps": per_block * 60 * a.repeats}
    out["walker_no_structure"] = {"steps_per_s": round(1 / res.median("structure_off")),
                                  "steps": per_block * 60 * a.repeats}
    out["walker_interleaved"] = res.to_json([("structure_on", "structure_off")])
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
