"""The ``kvspec`` command line. The only module that prints; everything else returns objects.

    kvspec prove   [--policy P]... [--invariant I]... [--json] [--export DIR] [--details]
                   [--max-depth N] [--timeout SECONDS] [--bmc2-depth N]
    kvspec walk    [--policy P] [--steps N] [--seed S] [--export DIR] [--json]
    kvspec replay  TRACE [--impl module:factory [--strict]] [--render table|path|program|jsonl]
    kvspec check   --impl module:factory [--policy P|all]... [--examples N] [--seed S]
                   [--export DIR] [--hypothesis-dir DIR] [--strict]
    kvspec explore [--impl module:factory] [--policy P] [--requests N] [--gpu-pages G]
                   [--max-depth D] [--strict]
    kvspec simulate [--policy P]... [--workload W|TRACE.csv] [--set FIELD=VALUE]... [--seed S]
                   [--out DIR] [--ranks R] [--batch-wait-iters N] [--backend reference|torch] ...

Exit codes: 0 done (``prove`` and ``walk`` report verdicts, they do not fail on a refuted
cell; check, replay and explore print misuse warnings and still exit 0), 1 a check or replay
found a divergence (with ``--strict`` a tolerated misuse is one), 2 bad input (one line on
stderr, ``kvspec: error: ...``), 3 ``prove`` left some cell UNKNOWN, 130 interrupted (partial
results first).
Progress bars go to stderr, only when it is a terminal and ``--quiet`` is not given. Nothing
heavy (z3, torch, hypothesis, tqdm) is imported until a command needs it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from kvspec import version
from kvspec.config import SMALL_SCOPE, Config
from kvspec.errors import InvalidArgument, KVSpecError
from kvspec.policy import DEFAULT_PRESETS, PRESETS, get_policy

DEFAULT_IMPL = "kvspec.conformance.impls:reference"

EXIT_OK = 0
EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2
EXIT_UNKNOWN = 3
EXIT_INTERRUPTED = 130

CHECK_EXAMPLES = 100
CHECK_WALK_LENGTH = 120
"""``kvspec check``'s default budget per preset (``conformance.check.DEFAULT_EXAMPLES`` and
``DEFAULT_WALK_LENGTH``, repeated here so that parsing imports nothing heavy; a test keeps
them equal)."""

EXPLORE_MAX_REQUESTS = SMALL_SCOPE["num_requests"]
EXPLORE_MAX_GPU_PAGES = SMALL_SCOPE["num_gpu_pages"]
"""``kvspec explore`` bounds, checked when parsing."""

_T = TypeVar("_T")


class UsageError(Exception):
    """A command-line usage error (argparse's, or ours at parse time); printed as one line."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, 1, 2, 3 or 130; see the module docstring)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return EXIT_OK
    except Exception as exc:
        if _is_interrupt(exc):  # e.g. z3's ctypes call: ArgumentError wrapping the interrupt
            return _interrupted()
        raise


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = _parse(parser, argv)
    except UsageError as exc:
        return _error(str(exc))
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.run(args))
    except KVSpecError as exc:
        return _error(str(exc))
    except BrokenPipeError:
        raise
    except OSError as exc:
        return _error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))


def _error(message: str) -> int:
    """Print ``kvspec: error: message`` as one line on stderr; the bad-input exit code."""
    print(f"kvspec: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _interrupted() -> int:
    print("kvspec: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _is_interrupt(exc: BaseException) -> bool:
    """True when ``exc`` is ctypes' wrapping of a KeyboardInterrupt (raised while z3 was in a
    ctypes call: ``ArgumentError: argument 1: KeyboardInterrupt``). Nothing else is: a bug
    in an interrupt handler keeps its traceback."""
    return type(exc).__name__ == "ArgumentError" and (
        isinstance(exc.__context__, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc))


# ---- parsing --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (one line, exit 2, printed
    by :func:`main` with the one ``kvspec: error:`` prefix) instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{_command_of(self.prog)}{message}; see '{self.prog} --help'")


def _command_of(prog: str) -> str:
    """``"prove: "`` for the parser ``kvspec prove``, ``""`` for the top level."""
    words = prog.split()
    return f"{' '.join(words[1:])}: " if len(words) > 1 else ""


class _Formatter(argparse.HelpFormatter):
    """Descriptions and epilogs wrapped paragraph by paragraph (blank lines kept); the help
    column wide enough for the option names."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(_Formatter, self)._fill_text(par, width, indent)
                           for par in text.split("\n\n"))


class _Version(argparse.Action):
    """``--version``: read from the installed distribution only when asked (start-up)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"kvspec {version()}")
        parser.exit()


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown option is reported by the subcommand it was given to, with the
    closest known option."""
    words = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(words)
    if extra:
        command = getattr(args, "command", None) or ""
        given_before = command in words and words.index(extra[0]) < words.index(command)
        sub = parser if given_before else _subparsers(parser).get(command, parser)
        known = [o for a in sub._actions for o in a.option_strings]
        hint = ""
        for word in extra:
            close = difflib.get_close_matches(word.split("=")[0], known, n=1)
            if word.startswith("-") and close:
                hint = f" (did you mean {close[0]}?)"
                break
        sub.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kvspec", formatter_class=_Formatter,
        description="Model, proofs and conformance checks for the KV-capacity protocol of "
        "LLM-serving KV-cache managers.",
        epilog="exit codes: 0 done (misuse warnings included), 1 a check or replay diverged "
        "(with --strict, a tolerated misuse too), 2 bad input, 3 prove left a cell UNKNOWN, "
        "130 interrupted.\n\nRun 'kvspec COMMAND --help' for a command's options.")
    p.add_argument("--version", action=_Version, help="print the version and exit")
    p.add_argument("-q", "--quiet", dest="quiet_all", action="store_true",
                   help="no progress bars (they are drawn only when stderr is a terminal)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=description, formatter_class=_Formatter)
        return c

    def quiet(c: argparse.ArgumentParser) -> None:
        c.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bar (drawn only when stderr is a terminal)")

    pr = command(
        "prove", "decide the policy x invariant matrix with z3",
        "Decide every (policy, invariant) cell with z3: PROVED (by induction, for any "
        "tokens_per_block, pool size and number of requests, cross-checked by a 2-request "
        "bounded model check), REFUTED (the shortest counterexample, as a replayable trace) "
        "or UNKNOWN (the solver gave up or ran out of time: raise --timeout).\n\n"
        "exit codes: 0 every cell decided, 2 bad input, 3 some cell UNKNOWN, 130 interrupted "
        "(the cells decided so far are printed).")
    pr.add_argument("--policy", action="append", metavar="P", type=_policy_name,
                    help=f"a preset (repeatable); default: all of {', '.join(PRESETS)}")
    pr.add_argument("--invariant", action="append", metavar="I",
                    help="an invariant id or name (repeatable); default: all")
    pr.add_argument("--json", action="store_true", help="print the matrix as JSON")
    pr.add_argument("--export", metavar="DIR",
                    help="write each counterexample to DIR/<policy>__<invariant>.jsonl "
                    "(checked writable before the proof starts); default: none")
    pr.add_argument("--details", action="store_true",
                    help="print each counterexample as numbered steps: the fields each step "
                    "changed and the state after it")
    pr.add_argument("--max-depth", type=_positive, default=14, metavar="N",
                    help="BMC depth of the counterexample search (default: %(default)s)")
    pr.add_argument("--timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                    help="z3 time limit per proof phase of a cell; a phase that runs out makes "
                    "the cell UNKNOWN (default: %(default)s)")
    pr.add_argument("--bmc2-depth", type=_positive, default=4, metavar="N",
                    help="depth of the 2-request bounded model check run on every PROVED cell "
                    "(default: %(default)s)")
    quiet(pr)
    pr.set_defaults(run=_prove)

    wk = command(
        "walk", "seeded random walks over the model (the volume tier)",
        "Seeded random walks over the model (walks of 60 steps from the initial state), "
        "invariants checked after every step; the first counterexample of each invariant is "
        "shrunk and reported. Reports verdicts: exit 0 whether or not something was refuted, "
        "130 when interrupted (the partial summary is printed).")
    wk.add_argument("--policy", default="pr13805-reviewed", type=_policy_name, metavar="P",
                    help="the policy preset (default: %(default)s)")
    wk.add_argument("--steps", type=_positive, default=50_000, metavar="N",
                    help="model steps in total (default: %(default)s)")
    wk.add_argument("--seed", type=_integer, default=0, metavar="S",
                    help="random seed; same seed, same walks (default: %(default)s)")
    wk.add_argument("--export", metavar="DIR",
                    help="write each counterexample to DIR/walk-<policy>__<invariant>.jsonl "
                    "(checked writable before the walk starts); default: none")
    wk.add_argument("--json", action="store_true", help="print the summary as JSON")
    quiet(wk)
    wk.set_defaults(run=_walk)

    rp = command(
        "replay", "replay a trace on the model or an implementation",
        "Replay a JSON-lines trace (written by prove, walk or check --export) on the model, "
        "and with --impl also on an implementation, compared after every step. Exit 1 when "
        "the implementation diverges.")
    rp.add_argument("trace", type=_trace_file, metavar="TRACE",
                    help="a JSON-lines trace written by prove, walk or check --export")
    rp.add_argument("--impl", metavar="MODULE:FACTORY",
                    help="also replay on an implementation (e.g. " + DEFAULT_IMPL + ")")
    rp.add_argument("--render", choices=("table", "path", "program", "jsonl"), default="table",
                    help="how to print the trace (default: %(default)s)")
    _strict(rp, "with --impl: ")
    rp.set_defaults(run=_replay)

    ck = command(
        "check", "lockstep an implementation against the model",
        "Run an implementation and the model side by side, compared after every step, under "
        "every policy preset the implementation claims (all presets unless its factory says "
        "otherwise: docs/conformance.md), or the --policy presets given: per preset the "
        "walker tier (seeded swarm walks, configs cycled through "
        "conformance.check.DEFAULT_CONFIGS) then the hypothesis tier (a generated state "
        "machine over the same configs, steered towards pool pressure). One line per preset "
        "and a summary; each preset's first divergence is shrunk and reported; exit 1 if any "
        "diverged. A misuse the manager tolerates (a double free accepted silently, ...) is "
        "one warning line per kind after the report, exit 0; --strict makes it a divergence. "
        "Hypothesis keeps no example database unless --hypothesis-dir is given, and writes "
        "nothing to the current folder.")
    ck.add_argument("--impl", required=True, metavar="MODULE:FACTORY",
                    help="the factory(config, policy) -> manager to check, e.g. " + DEFAULT_IMPL
                    + " (see docs/conformance.md); required")
    ck.add_argument("--policy", action="append", type=_check_policy_name, metavar="P",
                    help="a preset to check (repeatable), or 'all'; default: all, every "
                    "preset the implementation claims (its factory's kvspec_presets or "
                    "supported_policies, else all of " + ", ".join(PRESETS) + ")")
    ck.add_argument("--examples", type=_positive, default=CHECK_EXAMPLES, metavar="N",
                    help=f"per preset: walker walks of {CHECK_WALK_LENGTH} steps; the "
                    "hypothesis tier runs N/5 examples (default: %(default)s)")
    ck.add_argument("--seed", type=_integer, default=0, metavar="S",
                    help="seeds both tiers (default: %(default)s)")
    ck.add_argument("--export", metavar="DIR",
                    help="write each diverging preset's shrunk divergence to "
                    "DIR/check-<policy>.jsonl, replayable with 'kvspec replay FILE --impl SAME' "
                    "(checked writable before the check starts); default: none")
    ck.add_argument("--hypothesis-dir", metavar="DIR",
                    help="keep hypothesis's example database in DIR (earlier failures are "
                    "replayed first); default: none, no database (hypothesis's own cache goes "
                    "under $KVSPEC_CACHE_DIR, default ~/.cache/kvspec)")
    _strict(ck)
    quiet(ck)
    ck.set_defaults(run=_check)

    ex = command(
        "explore", "small-scope exhaustive BFS replayed on an implementation",
        "Enumerate every reachable model state of a small config breadth-first (tokens per "
        "block 2, 1 host page, prompts <= 2, draft <= 1), keep one shortest behaviour per "
        "state and replay every behaviour on the implementation. Exit 1 on a divergence, 130 "
        "when interrupted (the partial summary is printed). Larger configs: kvspec check.")
    ex.add_argument("--impl", default=DEFAULT_IMPL, metavar="MODULE:FACTORY",
                    help="the factory(config, policy) -> manager to replay on "
                    "(default: %(default)s)")
    ex.add_argument("--policy", default="pr13805-reviewed", type=_policy_name, metavar="P",
                    help="the policy preset (default: %(default)s)")
    ex.add_argument("--requests", type=_bounded(EXPLORE_MAX_REQUESTS, "requests"), default=1,
                    metavar="N", help=f"request slots, 1 to {EXPLORE_MAX_REQUESTS}; 2 takes "
                    "minutes (default: %(default)s)")
    ex.add_argument("--gpu-pages", type=_bounded(EXPLORE_MAX_GPU_PAGES, "GPU pages"), default=2,
                    metavar="G",
                    help=f"GPU pool pages, 1 to {EXPLORE_MAX_GPU_PAGES} (default: %(default)s)")
    ex.add_argument("--max-depth", type=_positive, default=1000, metavar="D",
                    help="stop the BFS at this depth; the result then says BOUNDED "
                    "(default: %(default)s)")
    _strict(ex)
    quiet(ex)
    ex.set_defaults(run=_explore)

    cg = command(
        "catalogue", "run the bug catalogue: every known bug found by two checkers",
        "Run every row of the bug catalogue (docs/bugs.md): TensorRT-LLM's protocol bugs "
        "(a preset under which the model violates an invariant) and implementation slips "
        "(broken managers in kvspec.conformance.broken, the peers' double free and stale "
        "free after reuse among them). Each row runs its independent checkers (z3 BMC, the "
        "model walker, the model's hypothesis machine and the exhaustive BFS replayed on the "
        "reference for protocol bugs; the walker and hypothesis tiers of 'kvspec check' and "
        "'kvspec explore' for broken managers) and records time to detection and the length "
        "of what each reports.\n\n"
        "exit codes: 0 every row found by two checkers, 1 a row found by fewer, 2 bad input, "
        "130 interrupted.")
    cg.add_argument("--row", action="append", metavar="ID",
                    help="run only this row (repeatable); default: every row")
    cg.add_argument("--checker", action="append", metavar="NAME",
                    help="run only this checker (repeatable), any of bmc, walker, hypothesis,"
                    " check-walker, check-hypothesis, exhaustive; default: all that apply")
    cg.add_argument("--quick", action="store_true",
                    help="the bounded budget CI runs (smaller searches per checker)")
    cg.add_argument("--json", action="store_true", help="print the result as JSON")
    quiet(cg)
    cg.set_defaults(run=_catalogue)

    sm = command(
        "simulate", "what each policy costs on a workload, side by side, with plots",
        "Run the reference executor (V2 scheduler pass, batch waiting or attention-DP balance, "
        "can_queue, the policy's reverts, suspend/resume, the host tier) over a stream of "
        "arriving requests, once per policy with the same arrivals and seed, the managers' "
        "checks on and page accounting (idle + active + free == total) checked every "
        "iteration. Prints a summary table; with --out also JSON, CSV and PNG plots. A policy "
        "whose manager refuses an operation that would break an invariant stops there (where "
        "TensorRT-LLM asserts) and the table says so. docs/simulate.md.\n\n"
        "exit codes: 0 done (also when a policy stopped at an invariant), 1 a manager "
        "accounting failure (AccountingError: a rank's pages do not add up or check_integrity "
        "failed; a bug in a manager, not bad input), 2 bad input, 130 interrupted.")
    sm.add_argument("--policy", action="append", metavar="P", type=_policy_name,
                    help="a preset to simulate (repeatable), any of " + ", ".join(PRESETS)
                    + f"; default: {' and '.join(SIMULATE_POLICIES)}")
    sm.add_argument("--workload", default="chat", type=_workload, metavar="W",
                    help="a built-in generator (" + ", ".join(_simulate_workloads())
                    + ") or a CSV trace with columns TIMESTAMP,ContextTokens,GeneratedTokens "
                    "(Azure LLM inference traces) or arrival_s,prompt_tokens,output_tokens "
                    "(default: %(default)s)")
    sm.add_argument("--set", action="append", type=_setting, metavar="FIELD=VALUE",
                    help="override a generator field (repeatable): num_requests, rate, arrival "
                    "(poisson|bursty), burst_cv, prompt_median, prompt_sigma, prompt_min, "
                    "prompt_max, output_median, output_sigma, output_min, output_max, "
                    "chunk_size, draft_len; docs/simulate.md lists each preset's values")
    sm.add_argument("--requests", type=_positive, metavar="N",
                    help="simulate N requests (a generator's num_requests; a trace's first N "
                    "rows); default: the preset's, or the whole trace")
    sm.add_argument("--chunk-size", type=_positive, metavar="TOKENS",
                    help="context chunk size; default: the preset's (chat 512, long-context "
                    "2048), 512 for a trace")
    sm.add_argument("--draft-len", type=_nonnegative, metavar="N",
                    help="draft tokens per generation step; default: the preset's (0), 0 for a "
                    "trace")
    sm.add_argument("--seed", type=_integer, default=0, metavar="S",
                    help="seeds the arrivals and the accepted drafts; same seed, same result "
                    "(default: %(default)s)")
    sm.add_argument("--out", metavar="DIR",
                    help="write summary.json, summary.csv, iterations-<policy>.csv, "
                    "requests-<policy>.csv and the plots (idle_pages.png, free_pages.png, "
                    "ttft.png, summary.png; need matplotlib) into DIR; default: none")
    sm.add_argument("--no-plots", action="store_true", help="with --out: no PNG plots")
    sm.add_argument("--json", action="store_true",
                    help="print the summary as JSON instead of the table")
    g = sm.add_argument_group("engine (kvspec.config.Config, per rank)")
    g.add_argument("--gpu-pages", type=_positive, default=16384, metavar="G",
                   help="GPU pages per rank (default: %(default)s)")
    g.add_argument("--host-pages", type=_nonnegative, default=16384, metavar="H",
                   help="host-tier pages per rank (default: %(default)s)")
    g.add_argument("--tokens-per-block", type=_positive, default=32, metavar="B",
                   help="tokens per page (default: %(default)s)")
    g.add_argument("--max-requests", type=_positive, default=256, metavar="N",
                   help="live requests per rank (Config.num_requests; default: %(default)s)")
    g.add_argument("--max-batch-size", type=_positive, default=256, metavar="N",
                   help="requests per iteration (default: %(default)s)")
    g.add_argument("--max-num-tokens", type=_positive, default=8192, metavar="N",
                   help="tokens per iteration (default: %(default)s)")
    g.add_argument("--max-util-for-resume", type=_positive_float, default=0.95, metavar="F",
                   help="resume gate: GPU utilization above which resumes are refused "
                   "(default: %(default)s)")
    g.add_argument("--ranks", type=_positive, default=1, metavar="R",
                   help="attention-DP ranks; R > 1 turns attention DP on (default: %(default)s)")
    g.add_argument("--adp", action="store_true",
                   help="attention-DP balancing even with one rank (instead of batch waiting)")
    g.add_argument("--batch-wait-iters", type=_nonnegative, default=0, metavar="N",
                   help="batch waiting timeout in iterations, without attention DP; 0 off "
                   "(default: %(default)s)")
    g.add_argument("--batch-wait-ratio", type=_ratio, default=0.0, metavar="F",
                   help="batch waiting: wait while batch tokens < F x max-num-tokens; 0 off "
                   "(default: %(default)s)")
    g.add_argument("--adp-timeout-iters", type=_positive, default=50, metavar="N",
                   help="attention-DP balance timeout (default: %(default)s)")
    g.add_argument("--adp-wait-iters", type=_nonnegative, default=10, metavar="N",
                   help="attention-DP batching wait (default: %(default)s)")
    r = sm.add_argument_group("run")
    r.add_argument("--backend", choices=("reference", "torch"), default="reference",
                   help="manager: the CPU reference, or the torch manager (--device) "
                   "(default: %(default)s)")
    r.add_argument("--device", default="cpu", metavar="DEV",
                   help="torch device of --backend torch: cpu or cuda (default: %(default)s)")
    r.add_argument("--torch-threads", type=_positive, default=1, metavar="N",
                   help="torch CPU threads with --backend torch (one-request calls run "
                   "fastest on one; default: %(default)s)")
    r.add_argument("--cost-fixed-ms", type=_nonnegative_float, default=10.0, metavar="MS",
                   help="iteration cost model: fixed milliseconds per iteration "
                   "(default: %(default)s)")
    r.add_argument("--cost-per-token-us", type=_nonnegative_float, default=50.0, metavar="US",
                   help="iteration cost model: microseconds per batch token on the busiest "
                   "rank (default: %(default)s)")
    r.add_argument("--integrity-every", type=_nonnegative, default=1000, metavar="N",
                   help="run each manager's check_integrity every N iterations, 0 never "
                   "(O(pages) each; page accounting is checked every iteration regardless; "
                   "default: %(default)s)")
    r.add_argument("--max-iterations", type=_positive, metavar="N",
                   help="stop each policy's run after N iterations; default: no limit")
    quiet(sm)
    sm.set_defaults(run=_simulate)
    return p


def _strict(c: argparse.ArgumentParser, prefix: str = "") -> None:
    c.add_argument("--strict", action="store_true",
                   help=prefix + "fail (exit 1) on a tolerated misuse: a double free, a free of "
                   "an unknown request or a suspend of a SUSPENDED cache that the manager "
                   "accepts, or refuses with another exception than ProtocolError; default: "
                   "a warning line per kind, exit 0 (a misuse that changes the manager state "
                   "fails either way)")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def _nonnegative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _nonnegative_float(text: str) -> float:
    value = _float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def _ratio(text: str) -> float:
    value = _nonnegative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text} must be in [0, 1]")
    return value


SIMULATE_POLICIES = ("pr14849", "pr13805-reviewed")
"""``kvspec simulate``'s default policies: PR 14849 against the reviewed PR 13805."""


def _simulate_workloads() -> tuple[str, ...]:
    """The built-in workload names (``kvspec.simulate.workload.PRESETS``), repeated here so
    that parsing imports nothing of the simulator; a test keeps them equal."""
    return ("chat", "long-context")


def _workload(text: str) -> str:
    """A built-in workload name, or a readable CSV trace file."""
    if text in _simulate_workloads():
        return text
    p = Path(text)
    if p.is_file():
        try:
            with open(p, "rb"):
                pass
        except OSError as exc:
            raise argparse.ArgumentTypeError(
                f"cannot read trace {text!r}: {exc.strerror or exc}") from None
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a built-in workload ({', '.join(_simulate_workloads())}) nor a"
        " CSV trace file")


def _setting(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE, e.g. rate=5")
    return key.strip(), value.strip()


def _bounded(hi: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _positive(text)
        if value > hi:
            raise argparse.ArgumentTypeError(
                f"{value} {what} is beyond explore's small scope (at most {hi}); use "
                "'kvspec check' (random walks) for larger configs")
        return value
    return parse


def _policy_name(text: str) -> str:
    try:
        return get_policy(text).name
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_policy_name(text: str) -> str:
    """A preset name or ``all`` (check's --policy)."""
    if text == "all":
        return text
    try:
        return get_policy(text).name
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or 'all'") from None


def _trace_file(text: str) -> str:
    """A trace path that names a readable file (checked before any work)."""
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; expected a trace file (.jsonl)")
    if not p.exists():
        raise argparse.ArgumentTypeError(f"trace file {text!r} does not exist")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot read trace file {text!r}: {exc.strerror or exc}") from None
    return text


def writable_dir(path: str | None, option: str) -> Path | None:
    """Create ``path`` (a folder) and check a file can be written in it, before long work.

    Raises:
        InvalidArgument: ``path`` is a file, lies under a file, or cannot be written.
    """
    if path is None:
        return None
    import tempfile

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InvalidArgument(f"{option} {path!r} is a file; expected a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise InvalidArgument(
            f"{option} {path!r}: cannot write there ({exc.strerror or exc})") from None
    return p


def _dedup(items: Iterable[_T], key: Callable[[_T], Hashable] = lambda x: x) -> list[_T]:
    """``items`` without repeats (by ``key``), first occurrence kept, order kept."""
    seen: set[Hashable] = set()
    out = []
    for x in items:
        k = key(x)
        if k not in seen:
            seen.add(k)
            out.append(x)
    return out


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False) or getattr(args, "quiet_all", False))


def _bar_off(args: argparse.Namespace) -> bool:
    return _quiet(args) or not sys.stderr.isatty()


class _Bars:
    """Progress bars on stderr, one per phase of a command (a new phase closes the previous
    bar); off when stderr is not a terminal or with --quiet. Used as a context manager, which
    closes the bars. tqdm is imported only when a bar is drawn."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.off = _bar_off(args)
        self._bars: dict[str, Any] = {}

    def show(self, phase: str, done: int, total: int | None = None, note: str = "",
             **kw: Any) -> None:
        """Set ``phase``'s bar to ``done`` (of ``total``), with ``note`` after it."""
        if phase not in self._bars:
            from tqdm import tqdm

            self.close()
            self._bars[phase] = tqdm(file=sys.stderr, leave=False, dynamic_ncols=True,
                                     total=total, desc=phase, **kw)
        bar = self._bars[phase]
        if note:
            bar.set_postfix_str(note, refresh=False)
        bar.update(done - bar.n)

    def close(self) -> None:
        for b in self._bars.values():
            b.close()

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prove(args: argparse.Namespace) -> int:
    from kvspec.spec.invariants import PROPERTIES, get_property

    policies = _dedup(get_policy(n) for n in (args.policy or DEFAULT_PRESETS))
    props = (_dedup((get_property(n) for n in args.invariant), key=lambda p: p.id)
             if args.invariant else list(PROPERTIES))
    export = writable_dir(args.export, "--export")  # before the proof, not after it

    from kvspec.spec.prove import prove_matrix

    with _Bars(args) as bars:
        total, decided = len(policies) * len(props), [0]

        def on_cell(v: Any) -> None:
            decided[0] += 1
            bars.show("prove", decided[0], total, f"{v.policy} {v.invariant}: "
                      f"{v.status.lower()}", unit="cell")

        mat = prove_matrix(Config(), policies, props, max_depth=args.max_depth,
                           timeout=args.timeout, bmc2_depth=args.bmc2_depth,
                           on_cell=None if bars.off else on_cell)
    exported: dict[tuple[str, str], Path] = {}
    if export is not None:
        for (pol, inv), v in mat.cells.items():
            if v.trace is not None:
                exported[(pol, inv)] = v.trace.save(export / f"{pol}__{inv}.jsonl")
    unknown = [v for v in mat.cells.values() if v.status == "UNKNOWN"]
    interrupted = mat.interrupted
    rc = EXIT_INTERRUPTED if interrupted else EXIT_UNKNOWN if unknown else EXIT_OK
    if args.json:
        out = mat.to_json()
        for cell in out["cells"]:
            path = exported.get((cell["policy"], cell["invariant"]))
            cell["trace_file"] = None if path is None else str(path)
        print(json.dumps(out, indent=2))
        return _interrupted() if interrupted else rc
    print(render_matrix(mat))
    for (pol, inv), v in mat.cells.items():
        if v.trace is None:
            continue
        where = f"  -> {exported[(pol, inv)]}" if (pol, inv) in exported else ""
        print(f'Refuted "{inv}" under {pol} {v.trace.path()}{where}')
        if args.details:
            print(v.trace.table())
            print()
    for v in unknown:
        print(f'Unknown "{v.invariant}" under {v.policy}: {v.reason}')
    print(f"Done. cells={len(mat.cells)} proved={mat.count('PROVED')} refuted="
          f"{mat.count('REFUTED')} unknown={len(unknown)}"
          + (f" interrupted={mat.count('INTERRUPTED')}" if interrupted else "")
          + f" sec={mat.seconds:.2f}")
    if unknown:
        print("UNKNOWN: the solver could not decide; raise --timeout (now "
              f"{args.timeout:g} s) or see the reason above.")
    return _interrupted() if interrupted else rc


MATRIX_CELL_TEXT = {"REFUTED": "CEX[{length}]", "UNKNOWN": "unknown",
                    "INTERRUPTED": "interrupted"}
"""How :func:`render_matrix` shows each status (PROVED: ``proved`` or ``proved(k=K)``)."""


def render_matrix(mat: Any) -> str:
    """The policy x invariant table: ``proved`` (``proved(k=K)`` by k-induction),
    ``CEX[n]``, ``unknown``, or ``interrupted`` (a cell not decided before an interrupt)."""
    width = max(len(p) for p in mat.policies) + 2
    cols = [max(len(i), len("interrupted")) for i in mat.properties]
    head = "policy".ljust(width) + "  ".join(i.ljust(c) for i, c in zip(mat.properties, cols))
    lines = [head, "-" * len(head)]
    for pol in mat.policies:
        cells = []
        for inv, c in zip(mat.properties, cols):
            v = mat.get(pol, inv)
            if v.status == "PROVED":
                text = "proved" if v.k <= 1 else f"proved(k={v.k})"
            else:
                text = MATRIX_CELL_TEXT.get(v.status, v.status.lower()).format(length=v.length)
            cells.append(text.ljust(c))
        lines.append((pol.ljust(width) + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def _walk(args: argparse.Namespace) -> int:
    policy = get_policy(args.policy)
    export = writable_dir(args.export, "--export")  # before the walk, not after it

    from kvspec.spec.walker import walk

    with _Bars(args) as bars:
        def progress(done: int, total: int) -> None:
            bars.show("walk", done, total, unit="step", unit_scale=True)

        res = walk(Config(), policy, steps=args.steps, seed=args.seed,
                   progress=None if bars.off else progress)
    interrupted = res.interrupted
    paths = {}
    if export is not None:
        for pid, tr in res.counterexamples.items():
            paths[pid] = str(tr.save(export / f"walk-{args.policy}__{pid}.jsonl"))
    if args.json:
        print(json.dumps({
            "policy": args.policy, "steps": res.steps, "steps_requested": args.steps,
            "seed": args.seed, "interrupted": interrupted, "seconds": round(res.seconds, 3),
            "steps_per_second": round(res.steps_per_second), "witnesses": dict(res.witnesses),
            "actions": dict(res.actions),
            "counterexamples": {k: {"length": len(t), "path": t.path(), "file": paths.get(k)}
                                for k, t in res.counterexamples.items()}}, indent=2))
        return _interrupted() if interrupted else EXIT_OK
    print(f"Walked. policy={args.policy} seed={args.seed} steps={res.steps}"
          + (f" of {args.steps} (interrupted)" if interrupted else "")
          + f" sec={res.seconds:.2f} steps/s={res.steps_per_second:,.0f}")
    print("witnesses: " + ", ".join(f"{k}={v}" for k, v in sorted(res.witnesses.items())))
    for pid, tr in res.counterexamples.items():
        print(f'Refuted "{pid}" {tr.path()}' + (f"  -> {paths[pid]}" if pid in paths else ""))
    if not res.counterexamples:
        print("No violation found" + (" in the steps walked." if interrupted else "."))
    return _interrupted() if interrupted else EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    """The rendering alone on stdout (redirected JSONL replays, a rendered program runs); the
    report on stderr: the trace, policy, full config, what the model does, the check of each
    step's result and digest and of the header's claim, then the --impl replay. Exit 1 on a
    mismatch, an unreached claim or an implementation that does not agree; 2 on bad input,
    reported before anything is printed."""
    from kvspec.spec.trace import Trace, verify_trace

    if args.strict and not args.impl:
        raise InvalidArgument("replay: --strict applies to the implementation replay; give "
                              "--impl MODULE:FACTORY too")
    trace = Trace.load(args.trace)  # every field validated: InvalidArgument, exit 2
    factory = None
    if args.impl:
        from kvspec.conformance.adapter import make_manager, resolve_factory

        if trace.abstract_rest:
            raise InvalidArgument(
                f"--impl: trace {args.trace!r} uses the proofs' one-request-versus-the-rest "
                "abstraction (abstract_rest: true); it replays on the model only; drop --impl")
        factory = resolve_factory(args.impl)
        make_manager(factory, trace.config, trace.policy)  # a factory that raises: exit 2
    check = verify_trace(trace)
    rendered = {"table": trace.table, "path": trace.path, "program": trace.program,
                "jsonl": trace.to_jsonl}[args.render]()
    print(rendered.rstrip("\n"))
    sys.stdout.flush()
    print(check.render(args.trace), file=sys.stderr)
    code = EXIT_OK if check.ok else EXIT_DIVERGED
    if factory is not None:
        from kvspec.conformance.replay import replay_on_impl

        if not check.replays:
            print(f"Implementation {args.impl}: not replayed: the model refuses step "
                  f"{check.refused} of the trace", file=sys.stderr)
            return EXIT_DIVERGED
        impl = replay_on_impl(trace, factory, impl_name=args.impl, strict=args.strict)
        print(impl.render(context=False), file=sys.stderr)
        if not impl.same_violation:
            code = EXIT_DIVERGED
    return code


def _check(args: argparse.Namespace) -> int:
    export = writable_dir(args.export, "--export")  # before the check, not after it
    hyp_dir = writable_dir(args.hypothesis_dir, "--hypothesis-dir")

    from kvspec.conformance.adapter import make_manager, resolve_factory
    from kvspec.conformance.check import ALL, DEFAULT_CONFIGS, claimed_presets, run_checks

    asked = args.policy or [ALL]
    policies = None if ALL in asked else _dedup(asked)
    factory = resolve_factory(args.impl)
    # a bad --impl, a bad claim or a factory that raises is reported before any work
    first = (policies or claimed_presets(factory, DEFAULT_CONFIGS[0]) or [DEFAULT_PRESETS[0]])[0]
    make_manager(factory, Config(), get_policy(first))
    with _Bars(args) as bars:
        def progress(tier: str, done: int, total: int) -> None:
            bars.show(tier, done, total, unit="run")

        report = run_checks(args.impl, policies, examples=args.examples, seed=args.seed,
                            walk_length=CHECK_WALK_LENGTH, hypothesis_dir=hyp_dir,
                            progress=None if bars.off else progress, strict=args.strict)
    print(report.render())
    if export is not None:
        for r in report.reports:
            if r.divergence is None:
                continue
            path = r.divergence.trace.save(export / f"check-{r.policy}.jsonl")
            print(f"Divergence trace ({r.policy}) -> {path}  (kvspec replay {path} --impl"
                  f" {args.impl}" + (" --strict)" if args.strict else ")"))
    if report.interrupted:
        return _interrupted()
    return EXIT_OK if report.ok else EXIT_DIVERGED


def _explore(args: argparse.Namespace) -> int:
    from kvspec.conformance.adapter import make_manager, resolve_factory
    from kvspec.conformance.exhaustive import explore

    policy = get_policy(args.policy)
    config = Config(num_requests=args.requests, num_gpu_pages=args.gpu_pages, num_host_pages=1,
                    max_prompt_len=2, max_draft_len=1, tokens_per_block=2)
    factory = resolve_factory(args.impl)
    make_manager(factory, config, policy)  # a factory that raises fails before the BFS
    with _Bars(args) as bars:  # "explore": states found (depth shown), then "replay": paths
        def progress(states: int, depth: int) -> None:
            bars.show("explore", states, None, f"depth {depth}", unit="state", unit_scale=True)

        def replay_progress(done: int, total: int) -> None:
            bars.show("replay", done, total, unit="path")

        res = explore(factory, policy, config, max_depth=args.max_depth, impl_name=args.impl,
                      progress=None if bars.off else progress,
                      replay_progress=None if bars.off else replay_progress,
                      strict=args.strict)
    print(res.render())
    if res.interrupted:
        return _interrupted()
    return EXIT_OK if res.ok else EXIT_DIVERGED


def _catalogue(args: argparse.Namespace) -> int:
    from kvspec.conformance.catalogue import FULL, QUICK, run_catalogue

    rows = _dedup(args.row) if args.row else None
    checkers = _dedup(args.checker) if args.checker else None
    with _Bars(args) as bars:
        done = [0]

        def progress(row: str, checker: str) -> None:
            done[0] += 1
            bars.show("catalogue", done[0], None, f"{row} / {checker}", unit="check")

        res = run_catalogue(rows, budget=QUICK if args.quick else FULL,
                            budget_name="quick" if args.quick else "full", checkers=checkers,
                            progress=None if bars.off else progress)
    print(json.dumps(res.to_json(), indent=2) if args.json else res.render())
    if res.interrupted:
        return _interrupted()
    return EXIT_OK if res.ok else EXIT_DIVERGED


def _simulate(args: argparse.Namespace) -> int:
    from fractions import Fraction

    from kvspec.simulate import (
        AccountingError,
        SimulationOptions,
        Workload,
        get_workload,
        read_trace,
        simulate,
    )
    from kvspec.simulate.metrics import CostModel
    from kvspec.simulate.report import render_table, to_json, write_files

    policies = _dedup(args.policy or list(SIMULATE_POLICIES))
    out = writable_dir(args.out, "--out")  # before the run, not after it
    if out is not None and not args.no_plots:
        from kvspec.simulate.plots import require_matplotlib

        require_matplotlib()  # no matplotlib: fail now, not after the run
    adp = args.adp or args.ranks > 1
    if adp and args.batch_wait_iters:
        raise InvalidArgument("--batch-wait-iters applies without attention DP; with --ranks "
                              "> 1 or --adp the ADP balance defers context requests "
                              "(--adp-timeout-iters, --adp-wait-iters)")
    if args.workload in _simulate_workloads():
        spec = get_workload(args.workload).with_settings(dict(args.set or []))
        changes: dict[str, object] = {}
        if args.requests is not None:
            changes["num_requests"] = args.requests
        if args.chunk_size is not None:
            changes["chunk_size"] = args.chunk_size
        if args.draft_len is not None:
            changes["draft_len"] = args.draft_len
        workload = Workload.generated(spec.replace(**changes), args.seed)
    else:
        if args.set:
            raise InvalidArgument(f"--set applies to built-in workloads; {args.workload!r} is"
                                  " a trace (use --requests, --chunk-size, --draft-len)")
        read_trace(args.workload, 1)  # the header and first row, before anything else
        workload = Workload.from_trace(args.workload, args.chunk_size or 512,
                                       args.draft_len or 0, args.requests)
    config = Config(
        tokens_per_block=args.tokens_per_block, num_gpu_pages=args.gpu_pages,
        num_host_pages=args.host_pages, max_util_for_resume=args.max_util_for_resume,
        num_requests=args.max_requests, max_num_tokens=args.max_num_tokens,
        max_batch_size=args.max_batch_size, batch_wait_timeout_iters=args.batch_wait_iters,
        batch_wait_max_tokens_ratio=Fraction(args.batch_wait_ratio).limit_denominator(1000),
        attention_dp=adp, max_prompt_len=max(a.prompt_tokens for a in workload.arrivals),
        max_draft_len=workload.draft_len)
    if args.backend == "torch":
        import torch

        torch.set_num_threads(args.torch_threads)
    with _Bars(args) as bars:
        def progress(policy: str, done: int, total: int) -> None:
            bars.show(f"simulate {policy}", done, total, unit="req")

        options = SimulationOptions(
            backend=args.backend, device=args.device,
            cost=CostModel(args.cost_fixed_ms, args.cost_per_token_us),
            integrity_every=args.integrity_every, max_iterations=args.max_iterations,
            adp_timeout_iters=args.adp_timeout_iters,
            adp_batching_wait_iters=args.adp_wait_iters,
            progress=None if bars.off else progress)
        try:
            result = simulate(policies, workload, config, ranks=args.ranks, seed=args.seed,
                              options=options)
        except AccountingError as exc:  # a manager's (or the simulator's) bug, not bad input
            print(f"kvspec: error: manager accounting failure (AccountingError): "
                  f"{' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_DIVERGED
    written = []
    if out is not None:
        written = write_files(result, out)
        if not args.no_plots:
            from kvspec.simulate.plots import write_plots

            written += write_plots(result, out)
    if args.json:
        print(json.dumps(to_json(result), indent=2))
    else:
        print(render_table(result))
        if written:
            print(f"wrote {len(written)} files to {out}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
