"""Benchmarks of the CPU reference: page allocate/free per page and decode-step bookkeeping,
side by side with vLLM v1's ``BlockPool`` and ``KVCacheManager.allocate_slots`` at the same
batch sizes (when an unpacked vLLM is given), and one executor iteration with 1,000 live
requests. Prints a table; ``--json PATH`` also writes the numbers.

Run: ``python benchmarks/bench_reference.py [--vllm PATHS] [--json out.json] [--quick]``
(``--vllm`` or ``KVSPEC_VLLM_PATH``: see ``vllm_shim.py`` and docs/performance.md; without
it the vLLM rows are skipped with the reason).

Every comparison runs interleaved (``interleave.py``): one block of each variant per repeat,
order flipped every repeat; per-variant medians and the median of the paired ratios with
their spread. Pool blocks: a fresh pool per block (untimed), then ``calls`` allocations of
``batch`` pages (timed for the allocate sample) and their frees in the same order (timed for
the free sample); prefix caching off in vLLM (our pool has none). Decode blocks: ``steps``
decode steps of ``num_requests`` running requests, no drafts; ours = ``try_allocate_generation``
per request then one ``update_resources`` over the batch; vLLM = ``allocate_slots(req, 1)``
per request then, per request, ``num_computed_tokens += 1`` and ``append_output_token_ids``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable
from typing import Any

import vllm_shim
from interleave import CLOCKS, machine_info, run_interleaved

from kvspec.config import Config
from kvspec.policy import get_policy
from kvspec.reference import LlmRequest, PagePool, ReferenceKVCacheManager, RequestState
from kvspec.reference.executor import ReferenceExecutor

# Former anchors (vLLM 0.33 BlockPool at a 100,000-block batch, shared/research/peers.md §5);
# kept only to print next to the side-by-side figures.
ANCHOR_VLLM_ALLOC_NS_100K = 110.0
ANCHOR_VLLM_FREE_NS_100K = 190.0
BLOCK = 16


# -------------------------------------------------------------------------------------------
# page pools


def _pool_block(make: Callable[[int], Any], alloc_name: str, free_name: str, batch: int,
                calls: int, timed: str, clock: str) -> float:
    """One block on a fresh pool (built untimed); ns per page of the ``timed`` phase."""
    pool = make(calls * batch)
    allocate, free = getattr(pool, alloc_name), getattr(pool, free_name)
    now = CLOCKS[clock]
    t0 = now()
    held = [allocate(batch) for _ in range(calls)]
    t1 = now()
    for pages in held:
        free(pages)
    t2 = now()
    return ((t1 - t0) if timed == "alloc" else (t2 - t1)) * 1e9 / (calls * batch)


def bench_pool(batch: int, total_pages: int, repeats: int, v: vllm_shim.Vllm | None,
               clock: str) -> dict[str, Any]:
    """ns per page of allocate and free at ``batch`` pages per call, ours and vLLM's,
    interleaved (allocate and free are timed in separate blocks)."""
    calls = max(1, total_pages // batch)

    def block(make: Callable[[int], Any], names: tuple[str, str], timed: str) -> Callable[
            [], float]:
        return lambda: _pool_block(make, *names, batch, calls, timed, clock)

    ours = (PagePool, ("allocate_n", "free_n"))
    variants: dict[str, Callable[[], float | None]] = {
        "ours_alloc": block(*ours, "alloc"), "ours_free": block(*ours, "free")}
    pairs = []
    if v is not None:
        bp = v.BlockPool

        def vllm_pool(n: int) -> Any:               # +1: block 0 is vLLM's null block
            return bp(num_gpu_blocks=n + 1, enable_caching=False, hash_block_size=BLOCK)

        theirs = (vllm_pool, ("get_new_blocks", "free_blocks"))
        variants["vllm_alloc"] = block(*theirs, "alloc")
        variants["vllm_free"] = block(*theirs, "free")
        pairs = [("vllm_alloc", "ours_alloc"), ("vllm_free", "ours_free")]
    before = vllm_shim.stub_touches()
    res = run_interleaved(variants, repeats, gc_off=True, clock=clock)
    row: dict[str, Any] = {"batch": batch, "pages_per_block": calls * batch,
                           **{f"{k}_ns_per_page": res.median(k) for k in res.names},
                           "interleaved": res.to_json(pairs)}
    if v is not None:
        row["stub_touches_while_timing"] = vllm_shim.stub_touches() - before
    return row


# -------------------------------------------------------------------------------------------
# decode-step bookkeeping


def _prompts(n: int) -> list[int]:
    rng = random.Random(n)
    return [rng.randint(16, 512) for _ in range(n)]


def _ours_decode(n: int, pages: int) -> Callable[[int], None]:
    cfg = Config(tokens_per_block=BLOCK, num_gpu_pages=pages, num_host_pages=16,
                 num_requests=n, max_prompt_len=512, max_draft_len=0)
    m = ReferenceKVCacheManager(cfg, get_policy("pr13805-reviewed"))
    reqs = [LlmRequest(request_id=i, prompt_len=p, context_chunk_size=p)
            for i, p in enumerate(_prompts(n))]
    for q in reqs:
        m.prepare_context(q)
        assert m.resize_context(q, q.prompt_len)
        q.context_current_position = q.prompt_len
    m.update_context_resources(reqs)
    for q in reqs:
        q.state = RequestState.GENERATION_IN_PROGRESS
    zeros = [0] * n
    grow, update = m.try_allocate_generation, m.update_resources

    def steps(k: int) -> None:
        for _ in range(k):
            for q in reqs:
                if not grow(q):
                    raise RuntimeError("ours: pool exhausted; raise the decode pool size")
            update(reqs, zeros)

    steps.manager = m  # type: ignore[attr-defined]
    return steps


def _vllm_decode(v: vllm_shim.Vllm, n: int, pages: int) -> Callable[[int], None]:
    import torch

    spec = v.FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1,
                               dtype=torch.float32)
    kcfg = v.KVCacheConfig(num_blocks=pages + 1, kv_cache_tensors=[],
                           kv_cache_groups=[v.KVCacheGroupSpec(["layer.0"], spec)])
    m = v.KVCacheManager(kcfg, max_model_len=1 << 16, scheduler_block_size=BLOCK,
                         hash_block_size=BLOCK, enable_caching=False)
    reqs = []
    for i, p in enumerate(_prompts(n)):
        r = v.Request(request_id=str(i), prompt_token_ids=[1] * p,
                      sampling_params=v.SamplingParams(max_tokens=1 << 20),
                      pooling_params=None)
        assert m.allocate_slots(r, p) is not None
        r.num_computed_tokens = p
        r.append_output_token_ids(1)          # the prefill's sampled token
        reqs.append(r)
    allocate = m.allocate_slots

    def steps(k: int) -> None:
        for _ in range(k):
            for r in reqs:
                if allocate(r, 1) is None:
                    raise RuntimeError("vLLM: pool exhausted; raise the decode pool size")
            for r in reqs:
                r.num_computed_tokens += 1
                r.append_output_token_ids(1)

    return steps


def bench_decode(n: int, steps: int, repeats: int, v: vllm_shim.Vllm | None,
                 clock: str) -> dict[str, Any]:
    """Seconds per request-step of decode bookkeeping, ours and vLLM's, interleaved."""
    warmup = 1
    avg_tokens = 264 + (warmup + repeats) * steps          # prompts average 264 tokens
    pages = n * (avg_tokens // BLOCK + 8) * 2
    ours = _ours_decode(n, pages)
    variants: dict[str, Callable[[], float | None]] = {"ours": lambda: ours(steps)}
    pairs = []
    if v is not None:
        theirs = _vllm_decode(v, n, pages)
        variants["vllm"] = lambda: theirs(steps)
        pairs = [("vllm", "ours")]
    before = vllm_shim.stub_touches()
    res = run_interleaved(variants, repeats, warmup=warmup, per=steps * n, gc_off=True,
                          clock=clock)
    ours.manager.check_integrity()  # type: ignore[attr-defined]
    row: dict[str, Any] = {"num_requests": n, "steps_per_block": steps,
                           **{f"{k}_us_per_request_step": res.median(k) * 1e6
                              for k in res.names},
                           **{f"{k}_ms_per_step": res.median(k) * n * 1e3 for k in res.names},
                           "interleaved": res.to_json(pairs)}
    if v is not None:
        row["stub_touches_while_timing"] = vllm_shim.stub_touches() - before
    return row


# -------------------------------------------------------------------------------------------
# executor


def bench_executor(max_batch_size: int, iterations: int, warmup: int, clock: str = "wall",
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
    now = CLOCKS[clock]
    for _ in range(iterations):
        t0 = now()
        (res,) = ex.step()
        times.append((now() - t0) * 1e3)
        scheduled.append(len(res.forwarded))
    ex.managers[0].check_integrity()
    return {"median_ms": statistics.median(times), "live_requests": live,
            "forwarded_per_iteration": statistics.median(scheduled),
            "max_batch_size": max_batch_size}


# -------------------------------------------------------------------------------------------


def _ratio(row: dict[str, Any], a: str, b: str) -> str:
    for r in row["interleaved"]["ratios"]:
        if (r["a"], r["b"]) == (a, b):
            return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
    return "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--vllm", metavar="PATHS", default=None,
                        help=f"unpacked vLLM (+ its small deps), os.pathsep-separated "
                        f"(default ${vllm_shim.ENV}); vLLM rows are skipped without it")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved blocks per variant (default 10, --quick 2)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the thread's CPU time (robust to a loaded machine); "
                        "wall: perf_counter (default cpu)")
    parser.add_argument("--skip-executor", action="store_true")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 10)
    scale = 10 if args.quick else 1
    v, why = vllm_shim.load(args.vllm)
    if v is None:
        print(f"vLLM rows skipped: {why}", flush=True)
    else:
        print(f"vLLM {v.version} from {v.root} (import {v.import_seconds:.1f} s; stubbed "
              f"modules: {', '.join(v.stubbed)})", flush=True)
    pool_rows = []
    for batch, total in ((1, 100_000), (16, 160_000), (1_000, 200_000), (100_000, 200_000)):
        row = bench_pool(batch, max(batch, total // scale), repeats, v, args.clock)
        pool_rows.append(row)
        line = (f"pool batch {batch:>7}: ours alloc {row['ours_alloc_ns_per_page']:7.1f} "
                f"free {row['ours_free_ns_per_page']:7.1f} ns/page")
        if v is not None:
            line += (f" | vLLM alloc {row['vllm_alloc_ns_per_page']:7.1f} "
                     f"free {row['vllm_free_ns_per_page']:7.1f} ns/block | vLLM/ours alloc "
                     f"{_ratio(row, 'vllm_alloc', 'ours_alloc')}, free "
                     f"{_ratio(row, 'vllm_free', 'ours_free')}")
        print(line, flush=True)
    decode_rows = []
    for n in (64, 256):
        row = bench_decode(n, 20 if not args.quick else 4, repeats, v, args.clock)
        decode_rows.append(row)
        line = (f"decode {n:>4} requests: ours {row['ours_us_per_request_step']:6.2f} us per "
                f"request-step ({row['ours_ms_per_step']:.3f} ms/step)")
        if v is not None:
            line += (f" | vLLM {row['vllm_us_per_request_step']:6.2f} us "
                     f"({row['vllm_ms_per_step']:.3f} ms/step) | vLLM/ours "
                     f"{_ratio(row, 'vllm', 'ours')}")
        print(line, flush=True)
    exec_rows = []
    if not args.skip_executor:
        iters = 20 if args.quick else 100
        exec_rows = [bench_executor(mbs, iters, warmup=40, clock=args.clock)
                     for mbs in (256, 1024)]
        for row in exec_rows:
            print(f"executor iteration, 1000 live, batch<={row['max_batch_size']}: "
                  f"{row['median_ms']:.3f} ms (forwarded {row['forwarded_per_iteration']:.0f})",
                  flush=True)
    result = {
        "machine": machine_info(), "command": " ".join(["python", *sys.argv]),
        "repeats": repeats, "clock": args.clock,
        "vllm": (None if v is None else {"version": v.version, "root": v.root,
                                          "stubbed": v.stubbed}),
        "vllm_skipped_because": why or None,
        "former_anchor_vllm_blockpool_ns_100k": {"alloc": ANCHOR_VLLM_ALLOC_NS_100K,
                                                 "free": ANCHOR_VLLM_FREE_NS_100K},
        "pool": pool_rows, "decode": decode_rows, "executor": exec_rows,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
