"""``run_check``: the entry point behind ``kvspec check --impl module:factory``.

Runs the walker tier (seeded, fast, failures shrunk by delta debugging) and the hypothesis
tier (generated state machine, hypothesis's own shrinking, then ours) and returns a
:class:`CheckReport`.
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
from kvspec.policy import Policy, get_policy
from kvspec.spec.trace import Step, Trace

from .adapter import Factory, resolve_factory
from .lockstep import Lockstep, run_steps
from .misuse import MisuseFinding, merge, render_warnings
from .report import Divergence, TierResult, impl_label, render_config
from .shrink import shrink
from .walker import Sampler

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
)
"""Configs the walker cycles through when ``run_check`` gets none: the default, a tight pool
with B = 1 and a resume gate below 1, and batch waiting without attention DP on 3 slots."""

TIERS = ("walker", "hypothesis")


@dataclass
class CheckReport:
    """Outcome of :func:`run_check`: per-tier steps, time and the first (shrunk) divergence.

    ``config`` is the one config every run used, or None when the walker cycled ``configs``
    (:data:`DEFAULT_CONFIGS`) and the hypothesis tier ran ``Config()``. ``interrupted``: a
    ``KeyboardInterrupt`` stopped the check; the tiers hold what was done before it (a
    divergence found before the interrupt is kept, unshrunk if shrinking was cut short).
    ``trace`` is the divergence as a replayable :class:`~kvspec.spec.trace.Trace`.
    ``warnings``: the first tolerated misuse of each kind over the tiers (``ok`` stays True);
    ``strict``: the check ran with ``strict=True`` (a tolerated misuse is a divergence).
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

    def render(self) -> str:
        """Head (impl, policy, seed, verdict), the config(s), one line per tier, where an
        interrupt stopped it, which run and config failed, the divergence report, then the
        misuse warnings (one line each)."""
        verdict = "OK" if self.ok else "DIVERGES"
        if self.interrupted:
            verdict = "INTERRUPTED" if self.ok else "DIVERGES (interrupted)"
        lines = [f"kvspec check: impl {self.impl}, policy {self.policy}, seed {self.seed}"
                 f"{', strict' if self.strict else ''}: {verdict}"]
        if self.config is not None:
            lines.append(f"  config: {render_config(self.config)}")
        else:
            lines.append(f"  configs: the walker cycles {len(self.configs)} built-in configs"
                         " (check.DEFAULT_CONFIGS); the hypothesis tier runs #0")
            lines.extend(f"    #{i} {render_config(c)}" for i, c in enumerate(self.configs))
        for t in self.tiers:
            lines.append(f"  {t.tier:<10} {t.runs:>5} runs {t.steps:>8} steps"
                         f" {t.seconds:7.2f} s ({t.steps_per_second:,.0f} steps/s)"
                         + ("  DIVERGED" if t.divergence else "")
                         + ("  INTERRUPTED" if t.interrupted else ""))
            lines.extend(f"    note: {n}" for n in t.notes)
        if self.interrupted:
            cut = next((t for t in self.tiers if t.interrupted), None)
            if cut is not None:
                rest = [n for n in TIERS if n not in {t.tier for t in self.tiers}]
                lines.append(f"interrupted after {cut.runs} of {cut.runs_total} {cut.tier} runs"
                             f" ({self.steps:,} steps in all)"
                             + (f"; not run: {', '.join(rest)}" if rest else ""))
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
            lines.append("")
            lines.append(where)
            lines.append(t.divergence.render())
            break
        lines.extend(render_warnings(self.warnings))
        return "\n".join(lines)


def walk(factory: Factory, configs: Sequence[Config], policy: Policy, *, walks: int,
         seed: int, length: int = 60, impl_name: str = "",
         shrink_failures: bool = True, progress: Progress | None = None,
         latch: InterruptLatch | None = None, strict: bool = False) -> TierResult:
    """The walker tier: ``walks`` seeded walks of ``length`` steps (configs cycled).

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
    t0 = time.perf_counter()
    try:
        for w in range(walks):
            latch.check()
            ci = w % len(configs)
            config = configs[ci]
            lock = Lockstep(factory, config, policy, impl_name=impl_name, strict=strict)
            div = lock.initial_divergence()
            sampler = Sampler(lock.model, random.Random(f"{seed}:{w}"))
            for _ in range(length):
                if div is not None:
                    break
                nxt = sampler.draw(lock.state)
                if nxt is None:
                    break
                div = lock.step(*nxt)
                res.steps += 1
            res.runs += 1  # completed walks (an interrupted one counts its steps only)
            merge(res.warnings, lock.warnings, f"walker run {w + 1} (run seed '{seed}:{w}')"
                  + (f", config #{ci}" if len(configs) > 1 else ""))
            if div is not None:  # recorded first: an interrupt from here on keeps it
                res.divergence, res.failed_run, res.run_seed = div, w + 1, f"{seed}:{w}"
                res.config = config
                res.config_index = ci if len(configs) > 1 else None
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


def hypothesis_tier(factory: Factory, config: Config, policy: Policy, *, examples: int,
                    seed: int | None, impl_name: str = "", step_count: int = 40,
                    derandomize: bool | None = None, progress: Progress | None = None,
                    hypothesis_dir: str | os.PathLike[str] | None = None,
                    latch: InterruptLatch | None = None, strict: bool = False) -> TierResult:
    """The hypothesis tier: the generated state machine for ``examples`` examples.

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
    res = TierResult("hypothesis", runs_total=examples, config=config)
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

        machine = make_machine(factory, config, policy, impl_name=impl_name,
                               on_example_end=example_done, before_step=latch.check,
                               strict=strict, warnings=found_warnings)
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
        opts = settings(max_examples=examples,
                        phases=(Phase.explicit, Phase.reuse, Phase.generate),
                        stateful_step_count=step_count, deadline=None, database=database,
                        verbosity=Verbosity.quiet,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.filter_too_much],
                        **kw)  # type: ignore[arg-type]
        rerun = _rerun(factory, config, policy, impl_name, strict)
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
              examples: int = 100, seed: int = 0, config: Config | None = None, *,
              tiers: Sequence[str] = TIERS, walk_length: int = 60,
              hypothesis_examples: int | None = None, progress: Progress | None = None,
              hypothesis_dir: str | os.PathLike[str] | None = None,
              strict: bool = False) -> CheckReport:
    """Check an implementation against the model under one policy.

    Args:
        factory_spec: ``"module:factory"`` or a callable ``factory(config, policy)``.
        policy: a preset name (``kvspec.policy.PRESETS``) or a :class:`Policy`.
        examples: walker walks of ``walk_length`` steps; the hypothesis tier runs
            ``hypothesis_examples`` (default ``max(1, examples // 5)``) examples.
        seed: seeds both tiers (same seed, same sequences).
        config: one config for every run; None cycles :data:`DEFAULT_CONFIGS` in the walker
            and uses ``Config()`` in the hypothesis tier.
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
    pol = get_policy(policy) if isinstance(policy, str) else policy
    for name, value in (("examples", examples), ("walk_length", walk_length),
                        ("hypothesis_examples", hypothesis_examples)):
        if value is None and name == "hypothesis_examples":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"kvspec check: {name}={value!r} must be an integer >= 1"
                                  + (" (--examples)" if name == "examples" else ""))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"kvspec check: seed={seed!r} must be an integer (--seed)")
    if config is not None and not isinstance(config, Config):
        raise InvalidArgument(f"kvspec check: config={config!r} must be a kvspec Config")
    bad = [t for t in tiers if t not in TIERS]
    if isinstance(tiers, str) or bad:
        raise InvalidArgument(f"kvspec check: unknown tier(s) {bad or tiers!r}; known:"
                              f" {', '.join(TIERS)}")
    hyp_dir = _hypothesis_dir(hypothesis_dir)
    name = impl_label(factory_spec)
    configs = (config,) if config is not None else DEFAULT_CONFIGS
    report = CheckReport(name, pol.name, seed, config=config, configs=configs,
                         hypothesis_dir=None if hyp_dir is None else str(hyp_dir),
                         strict=bool(strict))
    latch = InterruptLatch()
    for tier in tiers:
        with latch.installed():
            if tier == "walker":
                res = walk(factory, configs, pol, walks=examples, seed=seed,
                           length=walk_length, impl_name=name, progress=progress,
                           latch=latch, strict=bool(strict))
            else:
                n = hypothesis_examples if hypothesis_examples is not None else \
                    max(1, examples // 5)
                res = hypothesis_tier(factory, config or Config(), pol, examples=n, seed=seed,
                                      impl_name=name, progress=progress,
                                      hypothesis_dir=hyp_dir, latch=latch,
                                      strict=bool(strict))
        if tier != "walker" and config is None:
            res.config_index = 0
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
