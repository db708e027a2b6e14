"""``run_checks`` and ``run_check``: the entry points behind ``kvspec check --impl
module:factory``.

``run_check`` checks one policy: the walker tier (seeded swarm walks, failures shrunk by delta
debugging) and the hypothesis tier (generated state machine steered towards pool pressure,
then our shrinking), both cycling :data:`DEFAULT_CONFIGS`, into a :class:`CheckReport`.
``run_checks`` runs it for every preset the implementation claims (:func:`claimed_presets`)
or the policies given, into a :class:`MultiCheckReport`.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import PRESETS, Policy, get_policy
from kvspec.spec.coverage import Coverage
from kvspec.spec.trace import Step, Trace
from kvspec.spec.walker import DecidedGuards

from .adapter import Factory, resolve_factory
from .detect import EXECUTOR_IDS
from .lockstep import Lockstep, run_steps
from .misuse import MisuseFinding, merge, render_warnings
from .report import Divergence, TierResult, impl_label, render_config
from .shrink import shrink
from .walker import Sampler, Swarm

Progress = Callable[[str, int, int], None]
"""``progress(tier_name, runs_done, runs_total)``."""

CACHE_ENV = "KVSPEC_CACHE_DIR"
"""Environment variable naming kvspec's cache folder (default ``~/.cache/kvspec``)."""


class InterruptLatch:
    """Remembers a SIGINT even when the ``KeyboardInterrupt`` it raised was swallowed.

    Python ignores (prints) an exception raised inside a garbage-collector callback, and
    hypothesis registers one: a Ctrl-C that lands there would be lost and a long check would
    run on. While :meth:`installed` is active (main thread, default SIGINT handler only) a
    SIGINT sets ``seen`` and raises ``KeyboardInterrupt`` as usual; the loops call
    :meth:`check` between steps, which raises again if the first one was swallowed (and
    ``sys.unraisablehook`` drops the "Exception ignored" report of that interrupt).
    Cost: one attribute test per call.
    """

    def __init__(self) -> None:
        self.seen = False

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a SIGINT arrived since :meth:`installed` began."""
        if self.seen:
            raise KeyboardInterrupt

    def _handler(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[InterruptLatch]:
        """Within the block SIGINT goes through the latch; the default handler is restored
        on exit. Does nothing off the main thread or when a custom handler is set."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield self
            return
        previous_hook = sys.unraisablehook

        def hook(unraisable: Any) -> None:  # the swallowed interrupt: no "Exception ignored"
            if not isinstance(unraisable.exc_value, KeyboardInterrupt):
                previous_hook(unraisable)

        signal.signal(signal.SIGINT, self._handler)
        sys.unraisablehook = hook
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.unraisablehook = previous_hook


def cache_dir() -> Path:
    """kvspec's cache folder: ``$KVSPEC_CACHE_DIR``, else ``~/.cache/kvspec`` (not created
    here). ``run_check`` without ``hypothesis_dir`` lets hypothesis keep its own files (its
    constants cache) in ``cache_dir() / "hypothesis"``, never in the current directory."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kvspec"


DEFAULT_CONFIGS: tuple[Config, ...] = (
    Config(),
    Config(tokens_per_block=1, num_gpu_pages=3, num_host_pages=2,
           max_util_for_resume=Fraction(2, 3), max_prompt_len=4, max_rewind_len=1),
    Config(attention_dp=False, batch_wait_timeout_iters=2,
           batch_wait_max_tokens_ratio=Fraction(1, 2), num_gpu_pages=5, num_requests=3,
           max_rewind_len=1, max_draft_len=2),
    Config(num_gpu_pages=3, num_host_pages=2, num_requests=3, max_util_for_resume=Fraction(1),
           max_prompt_len=4),
    Config(num_gpu_pages=1, num_host_pages=1, max_prompt_len=3, max_rewind_len=1),
    Config(tokens_per_block=1, num_gpu_pages=2, num_host_pages=0, max_prompt_len=3,
           max_draft_len=2, max_util_for_resume=Fraction(1)),
    Config(tokens_per_block=1, num_gpu_pages=3, num_host_pages=1, num_requests=3,
           attention_dp=False, batch_wait_timeout_iters=1,
           batch_wait_max_tokens_ratio=Fraction(1),
           max_prompt_len=3, max_rewind_len=0),
    Config(num_gpu_pages=2, num_host_pages=3, attention_dp=False, max_prompt_len=4,
           max_draft_len=2, max_util_for_resume=Fraction(1, 2)),
)
"""Configs both tiers cycle when ``run_check`` gets none (the walker walk by walk, the
hypothesis tier draws one per example): #0 the default; #1 B = 1, a tight pool, a resume
gate of 2/3; #2 batch waiting without attention DP on 3 slots, drafts of 2; #3 pool pressure
with the host tier on 3 slots (G = 3, H = 2, gate open: recalls that need implicit eviction);
#4 one GPU page and one host page; #5 B = 1, G = 2 and no host pages (nothing can be
evicted); #6 B = 1 on 3 slots with one host page, batch waiting for one iteration, no rewind
room; #7 attention DP off without batch waiting, G = 2, drafts of 2, a resume gate of 1/2.
Together: G = 1..5, B = 1 and 2, H = 0..4, 2 and 3 requests, batch waiting on and off,
attention DP on and off. The first three are the configs of the issue-8 checker, in the same
order."""

TIERS = ("walker", "hypothesis")

DEFAULT_EXAMPLES = 100
DEFAULT_WALK_LENGTH = 120
"""The default budget per policy of :func:`run_checks` and ``kvspec check``: walker walks
and their length (the hypothesis tier runs ``examples // 5`` examples). Every preset with it
takes about 30 s on the project's 2-core machine (docs/performance.md, "Checker strength").
Walks of 120 steps reach the pool-pressure states about twice as often as twice as many
walks of 60 (their first 60 steps are those walks); :func:`run_check` keeps its 60."""


def _verdict(ok: bool, interrupted: bool) -> str:
    """``OK``, ``DIVERGES``, ``INTERRUPTED`` or ``DIVERGES (interrupted)``."""
    if interrupted:
        return "INTERRUPTED" if ok else "DIVERGES (interrupted)"
    return "OK" if ok else "DIVERGES"


@dataclass
class CheckReport:
    """Outcome of :func:`run_check`: per-tier steps, time and the first (shrunk) divergence.

    ``config`` is the one config every run used, or None when both tiers cycled ``configs``
    (:data:`DEFAULT_CONFIGS` by default: the walker walk by walk, the hypothesis tier one
    drawn per example). ``interrupted``: a ``KeyboardInterrupt`` stopped the check; the
    tiers hold what was done before it (a divergence found before the interrupt is kept,
    unshrunk if shrinking was cut short). ``trace`` is the divergence as a replayable
    :class:`~kvspec.spec.trace.Trace`. ``warnings``: the first tolerated misuse of each kind
    over the tiers (``ok`` stays True); ``strict``: the check ran with ``strict=True`` (a
    tolerated misuse is a divergence). ``seconds``: wall time of the whole check.
    """

    impl: str
    policy: str
    seed: int
    tiers: list[TierResult] = field(default_factory=list)
    config: Config | None = None
    configs: tuple[Config, ...] = ()
    interrupted: bool = False
    hypothesis_dir: str | None = None
    strict: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No tier diverged (an interrupted check may still be ok: see ``interrupted``)."""
        return all(t.divergence is None for t in self.tiers)

    @property
    def divergence(self) -> Divergence | None:
        for t in self.tiers:
            if t.divergence is not None:
                return t.divergence
        return None

    @property
    def trace(self) -> Trace | None:
        """The shrunk divergence as a trace (policy, the failing run's exact config, steps
        with the model's results and digests): ``trace.save(path)``, then ``kvspec replay
        path --impl <same factory>`` reproduces the divergence at the same step. None when
        the check found nothing."""
        div = self.divergence
        return None if div is None else div.trace

    @property
    def steps(self) -> int:
        return sum(t.steps for t in self.tiers)

    @property
    def warnings(self) -> list[MisuseFinding]:
        """The first tolerated misuse of each kind over the tiers, in tier order."""
        out: list[MisuseFinding] = []
        for t in self.tiers:
            merge(out, t.warnings)
        return out

    @property
    def model_violations(self) -> list[str]:
        """Invariant ids the model itself violated under this policy during the check
        (sorted): the policy breaks them, and the implementation matched each one."""
        return sorted(set().union(*(t.model_violations for t in self.tiers)))

    @property
    def coverage(self) -> Coverage:
        """The tiers' coverage merged: branches reached, witnesses hit, configs, steps."""
        return Coverage.merged(t.coverage for t in self.tiers)

    def coverage_lines(self) -> list[str]:
        """The coverage summary and a warning per branch or witness never reached."""
        return ["  " + ln for ln in self.coverage.lines()]

    def model_violation_lines(self) -> list[str]:
        """One line naming the model's own violations ([] when there were none): those of a
        manager, which the implementation showed at the same steps, and those of the
        executor's decision (:data:`~kvspec.conformance.detect.EXECUTOR_IDS`), which the
        driver took from the model."""
        ids = self.model_violations
        if not ids:
            return []
        managed = [i for i in ids if i not in EXECUTOR_IDS]
        decided = [i for i in ids if i in EXECUTOR_IDS]
        why = []
        if managed:
            why.append(f"the implementation showed {', '.join(managed)} at the same steps")
        if decided:
            why.append(f"{', '.join(decided)}: the executor's decision, taken from the model")
        return [f"  model: policy {self.policy} itself violates {', '.join(ids)} on the way"
                f" ({'; '.join(why)})"]

    @property
    def verdict(self) -> str:
        """``OK``, ``DIVERGES``, ``INTERRUPTED`` or ``DIVERGES (interrupted)``."""
        return _verdict(self.ok, self.interrupted)

    def render(self) -> str:
        """Head (impl, policy, seed, verdict), the config(s), one line per tier, where an
        interrupt stopped it, which run and config failed, the divergence report, then the
        misuse warnings (one line each)."""
        lines = [f"kvspec check: impl {self.impl}, policy {self.policy}, seed {self.seed}"
                 f"{', strict' if self.strict else ''}: {self.verdict}"]
        lines.extend(config_lines(self.config, self.configs))
        lines.extend(self.tier_lines())
        lines.extend(self.coverage_lines())
        lines.extend(self.model_violation_lines())
        lines.extend(self.interrupt_lines())
        div = self.divergence_lines()
        if div:
            lines.append("")
            lines.extend(div)
        lines.extend(render_warnings(self.warnings))
        return "\n".join(lines)

    def tier_lines(self) -> list[str]:
        """One line per tier run (runs, steps, seconds, steps/s, DIVERGED) and its notes."""
        lines = []
        for t in self.tiers:
            lines.append(f"  {t.tier:<10} {t.runs:>5} runs {t.steps:>8} steps"
                         f" {t.seconds:7.2f} s ({t.steps_per_second:,.0f} steps/s)"
                         + ("  DIVERGED" if t.divergence else "")
                         + ("  INTERRUPTED" if t.interrupted else ""))
            lines.extend(f"    note: {n}" for n in t.notes)
        return lines

    def interrupt_lines(self) -> list[str]:
        """Where an interrupt stopped the check ([] when it ran to the end)."""
        if not self.interrupted:
            return []
        cut = next((t for t in self.tiers if t.interrupted), None)
        if cut is None:
            return []
        rest = [n for n in TIERS if n not in {t.tier for t in self.tiers}]
        return [f"interrupted after {cut.runs} of {cut.runs_total} {cut.tier} runs"
                f" ({self.steps:,} steps in all)"
                + (f"; not run: {', '.join(rest)}" if rest else "")]

    def divergence_lines(self) -> list[str]:
        """Which tier, run, run seed and config found the divergence, then its report
        ([] when nothing diverged)."""
        for t in self.tiers:
            if t.divergence is None:
                continue
            where = f"Found by the {t.tier} tier"
            if t.failed_run is not None:
                where += f" in run {t.failed_run} of {t.runs_total}"
            if t.run_seed:
                where += f" (run seed {t.run_seed!r})"
            if t.config is not None:
                label = f"config #{t.config_index}" if t.config_index is not None else "config"
                where += f" under {label}: {render_config(t.config)}"
            return [where, t.divergence.render()]
        return []


def config_lines(config: Config | None, configs: Sequence[Config]) -> list[str]:
    """The report lines naming the config(s) of a check: ``config: ...`` for one, else how
    both tiers cycle them and one line each (``#i`` is the index a divergence names)."""
    if config is not None:
        return [f"  config: {render_config(config)}"]
    builtin = tuple(configs) == DEFAULT_CONFIGS
    head = (f"  configs: both tiers cycle {len(configs)}"
            + (" built-in configs (check.DEFAULT_CONFIGS)" if builtin else " configs")
            + ": the walker walk by walk, the hypothesis tier one per example")
    return [head, *(f"    #{i} {render_config(c)}" for i, c in enumerate(configs))]


def walk(factory: Factory, configs: Sequence[Config], policy: Policy, *, walks: int,
         seed: int, length: int = 60, impl_name: str = "",
         shrink_failures: bool = True, progress: Progress | None = None,
         latch: InterruptLatch | None = None, strict: bool = False,
         swarm: bool = True) -> TierResult:
    """The walker tier: ``walks`` seeded walks of ``length`` steps (configs cycled).

    ``swarm``: each walk runs under a :class:`~kvspec.conformance.walker.Swarm` drawn from
    ``f"{seed}:{w}:swarm:{policy.name}"`` (a random subset of the optional actions left out,
    arguments biased; a quarter of the walks run plain); False: every walk plain. The policy
    in the swarm's seed makes the walks of different policies differ (a check of every
    preset does not repeat one preset's walks). The failing walk's swarm is named in a note.
    Stops at the first divergence and shrinks it; the result names the failing run, its
    config (and index in ``configs``) and its RNG seed. ``progress("walker", done, walks)``
    after each walk. A ``KeyboardInterrupt`` inside the loop stops the tier with
    ``interrupted=True`` (a divergence found before it is kept, unshrunk if shrinking was
    cut short). ``strict``: see :class:`~kvspec.conformance.lockstep.Lockstep`; misuse
    warnings (first of each kind) go to ``warnings`` with their run. Cost: ~0.1-0.3 ms per
    step with the reference.
    """
    res = TierResult("walker", runs_total=walks)
    latch = latch if latch is not None else InterruptLatch()
    tables: dict[int, DecidedGuards] = {}   # per config: the guard tables every walk shares
    t0 = time.perf_counter()
    try:
        for w in range(walks):
            latch.check()
            ci = w % len(configs)
            config = configs[ci]
            lock = Lockstep(factory, config, policy, impl_name=impl_name, strict=strict,
                            coverage=res.coverage)
            res.coverage.ran(policy, (config,))
            div = lock.initial_divergence()
            plan = (Swarm.draw(lock.model, random.Random(f"{seed}:{w}:swarm:{policy.name}"))
                    if swarm else Swarm())
            decided = tables.get(ci)
            if decided is None:
                decided = tables[ci] = DecidedGuards(lock.model)
            sampler = Sampler(lock.model, random.Random(f"{seed}:{w}"), plan, decided)
            for _ in range(length):
                if div is not None:
                    break
                nxt = sampler.draw(lock.state)
                if nxt is None:
                    break
                div = lock.step(*nxt)
                res.steps += 1
            if div is None:
                div = lock.flush()  # the walk's last batch of forwards
            res.runs += 1  # completed walks (an interrupted one counts its steps only)
            res.model_violations.update(lock.violated)
            merge(res.warnings, lock.warnings, f"walker run {w + 1} (run seed '{seed}:{w}')"
                  + (f", config #{ci}" if len(configs) > 1 else ""))
            if div is not None:  # recorded first: an interrupt from here on keeps it
                res.divergence, res.failed_run, res.run_seed = div, w + 1, f"{seed}:{w}"
                res.config = config
                res.config_index = ci if len(configs) > 1 else None
                if swarm:
                    res.notes.append(f"walker run {w + 1} ran under the swarm:"
                                     f" {plan.describe()}")
            if progress is not None:
                progress("walker", w + 1, walks)
            if div is not None:
                rerun = _rerun(factory, config, policy, impl_name, strict)
                if shrink_failures and div.index > 0:
                    div = shrink(div, rerun)
                res.divergence = _settle(div, rerun, res)
                break
    except KeyboardInterrupt:
        res.interrupted = True
    res.interrupted = res.interrupted or latch.seen
    res.seconds = time.perf_counter() - t0
    return res


def _rerun(factory: Factory, config: Config, policy: Policy, impl_name: str,
           strict: bool = False) -> Callable[[Sequence[Step]], Divergence | None]:
    def run(steps: Sequence[Step]) -> Divergence | None:
        return run_steps(factory, config, policy, steps, impl_name=impl_name, strict=strict)
    return run


def _settle(div: Divergence, rerun: Callable[[Sequence[Step]], Divergence | None],
            res: TierResult) -> Divergence:
    """The divergence exactly as a replay of its steps shows it (what ``replay_on_impl`` of
    the saved trace reports): its steps re-run once in a fresh lockstep with every check on.
    A run that does not reproduce keeps ``div`` and says so in a note."""
    if div.index == 0:
        return div
    again = rerun(div.trace.steps)
    if again is None or again.index != div.index:
        res.notes.append("the divergence did not reproduce on a fresh replay of its steps"
                         " (a nondeterministic manager?); the report shows the first run")
        return div
    again.shrunk_from = div.shrunk_from
    again.one_minimal = div.one_minimal
    return again


@contextmanager
def hypothesis_storage(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block hypothesis keeps its files (constants cache, default database) under
    ``directory`` instead of ``./.hypothesis``; the previous setting (including
    ``HYPOTHESIS_STORAGE_DIRECTORY`` not yet read) is restored on exit. Cost: none."""
    from hypothesis import configuration

    key = "__hypothesis_home_directory"  # hypothesis's module global (None: not chosen yet)
    before = vars(configuration).get(key)
    configuration.set_hypothesis_home_dir(Path(directory))
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(before)


def hypothesis_tier(factory: Factory, config: Config | Sequence[Config], policy: Policy, *,
                    examples: int, seed: int | None, impl_name: str = "",
                    step_count: int = 40, derandomize: bool | None = None,
                    progress: Progress | None = None,
                    hypothesis_dir: str | os.PathLike[str] | None = None,
                    latch: InterruptLatch | None = None, strict: bool = False,
                    targets: bool = True) -> TierResult:
    """The hypothesis tier: the generated state machine for ``examples`` examples.

    ``config``: one config, or several: each example then draws its config (hypothesis
    shrinks towards the first); a divergence names the config and its index
    (``config_index``). ``targets``: the machine reports pool pressure (implicit evictions)
    to ``hypothesis.target`` (:data:`~kvspec.conformance.machine.TARGETS`) and the target
    phase runs, steering generation towards growths and resumes that must evict.
    ``seed`` None keeps the active hypothesis profile's randomness (what tests want); an int
    seeds it. Hypothesis shrinks a failure; ours then shrinks the step list further.
    ``progress("hypothesis", done, examples)`` after each example. ``hypothesis_dir`` None:
    no example database and hypothesis's own files under ``cache_dir() / "hypothesis"``;
    a directory: the example database (``DirectoryBasedExampleDatabase``, in
    ``hypothesis_dir/examples``) and hypothesis's files there, so a failure found once is
    tried first next time. A ``KeyboardInterrupt`` stops the tier with ``interrupted=True``.
    ``strict``: see :class:`~kvspec.conformance.lockstep.Lockstep`; misuse warnings (first of
    each kind over the examples) go to ``warnings``.
    """
    configs = (config,) if isinstance(config, Config) else tuple(config)
    res = TierResult("hypothesis", runs_total=examples,
                     config=configs[0] if len(configs) == 1 else None)
    done = [0]
    latch = latch if latch is not None else InterruptLatch()

    def example_done() -> None:
        done[0] += 1
        latch.check()
        if progress is not None:
            progress("hypothesis", min(done[0], examples), examples)

    machine: Any = None
    found_warnings: list[MisuseFinding] = []
    t0 = time.perf_counter()
    try:  # the imports too: an interrupt while hypothesis loads is an interrupt of the tier
        from hypothesis import HealthCheck, Phase, Verbosity, settings
        from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
        from hypothesis.stateful import run_state_machine_as_test

        from .machine import DivergenceFound, make_machine

        machine = make_machine(factory, configs, policy, impl_name=impl_name,
                               on_example_end=example_done, before_step=latch.check,
                               strict=strict, warnings=found_warnings, targets=targets,
                               coverage=res.coverage, model_violations=res.model_violations)
        res.coverage.ran(policy, configs)
        if seed is not None:
            machine._hypothesis_internal_use_seed = seed
        kw: dict[str, object] = {}
        if derandomize is not None:
            kw["derandomize"] = derandomize
        home = cache_dir() / "hypothesis" if hypothesis_dir is None else Path(hypothesis_dir)
        database: ExampleDatabase | None = None
        if hypothesis_dir is not None:
            database = DirectoryBasedExampleDatabase(Path(hypothesis_dir) / "examples")
            if derandomize is None:  # hypothesis's default under CI=true would drop it
                kw["derandomize"] = False
        # hypothesis's own shrinking is slow on long stateful runs; ddmin below does the job
        phases = (Phase.explicit, Phase.reuse, Phase.generate) + (
            (Phase.target,) if targets else ())
        opts = settings(max_examples=examples, phases=phases,
                        stateful_step_count=step_count, deadline=None, database=database,
                        verbosity=Verbosity.quiet,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.filter_too_much],
                        **kw)  # type: ignore[arg-type]
        try:
            with hypothesis_storage(home):
                run_state_machine_as_test(machine, settings=opts)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            found = _divergence_in(exc, DivergenceFound)
            if found is None:
                raise
            div = found
            res.divergence = div
            ci = next((i for i, c in enumerate(configs) if c == div.trace.config), 0)
            res.config = configs[ci]
            res.config_index = ci if len(configs) > 1 else None
            rerun = _rerun(factory, configs[ci], policy, impl_name, strict)
            if div.index > 0:
                div = shrink(div, rerun)
            res.divergence = _settle(div, rerun, res)
    except KeyboardInterrupt:
        res.interrupted = True
    res.interrupted = res.interrupted or latch.seen
    res.seconds = time.perf_counter() - t0
    res.steps = 0 if machine is None else machine.steps_run[0]
    res.runs = min(done[0], examples)
    merge(res.warnings, found_warnings, "a hypothesis example")
    return res


def _divergence_in(exc: BaseException, kind: type[Exception]) -> Divergence | None:
    """The :class:`Divergence` carried by ``exc``, or by an exception it groups or chains
    (hypothesis wraps a failure that did not reproduce in a ``FlakyFailure`` group)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            div: Divergence = e.divergence  # type: ignore[attr-defined]
            return div
        todo.extend(getattr(e, "exceptions", ()))
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return None


def run_check(factory_spec: str | Factory, policy: str | Policy = "pr13805-reviewed",
              examples: int = DEFAULT_EXAMPLES, seed: int = 0,
              config: Config | None = None, *, configs: Sequence[Config] | None = None,
              tiers: Sequence[str] = TIERS, walk_length: int = 60,
              hypothesis_examples: int | None = None, progress: Progress | None = None,
              hypothesis_dir: str | os.PathLike[str] | None = None,
              strict: bool = False, swarm: bool = True) -> CheckReport:
    """Check an implementation against the model under one policy (:func:`run_checks`
    checks several, by default every preset the implementation claims).

    Args:
        factory_spec: ``"module:factory"`` or a callable ``factory(config, policy)``.
        policy: a preset name (``kvspec.policy.PRESETS``) or a :class:`Policy`. The
            factory's claims (:func:`claimed_presets`) are not consulted: what is asked for
            is checked.
        examples: walker walks of ``walk_length`` steps (60 here, as before issue 10;
            :func:`run_checks` and ``kvspec check`` walk :data:`DEFAULT_WALK_LENGTH`); the
            hypothesis tier runs ``hypothesis_examples`` (default ``max(1, examples // 5)``)
            examples.
        seed: seeds both tiers (same seed, same sequences).
        config: one config for every run; None cycles ``configs``.
        configs: the configs both tiers cycle when ``config`` is None (default
            :data:`DEFAULT_CONFIGS`): the walker walk by walk, the hypothesis tier draws one
            per example.
        tiers: any of ``"walker"``, ``"hypothesis"``.
        progress: ``progress(tier_name, runs_done, runs_total)`` after each walker walk and
            each hypothesis example (from the checking thread; keep it cheap).
        hypothesis_dir: None: no example database, and hypothesis's own files go under
            ``cache_dir() / "hypothesis"`` (``$KVSPEC_CACHE_DIR``, default
            ``~/.cache/kvspec``), never the current directory. A directory (created if
            missing): hypothesis's example database and files live there, so a failure
            found once is replayed first by the next check with the same directory.
        strict: a tolerated misuse (:mod:`~kvspec.conformance.misuse`: a double free, a free
            of an unknown request, a suspend of a SUSPENDED cache accepted or refused with
            another exception type) is a divergence. Without it each kind is reported once
            in ``CheckReport.warnings`` and the check goes on; a misuse that changed the
            manager state is a divergence either way.
        swarm: swarm testing in the walker tier (:class:`~kvspec.conformance.walker.Swarm`:
            each walk leaves out a random subset of the optional actions and biases its
            arguments, drawn from the seed); False: every walk uses every action uniformly.

    Returns:
        A :class:`CheckReport` (``.ok``, ``.render()``, ``.trace``, ``.warnings``); the first
        tier that diverges stops the check. A ``KeyboardInterrupt`` (Ctrl-C) during the tiers
        returns the report so far with ``interrupted=True`` instead of raising.

    Raises:
        InvalidArgument: a bad factory string, policy name, tier name, example count, config
            or ``hypothesis_dir`` (all checked before any run). A manager that raises during
            the run is a divergence in the report, not an error.
    """
    factory = resolve_factory(factory_spec)
    if isinstance(policy, str) and policy == ALL:
        raise InvalidArgument("kvspec check: run_check checks one policy; use run_checks("
                              "factory) for every preset the implementation claims")
    pol = get_policy(policy) if isinstance(policy, str) else policy
    _check_budget(examples, walk_length, hypothesis_examples, seed, tiers)
    cycled = _configs(config, configs)
    hyp_dir = _hypothesis_dir(hypothesis_dir)
    latch = InterruptLatch()
    with latch.installed():
        return _check_policy(factory, impl_label(factory_spec), pol, cycled, config,
                             examples=examples, seed=seed, tiers=tiers,
                             walk_length=walk_length, hypothesis_examples=hypothesis_examples,
                             progress=progress, hyp_dir=hyp_dir, strict=bool(strict),
                             swarm=bool(swarm), latch=latch)


def _check_budget(examples: Any, walk_length: Any, hypothesis_examples: Any, seed: Any,
                  tiers: Any) -> None:
    """The budget, seed and tier arguments of :func:`run_check`, checked before any run."""
    for name, value in (("examples", examples), ("walk_length", walk_length),
                        ("hypothesis_examples", hypothesis_examples)):
        if value is None and name == "hypothesis_examples":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"kvspec check: {name}={value!r} must be an integer >= 1"
                                  + (" (--examples)" if name == "examples" else ""))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"kvspec check: seed={seed!r} must be an integer (--seed)")
    bad = [t for t in tiers if t not in TIERS] if not isinstance(tiers, str) else []
    if isinstance(tiers, str) or bad:
        raise InvalidArgument(f"kvspec check: unknown tier(s) {bad or tiers!r}; known:"
                              f" {', '.join(TIERS)}")


def _configs(config: Any, configs: Any) -> tuple[Config, ...]:
    """The configs a check cycles: ``(config,)``, else ``configs``, else the built-in ones."""
    if config is not None and not isinstance(config, Config):
        raise InvalidArgument(f"kvspec check: config={config!r} must be a kvspec Config")
    if config is not None:
        if configs is not None:
            raise InvalidArgument("kvspec check: give config or configs, not both")
        return (config,)
    if configs is None:
        return DEFAULT_CONFIGS
    out = tuple(configs)
    if not out or not all(isinstance(c, Config) for c in out):
        raise InvalidArgument(f"kvspec check: configs={configs!r} must be one or more kvspec"
                              " Configs")
    return out


def _check_policy(factory: Factory, name: str, pol: Policy, configs: tuple[Config, ...],
                  config: Config | None, *, examples: int, seed: int, tiers: Sequence[str],
                  walk_length: int, hypothesis_examples: int | None,
                  progress: Progress | None, hyp_dir: Path | None, strict: bool,
                  swarm: bool, latch: InterruptLatch) -> CheckReport:
    """One policy's tiers (arguments checked by the caller, the latch installed)."""
    t0 = time.perf_counter()
    report = CheckReport(name, pol.name, seed, config=config, configs=configs,
                         hypothesis_dir=None if hyp_dir is None else str(hyp_dir),
                         strict=strict)
    for tier in tiers:
        if tier == "walker":
            res = walk(factory, configs, pol, walks=examples, seed=seed, length=walk_length,
                       impl_name=name, progress=progress, latch=latch, strict=strict,
                       swarm=swarm)
        else:
            n = hypothesis_examples if hypothesis_examples is not None else \
                max(1, examples // 5)
            res = hypothesis_tier(factory, configs, pol, examples=n, seed=seed,
                                  impl_name=name, progress=progress, hypothesis_dir=hyp_dir,
                                  latch=latch, strict=strict)
        if res.divergence is not None:
            res.divergence.trace = replace(
                res.divergence.trace,
                source=f"kvspec check: impl {name}, policy {pol.name}, seed {seed},"
                       + (" strict," if strict else "") + f" {res.tier} tier"
                       + (f" run {res.failed_run}" if res.failed_run is not None else ""))
        report.tiers.append(res)
        if res.interrupted:
            report.interrupted = True
            break
        if res.divergence is not None:
            break
    report.seconds = time.perf_counter() - t0
    return report


# ---- every preset in one run --------------------------------------------------------------

ALL = "all"
"""The policy name that means "every preset the implementation claims" (``--policy all``)."""

CLAIM_ATTRIBUTES = ("kvspec_presets", "supported_policies")
"""The factory attributes :func:`claimed_presets` reads."""


def claimed_presets(factory: Factory, config: Config | None = None) -> tuple[str, ...]:
    """The presets ``factory`` claims to implement, in :data:`~kvspec.policy.PRESETS` order.

    A factory claims presets with one optional attribute:

    - ``factory.kvspec_presets = ("pr13805", "pr14849")``: the preset names, for every
      config;
    - ``factory.supported_policies(config) -> names``: the names for ``config`` (a check
      runs each claimed preset under the configs that claim it; ``config`` None asks for
      ``Config()``).

    Without either, every preset. Cost: one attribute read (and one call per config).

    Raises:
        InvalidArgument: both attributes are set, the claim is not an iterable of preset
            names (an unknown name is listed with the known ones), it is empty, or
            ``supported_policies`` raised.
    """
    static = getattr(factory, "kvspec_presets", None)
    dynamic = getattr(factory, "supported_policies", None)
    label = impl_label(factory)
    if static is not None and dynamic is not None:
        raise InvalidArgument(f"factory {label} has both kvspec_presets and"
                              " supported_policies; keep one")
    if static is None and dynamic is None:
        return tuple(PRESETS)
    if dynamic is not None:
        if not callable(dynamic):
            raise InvalidArgument(f"factory {label}: supported_policies is a"
                                  f" {type(dynamic).__name__}, not a function(config) ->"
                                  " preset names")
        where = f"{label}.supported_policies(config)"
        try:
            names = dynamic(config if config is not None else Config())
        except Exception as exc:  # noqa: BLE001 - the claim of a bad factory is bad input
            raise InvalidArgument(f"factory {where} raised {type(exc).__name__}: {exc}"
                                  ) from None
    else:
        where, names = f"{label}.kvspec_presets", static
    if isinstance(names, str) or not hasattr(names, "__iter__"):
        raise InvalidArgument(f"factory {where} is {names!r}; expected a tuple of preset"
                              f" names, e.g. ('pr13805', 'pr14849')")
    names = list(names)
    unknown = [n for n in names if not isinstance(n, str) or n not in PRESETS]
    if unknown:
        raise InvalidArgument(f"factory {where} names unknown preset(s)"
                              f" {', '.join(map(repr, unknown))}; known presets:"
                              f" {', '.join(PRESETS)}")
    if not names and dynamic is None:
        raise InvalidArgument(f"factory {where} is empty: it claims no preset to check")
    return tuple(p for p in PRESETS if p in names)


@dataclass
class MultiCheckReport:
    """Outcome of :func:`run_checks`: one :class:`CheckReport` per policy, in order.

    ``policies``: the policies asked for (a report per policy run; after an interrupt the
    rest are missing from ``reports``); ``chosen``: how they were chosen (``every preset``,
    ``claimed by <factory>.kvspec_presets``, ``asked for``). ``ok``: no policy diverged;
    ``diverged``: the names of those that did, each with its own shrunk divergence and
    trace (``report.trace``).
    """

    impl: str
    seed: int
    policies: tuple[str, ...]
    chosen: str
    reports: list[CheckReport] = field(default_factory=list)
    configs: tuple[Config, ...] = ()
    config: Config | None = None
    interrupted: bool = False
    strict: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    @property
    def diverged(self) -> list[str]:
        return [r.policy for r in self.reports if not r.ok]

    @property
    def not_run(self) -> list[str]:
        done = {r.policy for r in self.reports}
        return [p for p in self.policies if p not in done]

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.reports)

    @property
    def divergence(self) -> Divergence | None:
        """The first policy's divergence (each report holds its own)."""
        return next((r.divergence for r in self.reports if r.divergence is not None), None)

    @property
    def coverage(self) -> Coverage:
        """Every policy's coverage merged."""
        return Coverage.merged(r.coverage for r in self.reports)

    def report(self, policy: str) -> CheckReport:
        """The report of ``policy`` (KeyError when it did not run)."""
        for r in self.reports:
            if r.policy == policy:
                return r
        raise KeyError(policy)

    @property
    def warnings(self) -> list[MisuseFinding]:
        """The first tolerated misuse of each kind over the policies, its policy named."""
        out: list[MisuseFinding] = []
        for r in self.reports:
            merge(out, [replace(w, where=f"policy {r.policy}" + (
                f", {w.where}" if w.where else "")) for w in r.warnings])
        return out

    @property
    def verdict(self) -> str:
        """As :attr:`CheckReport.verdict`, over every policy."""
        return _verdict(self.ok, self.interrupted)

    def render(self) -> str:
        """One policy asked for: its :meth:`CheckReport.render`. Several: a head (impl,
        number of policies and how they were chosen, seed, verdict), the configs, one line
        per policy (verdict, runs and steps per tier, seconds, the diverging step), a
        summary line, then each diverging policy's divergence (shrunk) and the misuse
        warnings."""
        if len(self.policies) == 1 and len(self.reports) == 1:
            return self.reports[0].render()
        n = len(self.policies)
        lines = [f"kvspec check: impl {self.impl}, {n} policies ({self.chosen}), seed"
                 f" {self.seed}{', strict' if self.strict else ''}: {self.verdict}"]
        shared = all(r.configs == self.configs for r in self.reports)
        lines.extend(config_lines(self.config, self.configs))
        width = max(len(p) for p in self.policies) + 2
        for r in self.reports:
            tiers = ", ".join(f"{t.tier} {t.runs} runs {t.steps} steps"
                              + (" DIVERGED" if t.divergence else "")
                              + (" INTERRUPTED" if t.interrupted else "")
                              for t in r.tiers)
            line = f"  {r.policy:<{width}}{r.verdict:<10} {tiers}, {r.seconds:.2f} s"
            first = r.divergence
            if first is not None:
                line += f": step {first.index} {first.action}"
            if not shared:
                idx = [self.configs.index(c) for c in r.configs if c in self.configs]
                line += " (configs " + " ".join(f"#{i}" for i in idx) + ")"
            lines.append(line)
        for p in self.not_run:
            lines.append(f"  {p:<{width}}not run (interrupted)")
        lines.extend("  " + ln for ln in self.coverage.lines())
        for r in self.reports:
            lines.extend(r.model_violation_lines())
        ok = sum(1 for r in self.reports if r.ok)
        bad = self.diverged
        lines.append(f"Summary: {len(self.reports)} of {n} policies checked, {ok} OK, {len(bad)}"
                     " diverge" + (f" ({', '.join(bad)})" if bad else "")
                     + f"; {self.steps:,} steps, {self.seconds:.2f} s"
                     + ("; interrupted" if self.interrupted else ""))
        for r in self.reports:
            if r.interrupted:
                lines.extend(f"  {r.policy}: {ln}" for ln in r.interrupt_lines())
            found = r.divergence_lines()
            if found:
                lines.append("")
                lines.append(f"=== policy {r.policy}: {r.verdict} ===")
                lines.extend(f"  {t.tier} note: {n}" for t in r.tiers for n in t.notes)
                lines.extend(found)
            else:
                lines.extend(f"  {r.policy}: {t.tier} note: {n}" for t in r.tiers
                             for n in t.notes)
        warnings = self.warnings
        if warnings:
            lines.append("")
            lines.extend(render_warnings(warnings))
        return "\n".join(lines)


def run_checks(factory_spec: str | Factory,
               policies: str | Policy | Sequence[str | Policy] | None = None,
               examples: int = DEFAULT_EXAMPLES, seed: int = 0,
               config: Config | None = None, *, configs: Sequence[Config] | None = None,
               tiers: Sequence[str] = TIERS, walk_length: int = DEFAULT_WALK_LENGTH,
               hypothesis_examples: int | None = None, progress: Progress | None = None,
               hypothesis_dir: str | os.PathLike[str] | None = None,
               strict: bool = False, swarm: bool = True) -> MultiCheckReport:
    """:func:`run_check` for several policies in one run (what ``kvspec check`` runs).

    ``policies``: None or ``"all"``: every preset the factory claims
    (:func:`claimed_presets`; without a claim every preset); a name, a :class:`Policy` or a
    sequence of them: those, in that order (a preset the factory does not claim is bad
    input). Each policy runs under the configs that claim it (:func:`claimed_presets` with
    ``supported_policies(config)``; all of them otherwise), with the full budget
    (``examples`` walker walks, ``hypothesis_examples`` examples) and the same seed; a
    divergence stops that policy's tiers, not the others. ``progress`` gets
    ``"<policy> <tier>"`` as its tier name. The other arguments are :func:`run_check`'s.

    Returns:
        A :class:`MultiCheckReport` (``.ok``, ``.reports``, ``.diverged``, ``.render()``).
        A ``KeyboardInterrupt`` returns the policies done so far with ``interrupted=True``.

    Raises:
        InvalidArgument: :func:`run_check`'s bad input, a bad or empty claim, an unknown
            policy name or one the factory does not claim (before any run).
    """
    factory = resolve_factory(factory_spec)
    name = impl_label(factory_spec)
    _check_budget(examples, walk_length, hypothesis_examples, seed, tiers)
    cycled = _configs(config, configs)
    claims = {c: claimed_presets(factory, c) for c in dict.fromkeys(cycled)}
    claimed = [p for p in PRESETS if any(p in names for names in claims.values())]
    claiming = [a for a in CLAIM_ATTRIBUTES if getattr(factory, a, None) is not None]
    if policies is None or (isinstance(policies, str) and policies == ALL):
        chosen = f"claimed by {name}.{claiming[0]}" if claiming else "every preset"
        pols = [get_policy(p) for p in claimed]
        if not pols:
            raise InvalidArgument(f"kvspec check: {name} claims no preset for the configs"
                                  " checked (supported_policies returned none)")
    else:
        chosen = "asked for"
        given = [policies] if isinstance(policies, (str, Policy)) else list(policies)
        if not given:
            raise InvalidArgument("kvspec check: policies=[] names no policy; give None for"
                                  " every preset the implementation claims")
        pols = []
        for p in given:
            if isinstance(p, str) and p == ALL:
                pols.extend(get_policy(q) for q in claimed)
                continue
            pol = get_policy(p) if isinstance(p, str) else p
            if not isinstance(pol, Policy):
                raise InvalidArgument(f"kvspec check: policy {p!r} is not a preset name or"
                                      " a Policy")
            if PRESETS.get(pol.name) == pol and pol.name not in claimed:
                raise InvalidArgument(
                    f"kvspec check: {name} does not claim preset {pol.name!r} ({claiming[0]}"
                    f" names {', '.join(claimed) or 'none'}); check one of those, or drop"
                    " --policy to check all it claims")
            pols.append(pol)
        pols = list({p.name: p for p in pols}.values())  # first of each name, in order
    hyp_dir = _hypothesis_dir(hypothesis_dir)
    report = MultiCheckReport(name, seed, tuple(p.name for p in pols), chosen,
                              configs=cycled, config=config, strict=bool(strict))
    latch = InterruptLatch()
    t0 = time.perf_counter()
    with latch.installed():
        try:
            for pol in pols:
                latch.check()
                own = tuple(c for c in cycled if PRESETS.get(pol.name) != pol
                            or pol.name in claims[c])

                def tagged(tier: str, done: int, total: int, _p: str = pol.name) -> None:
                    if progress is not None:
                        progress(f"{_p} {tier}", done, total)

                r = _check_policy(factory, name, pol, own, config, examples=examples,
                                  seed=seed, tiers=tiers, walk_length=walk_length,
                                  hypothesis_examples=hypothesis_examples,
                                  progress=None if progress is None else tagged,
                                  hyp_dir=hyp_dir, strict=bool(strict), swarm=bool(swarm),
                                  latch=latch)
                report.reports.append(r)
                if r.interrupted:
                    report.interrupted = True
                    break
        except KeyboardInterrupt:
            report.interrupted = True
    report.interrupted = report.interrupted or latch.seen
    report.seconds = time.perf_counter() - t0
    return report


def _hypothesis_dir(value: Any) -> Path | None:
    """``hypothesis_dir`` checked and created; None passes through."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise InvalidArgument(f"kvspec check: hypothesis_dir={value!r} must be a directory path"
                              " (--hypothesis-dir DIR)")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"kvspec check: --hypothesis-dir {str(path)!r} exists and is not"
                              " a directory; give a directory (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"kvspec check: --hypothesis-dir {str(path)!r} cannot be created"
                              f" ({exc.strerror or exc}); give a writable directory") from None
    return path


def steps_of(div: Divergence) -> tuple[Step, ...]:
    """The step list of a divergence (for replays and tests)."""
    return div.trace.steps
