"""A/B of the whole default matrix (`prove_matrix` over every preset) between two installs,
interleaved (``interleave.py``: one run of each per repeat, the order flipped every repeat).

Each variant is a Python interpreter with kvspec installed (e.g. this checkout's venv and a
venv with an older commit installed editable). The sample of a run is the CPU time of its
subprocess (user + system); reported: per-variant medians and the median of the paired
ratios B / A. Usage:

    python benchmarks/bench_prove_ab.py --a /tmp/venv-old/bin/python --b .venv/bin/python \
        --repeats 2 [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from typing import Any

from interleave import machine_info, run_interleaved

CODE = ("from kvspec.config import Config; from kvspec.policy import PRESETS; "
        "from kvspec.spec.prove import prove_matrix; "
        "m = prove_matrix(Config(), list(PRESETS.values())); "
        "print(sorted({v.status for v in m.cells.values()}))")


def cpu_seconds(python: str) -> float:
    """CPU seconds (user + system) of one whole matrix in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([python, "-c", CODE], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="interpreter of variant A (the baseline)")
    ap.add_argument("--b", required=True, help="interpreter of variant B")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    res = run_interleaved({"A": lambda: cpu_seconds(a.a), "B": lambda: cpu_seconds(a.b)},
                          a.repeats, warmup=0, clock="cpu")
    out: dict[str, Any] = {"machine": machine_info(), "a": a.a, "b": a.b,
                           "command": " ".join(["python", *sys.argv]),
                           **res.to_json([("B", "A")])}
    print(f"A {res.median('A'):.2f} s CPU  B {res.median('B'):.2f} s CPU  "
          f"{res.ratio('B', 'A')}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
