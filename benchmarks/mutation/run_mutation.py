"""Sampled mutation run of ``reference/`` or ``gpu_impl/`` with mutmut 3 (not in CI).

What it measures: of a seeded sample of mutmut's mutants of one target package, how many the
target's tests kill, how many survive, time out, or were argued equivalent (triage file).
Installs nothing: mutmut comes from the ``mutation`` extra (``pip install -e ".[mutation]"``).

Why a staging folder. mutmut 3 copies the code into ``mutants/``, puts ``mutants/`` first on
``sys.path`` and names a mutant after its file path (``kvspec/reference/manager.py`` ->
``kvspec.reference.manager.x_f__mutmut_3``); its trampoline switches a mutant on only when that
name matches the function's ``__module__`` at run time. Here ``reference/`` is installed as
``kvspec.reference`` through setuptools ``package-dir``, so neither the path nor the import
would match. The script therefore builds ``--work`` with the installed layout (each
``package-dir`` entry of ``--source``'s pyproject.toml: ``reference/`` -> ``kvspec/reference/``)
and ``tests/``, and writes a ``pyproject.toml`` there with the target's ``[tool.mutmut]``
section. The editable install's finder is appended to ``sys.meta_path``, so ``mutants/kvspec``
wins. Tests that start ``python -m kvspec.cli`` get ``PYTHONPATH`` to the same tree.

Steps: stage, generate all mutants (mutmut's own generator, in a child process), draw
``--sample`` of them with ``random.Random(--seed)``, ``mutmut run NAME...`` with
``--max-children --workers``, read mutmut's ``.meta`` results, and write ``summary.json``,
``summary.md`` and ``survivors.md`` (each surviving mutant's diff and source line) into
``--out``. Cost: one run of the target's tests under mutmut's call tracing (which tests reach
which function), one clean run, then per mutant the tests that reach the mutated function
(``-x``: up to the first failure). ``--report-only`` summarises the run in ``--work`` again.

Score: killed / (sampled - equivalent), a "no tests" mutant (no selected test reaches its
function) counting as not killed; ``score_covered`` leaves those out too. Timeouts count as
killed (a mutant that hangs the tests is detected). Equivalents are the survivors named in the
triage file (``--equivalent``, JSON ``{mutant name: reason}``); mutant names hold for the
source commit the triage states.

    python benchmarks/mutation/run_mutation.py --target reference --source /tmp/mut-snapshot \\
        --sample 120 --seed 10 --workers 2 --out /tmp/mutation-reference \\
        --equivalent benchmarks/mutation/equivalent-reference.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: per target: the packages mutated and the tests that may kill their mutants
TARGETS: dict[str, list[str]] = {
    "reference": ["tests/reference", "tests/conformance"],
    "gpu_impl": ["tests/gpu"],
}
#: per target: more [tool.mutmut] settings. mutmut forks each mutant's worker from its main
#: process by default; after the coverage pass has run torch there, a forked worker hangs in
#: its first torch call (a lock of torch's thread pool held across fork(), no CPU time, so
#: mutmut's CPU-time limit never fires). "forkserver" forks workers from a process that only
#: imported and collected the tests.
EXTRA_CONFIG: dict[str, dict[str, object]] = {
    "reference": {},
    "gpu_impl": {"process_isolation": "forkserver"},
}
HERE = Path(__file__).resolve().parent

_GENERATE = """
import json, os
from pathlib import Path
from mutmut.__main__ import (copy_also_copy_files, copy_src_dir, create_mutants,
    set_mutant_under_test, setup_source_paths)
set_mutant_under_test("mutant_generation")
os.makedirs("mutants", exist_ok=True)
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(2)
names = []
for meta in sorted(Path("mutants").rglob("*.meta")):
    names += sorted(json.loads(meta.read_text())["exit_code_by_key"])
print(json.dumps(names))
"""

#: sitecustomize of every Python the tests start: mutmut's coverage pass records calls through
#: its config, which it reads from the current folder's pyproject.toml; a child started in a
#: temporary folder would fail there, so the child runs the unmutated code in that pass
_CHILD_SITE = """
import os
if os.environ.get("MUTANT_UNDER_TEST") == "stats":
    del os.environ["MUTANT_UNDER_TEST"]
"""

_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
print(json.dumps({n: get_diff_for_mutant(n) for n in json.loads(sys.stdin.read())}))
"""


def stage(source: Path, tests: list[Path], work: Path, target: str) -> None:
    """Build ``work`` with the installed package layout and the target's mutmut config.

    Effect: removes and recreates ``work``. Fails with FileNotFoundError when ``source`` lacks
    one of the packages.
    """
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    project = tomllib.loads((source / "pyproject.toml").read_text())
    # the installed layout, from setuptools' package-dir: kvspec.reference <- reference/
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        shutil.copytree(source / folder, work / Path(*package.split(".")), ignore=ignore)
    shutil.copytree(source / "tests", work / "tests", ignore=ignore)
    for extra in tests:  # test files added since the snapshot, into the same folder
        rel = extra.resolve().relative_to(extra.resolve().parents[1])  # tests/<dir>/<file>
        shutil.copy2(extra, work / "tests" / rel.parent.name / rel.name)
    pytest_ini = project["tool"]["pytest"]["ini_options"]
    config = {
        "source_paths": ["kvspec"],
        "only_mutate": [f"kvspec/{target}/*"],
        "pytest_add_cli_args_test_selection": TARGETS[target],
        # test_interrupts.py times real SIGINTs in child processes against wall-clock limits:
        # it fails under mutmut's tracing on a loaded machine and checks no manager behaviour
        "pytest_add_cli_args": ["-p", "no:cacheprovider",
                                "--ignore=tests/conformance/test_interrupts.py"],
        "track_dependencies": False,
        **EXTRA_CONFIG[target],
    }
    lines = ["[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    lines += ["", "[tool.pytest.ini_options]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in pytest_ini.items()]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n")
    (work / "_child_site").mkdir()
    (work / "_child_site" / "sitecustomize.py").write_text(_CHILD_SITE)


def mutant_line(work: Path, name: str, diff: str) -> str:
    """``file:line`` of the first changed line of mutant ``name`` in the unmutated source."""
    module, _, mangled = name.partition("__mutmut_")[0].rpartition(".")
    rel = Path(*module.split(".")[1:]).with_suffix(".py")  # kvspec.reference.x -> reference/x.py
    source = (work / "kvspec" / rel).read_text()
    cls, func = (mangled.split("ǁ")[1:3] if mangled.startswith("xǁ") else (None, mangled[2:]))
    start = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and cls is not None and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == func:
                    start = min([d.lineno for d in item.decorator_list] + [item.lineno])
        elif cls is None and isinstance(node, ast.FunctionDef) and node.name == func:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    old_line = 0  # the hunk's position in the function text, then its first removed line
    for ln in diff.splitlines():
        if ln.startswith("@@"):
            old_line = int(ln.split()[1].lstrip("-").split(",")[0])
        elif old_line and ln.startswith("-"):
            return f"{rel}:{start + old_line - 1}"
        elif old_line and not ln.startswith("+"):
            old_line += 1
    return f"{rel}:{start}"


def run(args: argparse.Namespace) -> dict[str, object]:
    """Stage, generate, sample, run mutmut, and return the summary (also written to --out)."""
    work, out = args.work.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CI="true") if args.ci_profile else dict(os.environ)
    # tests that start `python -m kvspec.cli` must import the staged (mutated) tree, not the
    # editable install's: the child inherits MUTANT_UNDER_TEST and runs the same mutant; in
    # mutmut's coverage pass ("stats") the child runs unmutated (_CHILD_SITE)
    env["PYTHONPATH"] = f"{work / '_child_site'}{os.pathsep}{work / 'mutants'}"
    t0 = time.perf_counter()
    if args.report_only:  # summarise the last run in --work again (after a triage edit)
        names, sample = json.loads((out / "sample.json").read_text())
    else:
        stage(args.source.resolve(), args.tests, work, args.target)
        gen = subprocess.run([sys.executable, "-c", _GENERATE], cwd=work, env=env,
                             check=True, capture_output=True, text=True)
        names = json.loads(gen.stdout.strip().splitlines()[-1])
        if args.only:
            sample = sorted(json.loads(args.only.read_text()))
        else:
            k = min(args.sample, len(names)) if args.sample else len(names)
            sample = sorted(random.Random(args.seed).sample(names, k))
        (out / "sample.json").write_text(json.dumps([names, sample]))
        with open(out / "mutmut.log", "w") as log:
            subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children",
                            str(args.workers), *sample], cwd=work, env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=False)
    status_of = _statuses(work)
    equivalent: dict[str, str] = (json.loads(args.equivalent.read_text())
                                  if args.equivalent and args.equivalent.exists() else {})
    by_status: dict[str, list[str]] = {}
    for name in sample:
        st = status_of.get(name, "not checked")
        if st == "survived" and name in equivalent:
            st = "equivalent"
        by_status.setdefault(st, []).append(name)
    survivors = by_status.get("survived", []) + by_status.get("equivalent", [])
    diffs: dict[str, str] = {}
    if survivors:
        d = subprocess.run([sys.executable, "-c", _DIFFS], cwd=work, env=env, check=True,
                           input=json.dumps(survivors), capture_output=True, text=True)
        diffs = json.loads(d.stdout)
    count = {k: len(v) for k, v in sorted(by_status.items())}
    killed = count.get("killed", 0) + count.get("timeout", 0)
    scored = len(sample) - count.get("equivalent", 0)
    covered = scored - count.get("no tests", 0)
    summary: dict[str, object] = {
        "target": args.target, "source": str(args.source), "tests": TARGETS[args.target],
        "extra_tests": [str(t) for t in args.tests], "ci_profile": args.ci_profile,
        "mutants_total": len(names), "sampled": len(sample), "seed": args.seed,
        "workers": args.workers, "nproc": os.cpu_count(), "wall_s": round(
            time.perf_counter() - t0, 1), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        # CPU seconds of every child (mutmut, its forked workers): the run's cost on a machine
        # shared with other work, where the wall time also counts waiting for a core
        "cpu_s": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
                       + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime, 1),
        "counts": count,
        "score": round(killed / scored, 4) if scored else None,
        "score_covered": round(killed / covered, 4) if covered else None,
        "by_status": {k: v for k, v in by_status.items() if k != "killed"},
        "survivor_lines": {n: mutant_line(work, n, diffs.get(n, "")) for n in survivors},
    }
    if args.report_only and (out / "summary.json").exists():
        # the run's own cost, not this summary's: kept from the run's summary
        ran = json.loads((out / "summary.json").read_text())
        for key in ("wall_s", "load_avg_at_end", "cpu_s", "workers", "nproc"):
            if key in ran:
                summary[key] = ran[key]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    (out / "summary.md").write_text(_markdown(summary))
    where: dict[str, str] = summary["survivor_lines"]  # type: ignore[assignment]
    verdict = {n: "equivalent" if n in equivalent else "survived" for n in survivors}
    (out / "survivors.md").write_text("".join(
        f"### {n} ({where[n]}, {verdict[n]})\n\n```diff\n{diffs.get(n, '')}\n```\n\n"
        for n in survivors))
    return summary


def _statuses(work: Path) -> dict[str, str]:
    """mutmut's verdict per mutant name, read from its ``.meta`` files (stats.py's codes)."""
    codes = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
             34: "skipped", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
             255: "timeout", 37: "caught by type check", None: "not checked"}
    status: dict[str, str] = {}
    for meta in (work / "mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status[name] = codes.get(code, f"suspicious ({code})")
    return status


def _markdown(s: dict[str, object]) -> str:
    counts: dict[str, int] = s["counts"]  # type: ignore[assignment]
    rows = "".join(f"| {k} | {v} |\n" for k, v in counts.items())
    return (f"# Mutation run: `{s['target']}/`\n\n"
            f"Sampled {s['sampled']} of {s['mutants_total']} mutants (seed {s['seed']}), "
            f"{s['workers']} workers on {s['nproc']} cores, {s['wall_s']} s wall; tests "
            f"{', '.join(s['tests'])} (CI profile: {s['ci_profile']}).\n\n"  # type: ignore[arg-type]
            f"| verdict | mutants |\n|---|---|\n{rows}\n"
            f"Score (killed + timeout over sampled minus equivalent): {s['score']}; over the"
            f" mutants some selected test runs (no-tests left out too): {s['score_covered']}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=sorted(TARGETS), required=True)
    p.add_argument("--source", type=Path, default=HERE.parents[1],
                   help="tree to mutate (a snapshot of the repository)")
    p.add_argument("--tests", type=Path, nargs="*", default=[],
                   help="extra test files (tests/<dir>/<file>) copied into the staged tests")
    p.add_argument("--sample", type=int, default=0, help="mutants to draw (0: all)")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--only", type=Path, help="JSON list of mutant names to run instead")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--equivalent", type=Path, help="JSON {mutant name: reason} from triage")
    p.add_argument("--no-ci-profile", dest="ci_profile", action="store_false",
                   help="run the tests under the dev hypothesis profile instead of CI=true")
    p.add_argument("--report-only", action="store_true",
                   help="only summarise the run already in --work (e.g. after triage)")
    p.add_argument("--work", type=Path, default=Path("/tmp/kvspec-mutation"))
    p.add_argument("--out", type=Path, required=True)
    summary = run(p.parse_args())
    print(json.dumps({k: summary[k] for k in ("target", "sampled", "mutants_total", "counts",
                                               "score", "wall_s")}))


if __name__ == "__main__":
    main()
