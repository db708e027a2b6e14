"""A/B of the whole default matrix (`prove_matrix` over every preset) between two installs.

Each variant is a Python interpreter with kvspec installed (e.g. this checkout's venv and a
venv with an older commit installed editable). Runs alternate, the order flipped every round
(AB BA AB ...); reported: median wall and CPU seconds per variant and the median of paired
CPU ratios (B / A). Usage:

    python benchmarks/bench_prove_ab.py --a /tmp/venv-old/bin/python --b .venv/bin/python \
        --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import time

CODE = ("from kvspec.config import Config; from kvspec.policy import PRESETS; "
        "from kvspec.spec.prove import prove_matrix; "
        "m = prove_matrix(Config(), list(PRESETS.values())); "
        "print(sorted({v.status for v in m.cells.values()}))")


def run(python: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one whole matrix in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([python, "-c", CODE], check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="interpreter of variant A (baseline)")
    ap.add_argument("--b", required=True, help="interpreter of variant B")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    res: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    for i in range(args.rounds):
        order = ("A", "B") if i % 2 == 0 else ("B", "A")
        for v in order:
            res[v].append(run(args.a if v == "A" else args.b))
    ratios = [b[1] / a[1] for a, b in zip(res["A"], res["B"])]
    print(json.dumps({
        v: {"wall_median_s": round(statistics.median(w for w, _ in r), 2),
            "cpu_median_s": round(statistics.median(c for _, c in r), 2)}
        for v, r in res.items()} | {"cpu_ratio_b_over_a_median": round(
            statistics.median(ratios), 2), "cpu_ratios": [round(x, 2) for x in ratios]},
        indent=2))


if __name__ == "__main__":
    main()
