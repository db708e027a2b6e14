"""Cost of ``kvspec simulate``: wall and CPU seconds of one policy's run, and how they grow
with the number of requests and the pool size, for the reference and the torch backend.

    python benchmarks/bench_simulate.py [--backend reference|torch] [--requests 10000]
        [--pages 65536] [--sweep-requests 1000,3000,10000] [--sweep-pages 4096,16384,65536]
        [--workload chat] [--policy pr14849] [--json PATH]

The headline run: ``--requests`` requests of the chat workload through a ``--pages`` pool
(goal for the reference backend: 10,000 requests, 65,536 pages, <= 60 s on 2 cores). Then a
sweep over ``--sweep-requests`` (pool ``--pages``) and over ``--sweep-pages`` (``--requests``
of the sweep's smallest size). Engine as the CLI's defaults (32 tokens per page, 256 live
requests, 256 per batch, 8192 tokens per iteration, batch waiting off). The torch backend
runs on CPU torch with one thread (the per-request calls of the executor are fastest there).
Never a timed assertion: it prints the figures and whether the goal was met.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from interleave import machine_info

from kvspec.config import Config
from kvspec.simulate import SimulationOptions, Workload, get_workload, simulate

GOAL_S = 60.0


def one_run(backend: str, workload: str, policy: str, requests: int, pages: int,
            seed: int = 0) -> dict[str, Any]:
    """Simulate once; wall and process CPU seconds, iterations, iterations per second."""
    spec = get_workload(workload).replace(num_requests=requests)
    w = Workload.generated(spec, seed)
    cfg = Config(tokens_per_block=32, num_gpu_pages=pages, num_host_pages=pages,
                 max_util_for_resume=0.95, num_requests=256, max_num_tokens=8192,
                 max_batch_size=256, attention_dp=False,
                 max_prompt_len=max(a.prompt_tokens for a in w.arrivals))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = simulate([policy], w, cfg, seed=seed, options=SimulationOptions(backend=backend))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    s = res.runs[0].summary
    return {"backend": backend, "workload": workload, "policy": policy, "requests": requests,
            "pages": pages, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "iterations": s.iterations, "finished": s.finished,
            "iterations_per_cpu_s": round(s.iterations / cpu, 1) if cpu else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("reference", "torch"), default="reference")
    ap.add_argument("--workload", default="chat")
    ap.add_argument("--policy", default="pr14849")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--pages", type=int, default=65_536)
    ap.add_argument("--sweep-requests", default="1000,3000,10000")
    ap.add_argument("--sweep-pages", default="4096,16384,65536")
    ap.add_argument("--no-headline", action="store_true", help="only the sweeps")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    if args.backend == "torch":
        import torch

        torch.set_num_threads(1)
    out: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "runs": []}

    def record(kind: str, r: dict[str, Any]) -> None:
        r["kind"] = kind
        out["runs"].append(r)
        print(f"{kind:9s} {r['backend']:9s} requests={r['requests']:>7,} pages={r['pages']:>7,}"
              f"  wall {r['wall_s']:8.2f} s  cpu {r['cpu_s']:8.2f} s  iterations"
              f" {r['iterations']:>8,}  it/cpu-s {r['iterations_per_cpu_s']}", flush=True)

    if not args.no_headline:
        r = one_run(args.backend, args.workload, args.policy, args.requests, args.pages)
        record("headline", r)
        if args.backend == "reference":
            met = "met" if r["wall_s"] <= GOAL_S else "NOT met"
            print(f"goal <= {GOAL_S:.0f} s (2 cores): {met} (wall {r['wall_s']:.1f} s, cpu"
                  f" {r['cpu_s']:.1f} s)")
    sizes = [int(x) for x in args.sweep_requests.split(",") if x]
    for n in sizes:
        record("requests", one_run(args.backend, args.workload, args.policy, n, args.pages))
    for g in (int(x) for x in args.sweep_pages.split(",") if x):
        record("pages", one_run(args.backend, args.workload, args.policy, min(sizes), g))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
