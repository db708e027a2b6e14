"""Issue 11 figures: the matrix with the design-space properties and presets against the matrix
without them, interleaved in one run (``interleave.py``), and the time of each new refuted
cell's shortest counterexample.

* ``without``: ``prove_matrix`` over the presets and properties that existed before issue 11
  (the same code, so the new lemmas' cost is in both);
* ``with``: every preset x every property (what ``kvspec prove`` runs).

Each sample is the CPU time (user + system) of a fresh interpreter running one whole matrix,
so load from other processes on a shared machine counts less than in wall time. Then, in this
process, each refuted cell of a new property or preset is searched alone
(:func:`kvspec.spec.prove.bmc_search`, one request slot, the depth of its counterexample):
the CPU and wall seconds to its shortest counterexample. Usage:

    python benchmarks/bench_design_space.py --repeats 2 [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from interleave import machine_info, run_interleaved

NEW_PRESETS = ("gate-before-resume", "reserve-commit")
NEW_PROPERTIES = ("DECISION-IS-ADMISSION", "BUDGET-CONSISTENT")

CODE = """
from kvspec.config import Config
from kvspec.policy import PRESETS
from kvspec.spec.invariants import PROPERTIES
from kvspec.spec.prove import prove_matrix
full = {full}
pols = [p for n, p in PRESETS.items() if full or n not in {new_presets!r}]
props = [p for p in PROPERTIES if full or p.id not in {new_props!r}]
m = prove_matrix(Config(), pols, props)
print(len(pols), len(props), sorted({{v.status for v in m.cells.values()}}))
"""


def cpu_seconds(full: bool) -> float:
    """CPU seconds (user + system) of one whole matrix in a fresh interpreter."""
    code = CODE.format(full=full, new_presets=NEW_PRESETS, new_props=NEW_PROPERTIES)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def counterexample_times() -> list[dict[str, Any]]:
    """Per new refuted cell: its length and the seconds of a BMC search that finds it."""
    from kvspec.config import Config
    from kvspec.policy import PRESETS
    from kvspec.spec.invariants import PROPERTIES
    from kvspec.spec.prove import bmc_search, prove_matrix

    config = Config()
    mat = prove_matrix(config, list(PRESETS.values()), PROPERTIES)
    out = []
    for (pol, prop), v in sorted(mat.cells.items()):
        new = pol in NEW_PRESETS or prop in NEW_PROPERTIES
        if not new or v.status != "REFUTED" or v.trace is None:
            continue
        target = next(p for p in PROPERTIES if p.id == prop)
        policy = PRESETS[pol]
        n = 2 if v.route == "bmc(n=2)" else 1
        c0, w0 = time.process_time(), time.perf_counter()
        res = bmc_search(config, policy, [target], len(v.trace), num_requests=n)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        assert prop in res.found and len(res.found[prop]) == len(v.trace)
        out.append({"policy": pol, "invariant": prop, "length": len(v.trace),
                    "cpu_s": round(cpu, 3), "wall_s": round(wall, 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    res = run_interleaved({"without": lambda: cpu_seconds(False),
                           "with": lambda: cpu_seconds(True)},
                          a.repeats, warmup=0, clock="cpu")
    cells = counterexample_times()
    out: dict[str, Any] = {"machine": machine_info(),
                           "command": " ".join(["python", *sys.argv]),
                           **res.to_json([("with", "without")]), "counterexamples": cells}
    print(f"without {res.median('without'):.2f} s CPU  with {res.median('with'):.2f} s CPU  "
          f"{res.ratio('with', 'without')}")
    for c in cells:
        print(f"  {c['policy']} x {c['invariant']}: CEX[{c['length']}] in {c['cpu_s']} s CPU,"
              f" {c['wall_s']} s wall")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
