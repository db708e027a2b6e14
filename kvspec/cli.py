"""The ``kvspec`` command line. The only module that prints; everything else returns objects.

    kvspec prove   [--policy P]... [--invariant I]... [--json] [--export DIR] [--details]
    kvspec walk    [--policy P] [--steps N] [--seed S] [--export DIR] [--json]
    kvspec replay  TRACE [--impl module:factory] [--render table|path|program|jsonl]
    kvspec check   --impl module:factory [--policy P] [--examples N] [--seed S]
    kvspec explore [--impl module:factory] [--policy P] [--requests N] [--max-depth D]

Exit codes: 0 done (``prove`` and ``walk`` report verdicts, they do not fail on a refuted
cell), 1 a check or replay found a divergence, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvspec.config import Config
from kvspec.errors import KVSpecError
from kvspec.policy import DEFAULT_PRESETS, PRESETS, get_policy

DEFAULT_IMPL = "kvspec.conformance.impls:reference"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except KVSpecError as exc:
        print(f"kvspec: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except OSError as exc:
        print(f"kvspec: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvspec", description="Model, proofs and conformance checks for the KV-capacity "
        "protocol of LLM-serving KV-cache managers.")
    sub = p.add_subparsers(dest="command")

    pr = sub.add_parser("prove", help="decide the policy x invariant matrix with z3")
    pr.add_argument("--policy", action="append", metavar="P",
                    help=f"a preset (repeatable); default all: {', '.join(PRESETS)}")
    pr.add_argument("--invariant", action="append", metavar="I",
                    help="an invariant id or name (repeatable); default all")
    pr.add_argument("--json", action="store_true", help="print the matrix as JSON")
    pr.add_argument("--export", metavar="DIR", help="write each counterexample as JSON lines")
    pr.add_argument("--details", action="store_true",
                    help="print each counterexample as numbered steps: the fields each step "
                    "changed and the state after it")
    pr.add_argument("--max-depth", type=_positive, default=14, help="BMC depth (default 14)")
    pr.set_defaults(run=_prove)

    wk = sub.add_parser("walk", help="seeded random walks over the model (the volume tier)")
    wk.add_argument("--policy", default="pr13805-reviewed")
    wk.add_argument("--steps", type=_positive, default=50_000)
    wk.add_argument("--seed", type=int, default=0)
    wk.add_argument("--export", metavar="DIR")
    wk.add_argument("--json", action="store_true")
    wk.set_defaults(run=_walk)

    rp = sub.add_parser("replay", help="replay a trace on the model or an implementation")
    rp.add_argument("trace", help="a JSON-lines trace written by prove, walk or check")
    rp.add_argument("--impl", metavar="MODULE:FACTORY",
                    help="also replay on an implementation (e.g. " + DEFAULT_IMPL + ")")
    rp.add_argument("--render", choices=("table", "path", "program", "jsonl"), default="table")
    rp.set_defaults(run=_replay)

    ck = sub.add_parser("check", help="lockstep an implementation against the model")
    ck.add_argument("--impl", required=True, metavar="MODULE:FACTORY")
    ck.add_argument("--policy", default="pr13805-reviewed")
    ck.add_argument("--examples", type=_positive, default=100)
    ck.add_argument("--seed", type=int, default=0)
    ck.set_defaults(run=_check)

    ex = sub.add_parser("explore", help="small-scope exhaustive BFS replayed on an implementation")
    ex.add_argument("--impl", default=DEFAULT_IMPL, metavar="MODULE:FACTORY")
    ex.add_argument("--policy", default="pr13805-reviewed")
    ex.add_argument("--requests", type=_positive, default=1)
    ex.add_argument("--gpu-pages", type=_positive, default=2)
    ex.add_argument("--max-depth", type=_positive, default=1000)
    ex.set_defaults(run=_explore)
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _prove(args: argparse.Namespace) -> int:
    from kvspec.spec.invariants import PROPERTIES, get_property
    from kvspec.spec.prove import prove_matrix

    policies = [get_policy(n) for n in (args.policy or DEFAULT_PRESETS)]
    props = [get_property(n) for n in args.invariant] if args.invariant else list(PROPERTIES)
    mat = prove_matrix(Config(), policies, props, max_depth=args.max_depth)
    exported: dict[tuple[str, str], Path] = {}
    if args.export:
        for (pol, inv), v in mat.cells.items():
            if v.trace is not None:
                exported[(pol, inv)] = v.trace.save(Path(args.export) / f"{pol}__{inv}.jsonl")
    if args.json:
        out = mat.to_json()
        for cell in out["cells"]:
            path = exported.get((cell["policy"], cell["invariant"]))
            cell["trace_file"] = None if path is None else str(path)
        print(json.dumps(out, indent=2))
        return 0
    print(render_matrix(mat))
    for (pol, inv), v in mat.cells.items():
        if v.trace is None:
            continue
        where = f"  -> {exported[(pol, inv)]}" if (pol, inv) in exported else ""
        print(f'Refuted "{inv}" under {pol} {v.trace.path()}{where}')
        if args.details:
            print(v.trace.table())
            print()
    unknown = [v for v in mat.cells.values() if v.status == "UNKNOWN"]
    for v in unknown:
        print(f'Unknown "{v.invariant}" under {v.policy}: {v.reason}')
    print(f"Done. cells={len(mat.cells)} proved="
          f"{sum(v.status == 'PROVED' for v in mat.cells.values())} refuted="
          f"{sum(v.status == 'REFUTED' for v in mat.cells.values())} unknown={len(unknown)} "
          f"sec={mat.seconds:.2f}")
    return 0


def render_matrix(mat: Any) -> str:
    """The policy x invariant table: PROVED (k), REFUTED with its length, or UNKNOWN."""
    width = max(len(p) for p in mat.policies) + 2
    cols = [max(len(i), 7) for i in mat.properties]
    head = "policy".ljust(width) + "  ".join(i.ljust(c) for i, c in zip(mat.properties, cols))
    lines = [head, "-" * len(head)]
    for pol in mat.policies:
        cells = []
        for inv, c in zip(mat.properties, cols):
            v = mat.get(pol, inv)
            text = {"PROVED": "proved" if v.k <= 1 else f"proved(k={v.k})",
                    "REFUTED": f"CEX[{v.length}]", "UNKNOWN": "unknown"}[v.status]
            cells.append(text.ljust(c))
        lines.append(pol.ljust(width) + "  ".join(cells))
    return "\n".join(lines)


def _walk(args: argparse.Namespace) -> int:
    from kvspec.spec.walker import walk

    res = walk(Config(), get_policy(args.policy), steps=args.steps, seed=args.seed)
    paths = {}
    if args.export:
        for pid, tr in res.counterexamples.items():
            paths[pid] = str(tr.save(Path(args.export) / f"walk-{args.policy}__{pid}.jsonl"))
    if args.json:
        print(json.dumps({
            "policy": args.policy, "steps": res.steps, "seconds": round(res.seconds, 3),
            "steps_per_second": round(res.steps_per_second), "witnesses": dict(res.witnesses),
            "actions": dict(res.actions),
            "counterexamples": {k: {"length": len(t), "path": t.path(), "file": paths.get(k)}
                                for k, t in res.counterexamples.items()}}, indent=2))
        return 0
    print(f"Walked. policy={args.policy} steps={res.steps} sec={res.seconds:.2f} "
          f"steps/s={res.steps_per_second:,.0f}")
    print("witnesses: " + ", ".join(f"{k}={v}" for k, v in sorted(res.witnesses.items())))
    for pid, tr in res.counterexamples.items():
        print(f'Refuted "{pid}" {tr.path()}' + (f"  -> {paths[pid]}" if pid in paths else ""))
    if not res.counterexamples:
        print("No violation found.")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from kvspec.spec.trace import Trace, replay

    trace = Trace.load(args.trace)
    rep = replay(trace)
    rendered = {"table": trace.table, "path": trace.path, "program": trace.program,
                "jsonl": trace.to_jsonl}[args.render]()
    print(rendered.rstrip("\n"))
    first = rep.first_violation()
    print(f"Model: {'violates ' + ', '.join(rep.final_violations) if first else 'no violation'}"
          + (f" (first at step {first})" if first else ""))
    if args.impl:
        from kvspec.conformance.replay import replay_on_impl

        impl = replay_on_impl(trace, args.impl)
        print(impl.render())
        return 0 if impl.same_violation else 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from kvspec.conformance.check import run_check

    report = run_check(args.impl, args.policy, examples=args.examples, seed=args.seed)
    print(report.render())
    return 0 if report.ok else 1


def _explore(args: argparse.Namespace) -> int:
    from kvspec.conformance.exhaustive import explore

    config = Config(num_requests=args.requests, num_gpu_pages=args.gpu_pages, num_host_pages=1,
                    max_prompt_len=2, max_draft_len=1, tokens_per_block=2)
    res = explore(args.impl, get_policy(args.policy), config, max_depth=args.max_depth)
    print(res.render())
    return 0 if res.ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
