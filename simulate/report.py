"""A :class:`SimulationResult` as text, JSON and CSV files (no printing here: the CLI prints
:func:`render_table`)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

from .metrics import IterationMetrics, RequestMetrics
from .runner import SimulationResult

TABLE_COLUMNS = (
    ("policy", "policy"), ("idle page-it", "idle_page_iterations"),
    ("peak idle", "peak_idle_pages"), ("unwritten page-it", "idle_unwritten_page_iterations"),
    ("min free", "min_free_pages"), ("TTFT p50 s", "ttft_p50_s"), ("TTFT p99 s", "ttft_p99_s"),
    ("tok/s", "throughput_tokens_s"), ("preempt", "preemptions"), ("finished", "finished"),
    ("iters", "iterations"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(result: SimulationResult) -> str:
    """The terminal summary: a header naming the setup, one row per policy, then one line per
    run that stopped early (the invariant it would have broken). O(policies)."""
    head = [h for h, _ in TABLE_COLUMNS]
    rows = [[_cell(getattr(r.summary, f)) for _, f in TABLE_COLUMNS] for r in result.runs]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"Simulated. {result.title()}; backend={result.backend} seed={result.seed}",
           f"workload: {result.workload.description}",
           f"cost model: {result.cost.fixed_ms:g} ms + {result.cost.per_token_us:g} us/token"
           " per iteration", line(head), "-" * len(line(head))]
    out += [line(r) for r in rows]
    for r in result.runs:
        s = r.summary.stop
        if s is not None:
            what = f"breaks {s.invariant}" if s.kind == "invariant" else s.kind
            out.append(f"{r.policy}: stopped at iteration {s.iteration} ({what}): {s.message}")
    out.append("idle page-it: GPU pages held by deferred or skipped context requests, summed"
               " over iterations; unwritten: of them, pages past the history.")
    return "\n".join(out)


def to_json(result: SimulationResult) -> dict[str, Any]:
    """The setup and every policy's summary (no per-iteration rows: see the CSV files)."""
    c = result.config
    config = {f.name: (str(getattr(c, f.name)) if f.name.startswith(("max_util", "batch_wait_max"))
                       else getattr(c, f.name)) for f in dataclasses.fields(c)}
    return {
        "title": result.title(),
        "workload": {"name": result.workload.name,
                     "description": result.workload.description,
                     "requests": len(result.workload.arrivals),
                     "chunk_size": result.workload.chunk_size,
                     "draft_len": result.workload.draft_len},
        "config": config, "ranks": result.ranks, "seed": result.seed,
        "backend": result.backend, "cost_model": dataclasses.asdict(result.cost),
        "policies": {r.policy: dataclasses.asdict(r.summary) for r in result.runs},
    }


def write_files(result: SimulationResult, out: Path) -> list[Path]:
    """``summary.json``, ``summary.csv``, and per policy ``iterations-<policy>.csv`` and
    ``requests-<policy>.csv`` under ``out`` (created). Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out / "summary.json"
    p.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
    paths.append(p)
    p = out / "summary.csv"
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        fields = [f.name for f in dataclasses.fields(result.runs[0].summary) if f.name != "stop"]
        w.writerow([*fields, "stop"])
        for r in result.runs:
            s = r.summary
            stop = "" if s.stop is None else f"{s.stop.kind}@{s.stop.iteration}:" \
                f"{s.stop.invariant or ''}"
            w.writerow([getattr(s, f) for f in fields] + [stop])
    paths.append(p)
    for r in result.runs:
        paths.append(_rows(out / f"iterations-{r.policy}.csv", IterationMetrics, r.iterations))
        paths.append(_rows(out / f"requests-{r.policy}.csv", RequestMetrics, r.requests))
    return paths


def _rows(path: Path, kind: type, rows: tuple[Any, ...]) -> Path:
    names = [f.name for f in dataclasses.fields(kind)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for row in rows:
            w.writerow(["" if v is None else v for v in (getattr(row, n) for n in names)])
    return path
