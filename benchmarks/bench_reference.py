"""Benchmarks of the CPU reference: page allocate/free per page, and one executor iteration
with 1,000 live requests. Prints a table; ``--json PATH`` also writes the numbers.

Run: ``python benchmarks/bench_reference.py [--json out.json] [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time

from kvspec.config import Config
from kvspec.policy import get_policy
from kvspec.reference import LlmRequest, PagePool
from kvspec.reference.executor import ReferenceExecutor

# Anchor: vLLM v1 BlockPool on a 2-core machine (shared/research/peers.md section 5).
VLLM_ALLOC_NS = 110.0
VLLM_FREE_NS = 190.0


def bench_pool(batch: int, total_pages: int, repeats: int) -> tuple[float, float]:
    """Median ns per page of allocate_n(batch) and free_n(batch) over ``repeats`` runs."""
    calls = max(1, total_pages // batch)
    alloc_ns, free_ns = [], []
    for _ in range(repeats):
        pool = PagePool(calls * batch)
        allocate = pool.allocate_n
        gc.disable()                          # as timeit does: time the operation, not GC
        t0 = time.perf_counter_ns()
        held = [allocate(batch) for _ in range(calls)]
        t1 = time.perf_counter_ns()
        free = pool.free_n
        for pages in held:
            free(pages)
        t2 = time.perf_counter_ns()
        gc.enable()
        alloc_ns.append((t1 - t0) / (calls * batch))
        free_ns.append((t2 - t1) / (calls * batch))
    return statistics.median(alloc_ns), statistics.median(free_ns)


def bench_executor(max_batch_size: int, iterations: int, warmup: int,
                   live: int = 1000) -> dict[str, float]:
    """Median ms of one steady-state iteration with ``live`` generating requests."""
    cfg = Config(tokens_per_block=16, num_gpu_pages=40_000, num_host_pages=40_000,
                 num_requests=live, max_num_tokens=8192, max_batch_size=max_batch_size,
                 attention_dp=False)
    ex = ReferenceExecutor(cfg, get_policy("pr13805-reviewed"), seed=1)
    rng = random.Random(0)
    for i in range(live):
        ex.add_request(LlmRequest(i, prompt_len=rng.randint(16, 512), context_chunk_size=512,
                                  draft_len=rng.randint(0, 3), max_new_tokens=10**9))
    for _ in range(warmup):
        ex.step()
    times, scheduled = [], []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        (res,) = ex.step()
        times.append((time.perf_counter_ns() - t0) / 1e6)
        scheduled.append(len(res.forwarded))
    ex.managers[0].check_integrity()
    return {"median_ms": statistics.median(times), "live_requests": live,
            "forwarded_per_iteration": statistics.median(scheduled),
            "max_batch_size": max_batch_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 15
    pool_rows = []
    for batch, total in ((1, 200_000), (16, 400_000), (100_000, 400_000)):
        a, f = bench_pool(batch, total, repeats)
        pool_rows.append({"batch": batch, "alloc_ns_per_page": a, "free_ns_per_page": f})
    iters = 20 if args.quick else 100
    exec_rows = [bench_executor(mbs, iters, warmup=40) for mbs in (256, 1024)]
    result = {
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "anchor_vllm_blockpool_ns": {"alloc": VLLM_ALLOC_NS, "free": VLLM_FREE_NS},
        "pool": pool_rows, "executor": exec_rows,
    }
    print(f"machine: nproc={os.cpu_count()} python={platform.python_version()}")
    print(f"{'pool op':<28}{'ours ns/page':>14}{'vLLM ns/block':>15}")
    for row in pool_rows:
        print(f"{'allocate_n(' + str(row['batch']) + ')':<28}{row['alloc_ns_per_page']:>14.1f}"
              f"{VLLM_ALLOC_NS:>15.0f}")
        print(f"{'free_n(' + str(row['batch']) + ')':<28}{row['free_ns_per_page']:>14.1f}"
              f"{VLLM_FREE_NS:>15.0f}")
    print(f"{'executor iteration':<28}{'median ms':>14}{'forwarded':>15}")
    for row in exec_rows:
        label = f"1000 live, batch<={row['max_batch_size']}"
        print(f"{label:<28}{row['median_ms']:>14.3f}{row['forwarded_per_iteration']:>15.0f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
