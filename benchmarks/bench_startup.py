"""Start-up cost of the CLI: ``kvspec replay TRACE --impl kvspec.conformance.impls:reference``
on a 5-step trace, as a subprocess (goal: <= 1.5 s on the project's 2-core machine), next to
``python -c "import kvspec.cli"`` and a bare ``python -c pass``, interleaved
(``interleave.py``: one run of each per repeat, order flipped every repeat; wall time, since
start-up is what a user waits for). Then ``python -X importtime`` of the same replay: the
top-level packages with the largest cumulative import time, and whether torch, z3 or
hypothesis were imported at all (the reference and the CLI should import none of them until a
command needs them).

    python benchmarks/bench_startup.py [--runs 7] [--trace PATH] [--top 12] [--json PATH]

The trace is built here with the model (seeded enabled steps from the initial state, results
and digests filled in by ``with_digests``) and saved to a temporary file, unless ``--trace``
names one. Never a timed assertion: it prints the figures and whether the goal was met.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from interleave import machine_info, run_interleaved

GOAL_S = 1.5
IMPL = "kvspec.conformance.impls:reference"
HEAVY = ("torch", "z3", "hypothesis", "numpy")


def build_trace(path: Path, steps: int = 5, seed: int = 1) -> Path:
    """A ``steps``-step behaviour of the model under ``pr13805-reviewed``, saved to ``path``."""
    from kvspec.config import Config
    from kvspec.policy import get_policy
    from kvspec.spec.model import Model
    from kvspec.spec.trace import Step, Trace, with_digests
    from kvspec.spec.walker import _picker

    config, policy = Config(), get_policy("pr13805-reviewed")
    model = Model(config, policy)
    pick = _picker(model, random.Random(seed))
    s = model.initial()
    chosen: list[Step] = []
    while len(chosen) < steps:
        c = pick(s)
        if c is None:
            raise RuntimeError("the model has no enabled step; pick another seed")
        name, r, args = c
        s, _ = model.step(s, name, r, **args)
        chosen.append(Step(name, r, dict(args)))
    trace = with_digests(Trace(policy, config, tuple(chosen), source="bench_startup"))
    return trace.save(path)


def kvspec_command() -> list[str]:
    """The installed ``kvspec`` console script (next to this interpreter), else -m."""
    exe = Path(sys.executable).with_name("kvspec")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("kvspec")
    return [found] if found else [sys.executable, "-m", "kvspec.cli"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def import_times(cmd_args: list[str], top: int) -> dict[str, Any]:
    """``python -X importtime`` of the CLI running ``cmd_args``: top-level packages by
    cumulative microseconds (the first import of each package), and the heavy ones seen."""
    code = ("import sys; from kvspec.cli import main; "
            f"sys.exit(main({cmd_args!r}))")
    p = _run([sys.executable, "-X", "importtime", "-c", code])
    top_level: dict[str, int] = {}
    selfs: list[tuple[str, int]] = []
    cums: list[tuple[str, int]] = []
    seen: set[str] = set()
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        try:
            own, cum, raw = line[len("import time:"):].split("|")
        except ValueError:
            continue
        name = raw[1:].rstrip()                     # nesting shows as 2 spaces per level
        pkg = name.strip().split(".")[0]
        seen.add(pkg)
        selfs.append((name.strip(), int(own)))
        cums.append((name.strip(), int(cum)))
        if not name.startswith(" "):
            # an unindented line was imported at top level: its cumulative time counts once
            top_level[pkg] = top_level.get(pkg, 0) + int(cum)
    ranked = sorted(top_level.items(), key=lambda kv: -kv[1])[:top]
    return {"rc": p.returncode, "top_cumulative_us": ranked,
            "top_self_us": sorted(selfs, key=lambda kv: -kv[1])[:top],
            "top_module_cumulative_us": [kv for kv in sorted(cums, key=lambda kv: -kv[1])
                                         if kv[0] != "kvspec.cli"][:top],
            "heavy_imported": [h for h in HEAVY if h in seen],
            "total_us": sum(top_level.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="interleaved runs of each command")
    ap.add_argument("--trace", help="replay this trace instead of a generated 5-step one")
    ap.add_argument("--top", type=int, default=12, help="import-time offenders to list")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kvspec-startup-") as tmp:
        trace = Path(a.trace) if a.trace else build_trace(Path(tmp) / "five_steps.jsonl")
        steps = len(trace.read_text().splitlines()) - 1
        replay_args = ["replay", str(trace), "--impl", IMPL]
        replay_cmd = kvspec_command() + replay_args
        first = _run(replay_cmd)                      # also warms the page cache and .pyc
        if first.returncode != 0:
            print(f"error: {' '.join(replay_cmd)} exited {first.returncode}:\n"
                  f"{first.stdout}{first.stderr}", file=sys.stderr)
            return 1

        def timed(cmd: list[str]) -> Any:
            def run() -> None:
                p = _run(cmd)
                if p.returncode != 0:
                    raise RuntimeError(f"{cmd} exited {p.returncode}: {p.stderr[-500:]}")
            return run

        res = run_interleaved({
            "replay": timed(replay_cmd),
            "import_cli": timed([sys.executable, "-c", "import kvspec.cli"]),
            "python_bare": timed([sys.executable, "-c", "pass"]),
        }, a.runs, warmup=1, clock="wall")
        imports = import_times(replay_args, a.top)
    med = res.median("replay")
    out: dict[str, Any] = {
        "machine": machine_info(), "command": " ".join(["python", *sys.argv]),
        "replay_command": " ".join(["kvspec", *replay_args[:1], "TRACE", *replay_args[2:]]),
        "trace_steps": steps,
        "replay_s": med, "import_cli_s": res.median("import_cli"),
        "python_bare_s": res.median("python_bare"), "goal_s": GOAL_S,
        "goal_met": med <= GOAL_S, "interleaved": res.to_json([("replay", "import_cli")]),
        "importtime": imports}
    lo, hi = res.spread("replay")
    print(f"kvspec replay ({steps} steps, --impl {IMPL}): median {med:.2f} s over {a.runs} runs "
          f"(min {lo:.2f}, max {hi:.2f}); goal <= {GOAL_S} s: "
          f"{'met' if med <= GOAL_S else 'NOT met'}")
    print(f"python -c 'import kvspec.cli': {res.median('import_cli'):.2f} s; "
          f"python -c pass: {res.median('python_bare'):.2f} s")
    print(f"heavy packages imported by the replay: {imports['heavy_imported'] or 'none'}")
    for title, key in (("top-level packages by cumulative time", "top_cumulative_us"),
                       ("modules by cumulative time", "top_module_cumulative_us"),
                       ("modules by self time (the offenders)", "top_self_us")):
        print(f"{title} (python -X importtime, one run):")
        for name, us in imports[key]:
            print(f"  {name:<40}{us / 1e3:9.1f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
