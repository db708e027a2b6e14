"""``run_check``: the entry point behind ``kvspec check --impl module:factory``.

Runs the walker tier (seeded, fast, failures shrunk by delta debugging) and the hypothesis
tier (generated state machine, hypothesis's own shrinking, then ours) and returns a
:class:`CheckReport`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import Policy, get_policy
from kvspec.spec.trace import Step

from .adapter import Factory, resolve_factory
from .lockstep import Lockstep, run_steps
from .machine import DivergenceFound, make_machine
from .report import Divergence, TierResult
from .shrink import shrink
from .walker import Sampler

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
    """Outcome of :func:`run_check`: per-tier steps, time and the first (shrunk) divergence."""

    impl: str
    policy: str
    seed: int
    tiers: list[TierResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.divergence is None for t in self.tiers)

    @property
    def divergence(self) -> Divergence | None:
        for t in self.tiers:
            if t.divergence is not None:
                return t.divergence
        return None

    @property
    def steps(self) -> int:
        return sum(t.steps for t in self.tiers)

    def render(self) -> str:
        """Summary lines per tier, then the divergence report (if any)."""
        head = (f"kvspec check: impl {self.impl}, policy {self.policy}, seed {self.seed}:"
                f" {'OK' if self.ok else 'DIVERGES'}")
        lines = [head]
        for t in self.tiers:
            lines.append(f"  {t.tier:<10} {t.runs:>5} runs {t.steps:>8} steps"
                         f" {t.seconds:7.2f} s ({t.steps_per_second:,.0f} steps/s)"
                         + ("  DIVERGED" if t.divergence else ""))
            lines.extend(f"    note: {n}" for n in t.notes)
        div = self.divergence
        if div is not None:
            lines.append("")
            lines.append(div.render())
        return "\n".join(lines)


def _impl_name(spec: str | Factory) -> str:
    if isinstance(spec, str):
        return spec
    return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', spec)}"


def walk(factory: Factory, configs: Sequence[Config], policy: Policy, *, walks: int,
         seed: int, length: int = 60, impl_name: str = "",
         shrink_failures: bool = True) -> TierResult:
    """The walker tier: ``walks`` seeded walks of ``length`` steps (configs cycled).

    Stops at the first divergence and shrinks it. Cost: ~0.1 ms per step with the reference.
    """
    res = TierResult("walker")
    t0 = time.perf_counter()
    for w in range(walks):
        config = configs[w % len(configs)]
        lock = Lockstep(factory, config, policy, impl_name=impl_name)
        res.runs += 1
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
        if div is not None:
            if shrink_failures and div.index > 0:
                div = shrink(div, _rerun(factory, config, policy, impl_name))
            res.divergence = div
            break
    res.seconds = time.perf_counter() - t0
    return res


def _rerun(factory: Factory, config: Config, policy: Policy, impl_name: str
           ) -> Callable[[Sequence[Step]], Divergence | None]:
    def run(steps: Sequence[Step]) -> Divergence | None:
        return run_steps(factory, config, policy, steps, impl_name=impl_name)
    return run


def hypothesis_tier(factory: Factory, config: Config, policy: Policy, *, examples: int,
                    seed: int | None, impl_name: str = "", step_count: int = 40,
                    derandomize: bool | None = None) -> TierResult:
    """The hypothesis tier: the generated state machine for ``examples`` examples.

    ``seed`` None keeps the active hypothesis profile's randomness (what tests want); an int
    seeds it. Hypothesis shrinks a failure; ours then shrinks the step list further.
    """
    res = TierResult("hypothesis")
    machine = make_machine(factory, config, policy, impl_name=impl_name)
    if seed is not None:
        machine._hypothesis_internal_use_seed = seed
    kw: dict[str, object] = {}
    if derandomize is not None:
        kw["derandomize"] = derandomize
    # hypothesis's own shrinking is slow on long stateful runs; ddmin below does the job
    opts = settings(max_examples=examples,
                    phases=(Phase.explicit, Phase.reuse, Phase.generate),
                    stateful_step_count=step_count, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.filter_too_much],
                    **kw)  # type: ignore[arg-type]

    rerun = _rerun(factory, config, policy, impl_name)

    t0 = time.perf_counter()
    try:
        run_state_machine_as_test(machine, settings=opts)
    except DivergenceFound as exc:
        div = exc.divergence
        if div.index > 0:
            div = shrink(div, rerun)
        res.divergence = div
    res.seconds = time.perf_counter() - t0
    res.steps, res.runs = machine.steps_run[0], examples  # type: ignore[attr-defined]
    return res


def run_check(factory_spec: str | Factory, policy: str | Policy = "pr13805-reviewed",
              examples: int = 100, seed: int = 0, config: Config | None = None, *,
              tiers: Sequence[str] = TIERS, walk_length: int = 60,
              hypothesis_examples: int | None = None) -> CheckReport:
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

    Returns:
        A :class:`CheckReport` (``.ok``, ``.render()``); the first tier that diverges stops
        the check.

    Raises:
        InvalidArgument: a bad factory string, policy name, tier name or example count.
    """
    factory = resolve_factory(factory_spec)
    pol = get_policy(policy) if isinstance(policy, str) else policy
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise InvalidArgument(f"run_check: examples={examples!r} must be an integer >= 1")
    bad = [t for t in tiers if t not in TIERS]
    if bad:
        raise InvalidArgument(f"run_check: unknown tier(s) {bad}; known: {', '.join(TIERS)}")
    name = _impl_name(factory_spec)
    report = CheckReport(name, pol.name, seed)
    configs = (config,) if config is not None else DEFAULT_CONFIGS
    for tier in tiers:
        if tier == "walker":
            res = walk(factory, configs, pol, walks=examples, seed=seed, length=walk_length,
                       impl_name=name)
        else:
            n = hypothesis_examples if hypothesis_examples is not None else max(1, examples // 5)
            res = hypothesis_tier(factory, config or Config(), pol, examples=n, seed=seed,
                                  impl_name=name)
        report.tiers.append(res)
        if res.divergence is not None:
            break
    return report


def steps_of(div: Divergence) -> tuple[Step, ...]:
    """The step list of a divergence (for replays and tests)."""
    return div.trace.steps
