"""Benchmark of the torch manager's batched per-iteration operations.

One generation iteration = grow every request (try_allocate_generation), revert half of them
(revert_allocate_generation), grow that half again, trim every request (update_resources with
random accepted drafts). Timed as batched calls of the torch manager (row API with the batch in
slot order and in a random slot order; object API), against the per-request
loop of single calls of the same manager and of the CPU reference (when importable). Also
reports control bytes shipped host->device per iteration against vLLM v1's full-row copy
(num_requests x table width x 4 B), and on CUDA the suspend/resume copy bandwidth as a
fraction of raw pinned D2H/H2D bandwidth.

All variants at one size run interleaved (``interleave.py``): every repeat runs one block
of each variant, the order flipped every repeat, and each speed-up is the median of the
paired ratios of blocks that ran side by side, with their spread (min-max).

Usage: python benchmarks/bench_gpu.py [--device cpu|cuda] [--sizes 256 4096 16384]
       [--repeats 6] [--block 8] [--clock cpu|wall] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from interleave import machine_info, run_interleaved

from kvspec.config import Config
from kvspec.gpu_impl import GpuRequest, Manager
from kvspec.policy import PRESETS

BLOCK = 16
WIDTH = 128  # page-table width (2,048 tokens at 16 tokens per page)
MIN_PROMPT, MAX_PROMPT = 64, 192
DRAFT = 2
POLICY = PRESETS["pr13805-reviewed"]


def _config(n: int) -> Config:
    # 32 pages (512 tokens) per request: room for the prompt and ~150 iterations
    return Config(tokens_per_block=BLOCK, num_gpu_pages=n * 32, num_host_pages=16,
                  num_requests=n, max_prompt_len=MAX_PROMPT, max_draft_len=DRAFT)


def _prompts(n: int) -> list[int]:
    """Prompt lengths, seeded: requests sit at different offsets inside their last page, so
    every iteration moves pages for some of them (equal lengths would make all requests cross
    a page boundary in the same iterations and the median depend on the phase)."""
    rng = random.Random(n)
    return [rng.randint(MIN_PROMPT, MAX_PROMPT) for _ in range(n)]


def _reference_cls() -> Any:
    try:
        from kvspec.reference.manager import ReferenceKVCacheManager
        from kvspec.reference.request import LlmRequest, RequestState
    except ImportError:
        return None
    return ReferenceKVCacheManager, LlmRequest, RequestState


def _setup_gpu(n: int, device: str) -> tuple[Manager, list[GpuRequest]]:
    m = Manager(_config(n), POLICY, device=device, kv_width=1, max_pages_per_request=WIDTH)
    prompts = _prompts(n)
    reqs = [GpuRequest(i, prompt_len=p, context_chunk_size=p, draft_len=DRAFT)
            for i, p in enumerate(prompts)]
    for q in reqs:
        m.prepare_context(q)
    assert all(m.resize_context_batch(reqs, [p + DRAFT for p in prompts]))
    for q in reqs:
        q.context_current_position = q.prompt_len
        q.state = 2
    m.update_context_resources(reqs)
    return m, reqs


def _setup_reference(n: int) -> tuple[Any, list[Any]]:
    ref_cls, req_cls, states = _reference_cls()
    m = ref_cls(_config(n), POLICY)
    reqs = [req_cls(request_id=i, prompt_len=p, context_chunk_size=p, draft_len=DRAFT)
            for i, p in enumerate(_prompts(n))]
    for q in reqs:
        m.prepare_context(q)
        m.resize_context(q, q.prompt_len + DRAFT)
        q.context_current_position = q.prompt_len
    m.update_context_resources(reqs)
    for q in reqs:
        q.state = states.GENERATION_IN_PROGRESS
    return m, reqs


def _batched_iteration(m: Manager, reqs: list[GpuRequest], acc: list[int]) -> None:
    half = reqs[: len(reqs) // 2]
    m.try_allocate_generation_batch(reqs)
    m.revert_allocate_generation_batch(half)
    m.try_allocate_generation_batch(half)
    m.update_resources_batch(reqs, acc)


def _rows_iteration(m: Manager, slots: np.ndarray, draft: torch.Tensor,
                    acc: torch.Tensor) -> None:
    """The same iteration through the row-tensor API. The scheduler's slot array becomes a
    fresh rows tensor every iteration (zero-copy on CPU, one H2D copy on CUDA), so the row
    checks run once per iteration (``half``, a slice of ``rows``, needs none); draft and
    accepted counts are int32 device tensors already (the sampler's output). Slots in order
    (``arange``: a persistent batch) take the slice path, a permutation the gather path."""
    rows = torch.from_numpy(slots).to(m.device)
    half = rows[: rows.numel() // 2]
    m.try_allocate_generation_rows(rows, draft)
    m.revert_allocate_generation_rows(half)
    m.try_allocate_generation_rows(half, draft[: half.numel()])
    m.update_resources_rows(rows, acc)


def _loop_iteration(m: Any, reqs: list[Any], acc: list[int]) -> None:
    half = reqs[: len(reqs) // 2]
    for q in reqs:
        m.try_allocate_generation(q)
    for q in half:
        m.revert_allocate_generation(q)
    for q in half:
        m.try_allocate_generation(q)
    for q, a in zip(reqs, acc, strict=True):
        m.update_resources([q], [a])


def _time(fn: Callable[[], None], repeats: int, sync: Callable[[], None],
          block: int = 1) -> float:
    """Median over ``repeats`` blocks of the mean wall time of one call over ``block`` calls
    (for the copy-bandwidth test only, which compares nothing)."""
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(block):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / block)
    return statistics.median(times)


VARIANTS = ("rows", "rows_permuted", "batched", "gpu_loop", "reference_loop")


def bench_size(n: int, device: str, repeats: int, loop_limit: int, block: int,
               clock: str = "wall") -> dict[str, Any]:
    """Seconds per iteration of each variant at ``n`` requests, interleaved: every repeat
    runs one block of ``block`` iterations of every variant (the torch per-request loop:
    one iteration), in an order flipped every repeat; medians per variant and paired
    speed-ups (reference loop over each batched variant, repeat by repeat)."""
    sync = torch.cuda.synchronize if device == "cuda" else None
    rng = random.Random(n)
    acc = [rng.randint(0, DRAFT) for _ in range(n)]
    row: dict[str, Any] = {"num_requests": n}
    # object batch API
    m, reqs = _setup_gpu(n, device)
    # row API, slots in order (a persistent batch)
    mr, rreqs_ = _setup_gpu(n, device)
    mr.load_requests(rreqs_)
    slots = np.arange(n, dtype=np.int64)
    draft = torch.full((n,), DRAFT, dtype=torch.int32, device=device)
    acc_t = torch.tensor(acc, dtype=torch.int32, device=device)
    _rows_iteration(mr, slots, draft, acc_t)
    m_check, reqs_check = _setup_gpu(n, device)
    _batched_iteration(m_check, reqs_check, acc)
    assert mr.snapshot_state() == m_check.snapshot_state(), "row API != object API"
    del m_check, reqs_check
    _batched_iteration(m, reqs, acc)  # the same first iteration, so states stay in step
    # row API, slots in a random order (gathers and scatters instead of slices)
    mp, preqs = _setup_gpu(n, device)
    mp.load_requests(preqs)
    perm = np.random.default_rng(n).permutation(n)
    _rows_iteration(mp, perm, draft, acc_t)

    def repeat(fn: Callable[[], None], k: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(k):
                fn()
        return run

    calls = {"batched": 0}

    def batched() -> None:
        calls["batched"] += 1
        _batched_iteration(m, reqs, acc)

    variants: dict[str, Callable[[], float | None]] = {
        "rows": repeat(lambda: _rows_iteration(mr, slots, draft, acc_t), block),
        "rows_permuted": repeat(lambda: _rows_iteration(mp, perm, draft, acc_t), block),
        "batched": repeat(batched, block)}
    per = {"rows": block, "rows_permuted": block, "batched": block}
    if n <= loop_limit:
        m2, reqs2 = _setup_gpu(n, device)
        variants["gpu_loop"] = lambda: _loop_iteration(m2, reqs2, acc)
        per["gpu_loop"] = 1
    if _reference_cls() is not None:
        ref, rreqs = _setup_reference(n)
        variants["reference_loop"] = repeat(lambda: _loop_iteration(ref, rreqs, acc), block)
        per["reference_loop"] = block
    before = m.h2d_bytes
    res = run_interleaved(variants, repeats, warmup=1, per=per, sync=sync, clock=clock)
    row["h2d_bytes_per_iter"] = (m.h2d_bytes - before) // calls["batched"]
    row["vllm_full_row_bytes_per_iter"] = n * WIDTH * 4
    for mm in (m, mr, mp):
        mm.check_integrity()
    for name in res.names:
        row[f"{name}_s"] = res.median(name)
    pairs = []
    for base in ("gpu_loop", "reference_loop"):
        if base not in res.names:
            continue
        for fast, key in (("batched", "speedup_vs"), ("rows", "rows_speedup_vs"),
                          ("rows_permuted", "rows_permuted_speedup_vs")):
            r = res.ratio(base, fast)
            row[f"{key}_{base}"] = r.median
            row[f"{key}_{base}_spread"] = r.to_json()
            pairs.append((base, fast))
    row["interleaved"] = res.to_json(pairs)
    return row


def bench_copies(device: str, pages: int, kv_width: int) -> dict[str, Any]:
    """Suspend+evict and resume bandwidth of one cache of ``pages`` pages vs raw copies."""
    cfg = Config(tokens_per_block=BLOCK, num_gpu_pages=pages, num_host_pages=pages,
                 num_requests=1)
    m = Manager(cfg, POLICY, device=device, kv_width=kv_width)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    q = GpuRequest(0, prompt_len=pages * BLOCK, context_chunk_size=pages * BLOCK)
    m.prepare_context(q)
    m.resize_context(q, pages * BLOCK)
    nbytes = pages * BLOCK * kv_width * 4
    m.suspend_request(q)
    m.evict_to_host(q)  # warm-up (staging buffer)
    m.resume_request(q)
    evict, resume = [], []
    for _ in range(3):
        m.suspend_request(q)
        sync()
        t0 = time.perf_counter()
        m.evict_to_host(q)
        sync()
        evict.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.resume_request(q)
        sync()
        resume.append(time.perf_counter() - t0)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    pinned = torch.empty(nbytes // 4, dtype=torch.float32,
                         pin_memory=device == "cuda")
    d2h = _time(lambda: pinned.copy_(src), 3, sync)
    h2d = _time(lambda: src.copy_(pinned), 3, sync)
    gbs = 1e-9 * nbytes
    return {"bytes": nbytes, "evict_GBps": gbs / statistics.median(evict),
            "resume_GBps": gbs / statistics.median(resume), "raw_d2h_GBps": gbs / d2h,
            "raw_h2d_GBps": gbs / h2d,
            "evict_fraction_of_raw": d2h / statistics.median(evict),
            "resume_fraction_of_raw": h2d / statistics.median(resume)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 4096, 16384])
    p.add_argument("--repeats", type=int, default=6,
                   help="interleaved timed blocks per variant (even: balanced ABBA order)")
    p.add_argument("--block", type=int, default=8,
                   help="iterations per timed block (the block's mean is one sample)")
    p.add_argument("--loop-limit", type=int, default=4096,
                   help="largest size at which the torch per-request loop is timed (slow)")
    p.add_argument("--copy-pages", type=int, default=0,
                   help="pages for the copy-bandwidth test (default 2048 on CUDA, 0 = skip)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: small ops do not gain from OpenMP, and "
                   "spinning threads on a shared machine cost milliseconds)")
    p.add_argument("--clock", choices=["wall", "cpu"], default=None,
                   help="wall (perf_counter) or cpu (the thread's CPU time: robust on a "
                   "loaded machine, one torch thread only); default cpu on CPU, wall on CUDA")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    clock = args.clock or ("wall" if args.device == "cuda" else "cpu")
    if args.device == "cuda" and clock != "wall":
        print("error: --device cuda needs --clock wall (kernels run asynchronously)",
              file=sys.stderr)
        return 2
    if clock == "cpu" and args.threads != 1:
        print("error: --clock cpu counts the calling thread only; use --threads 1",
              file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "machine": {**machine_info(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"},
        "command": " ".join(["python", *sys.argv]), "clock": clock,
        "iteration": "grow all, revert half, grow half, trim all (generation, draft 2)",
        "sizes": []}

    def x(row: dict[str, Any], key: str) -> str:
        r = row[f"{key}_spread"]
        return f"x{r['median']:.1f} [{r['min']:.1f}-{r['max']:.1f}]"

    for n in args.sizes:
        row = bench_size(n, args.device, args.repeats, args.loop_limit, args.block, clock)
        out["sizes"].append(row)
        parts = [f"n={n:>6}", f"rows {row['rows_s'] * 1e3:7.3f} ms",
                 f"(permuted {row['rows_permuted_s'] * 1e3:7.3f} ms)",
                 f"object batched {row['batched_s'] * 1e3:7.2f} ms"]
        if "gpu_loop_s" in row:
            parts.append(f"torch loop {row['gpu_loop_s'] * 1e3:9.1f} ms "
                         f"({x(row, 'speedup_vs_gpu_loop')})")
        if "reference_loop_s" in row:
            parts.append(f"reference loop {row['reference_loop_s'] * 1e3:8.2f} ms "
                         f"(rows {x(row, 'rows_speedup_vs_reference_loop')}, permuted "
                         f"{x(row, 'rows_permuted_speedup_vs_reference_loop')}, object "
                         f"{x(row, 'speedup_vs_reference_loop')})")
        parts.append(f"H2D {row['h2d_bytes_per_iter']} B vs full rows "
                     f"{row['vllm_full_row_bytes_per_iter']} B")
        print("  ".join(parts), flush=True)
    pages = args.copy_pages or (2048 if args.device == "cuda" else 0)
    if pages:
        out["copies"] = bench_copies(args.device, pages, kv_width=256)
        c = out["copies"]
        print(f"copies {c['bytes'] / 2**20:.0f} MiB: evict {c['evict_GBps']:.2f} GB/s "
              f"({c['evict_fraction_of_raw']:.0%} of raw D2H {c['raw_d2h_GBps']:.2f}), resume "
              f"{c['resume_GBps']:.2f} GB/s ({c['resume_fraction_of_raw']:.0%} of raw H2D "
              f"{c['raw_h2d_GBps']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
