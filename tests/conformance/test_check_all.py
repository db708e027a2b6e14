"""Every preset in one run, config cycling and swarm testing (issue 10, deliverable 3).

The broken managers docs/performance.md's detection table measures are in
:mod:`kvspec.conformance.broken` (``kvspec check --impl
kvspec.conformance.broken:swa_assert_skipped``): each changes one behaviour of the reference in
a way a preset, a config or pool pressure exposes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from kvspec import cli
from kvspec.cli import main
from kvspec.config import Config
from kvspec.conformance import check, impls
from kvspec.conformance import machine as machine_mod
from kvspec.conformance.broken import swa_assert_skipped
from kvspec.conformance.check import (
    DEFAULT_CONFIGS,
    claimed_presets,
    hypothesis_tier,
    run_check,
    run_checks,
)
from kvspec.conformance.lockstep import Lockstep
from kvspec.conformance.walker import SWARM_ESSENTIAL, SWARM_OPTIONAL, Sampler, Swarm
from kvspec.errors import InvalidArgument
from kvspec.policy import PRESETS, Policy
from kvspec.spec.model import Model

REF = "kvspec.conformance.impls:reference"
DEFAULT_ONE = "pr13805-reviewed"  # the preset `kvspec check` ran alone before issue 10


def two_presets(config: Config, policy: Policy) -> impls.CheckedReference:
    return impls.CheckedReference(config, policy)


two_presets.kvspec_presets = ("pr14849", "pr13805")  # type: ignore[attr-defined]


def host_tier_presets(config: Config, policy: Policy) -> impls.CheckedReference:
    return impls.CheckedReference(config, policy)


def _host_tier_claims(config: Config) -> tuple[str, ...]:
    """pr13805 everywhere; stale-snapshot only with host pages."""
    return ("pr13805", "stale-snapshot") if config.num_host_pages else ("pr13805",)


host_tier_presets.supported_policies = _host_tier_claims  # type: ignore[attr-defined]


# ---- every preset in one run ----------------------------------------------------------------


def test_default_check_runs_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--impl", REF, "--examples", "1", "-q"]) == 0
    out = capsys.readouterr().out
    head, *rest = out.splitlines()
    assert head.startswith(f"kvspec check: impl {REF}, {len(PRESETS)} policies (every preset)")
    assert head.endswith(": OK")
    for name in PRESETS:  # one line per preset
        assert sum(1 for ln in rest if ln.startswith(f"  {name} ")) == 1, name
    assert f"Summary: {len(PRESETS)} of {len(PRESETS)} policies checked, {len(PRESETS)} OK, 0 " \
           "diverge" in out
    report = run_checks(REF, "all", examples=1, tiers=("walker",))
    assert report.policies == tuple(PRESETS) and report.ok
    assert [r.policy for r in report.reports] == list(PRESETS)


def test_cli_defaults_match_the_library() -> None:
    assert cli.CHECK_EXAMPLES == check.DEFAULT_EXAMPLES
    assert cli.CHECK_WALK_LENGTH == check.DEFAULT_WALK_LENGTH


def test_a_factory_claiming_two_presets_gets_exactly_those(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert claimed_presets(two_presets) == ("pr13805", "pr14849")  # PRESETS order
    report = run_checks(two_presets, examples=1, tiers=("walker",))
    assert report.policies == ("pr13805", "pr14849") and report.ok
    assert "kvspec_presets" in report.chosen
    text = report.render()
    assert "2 policies (claimed by " in text and "pr13805-reviewed" not in text
    with pytest.raises(InvalidArgument, match="does not claim preset 'stale-snapshot'"):
        run_checks(two_presets, ["stale-snapshot"])
    impl = f"{__name__}:two_presets"
    assert main(["check", "--impl", impl, "--policy", "pr13805-reviewed"]) == 2
    assert "does not claim" in capsys.readouterr().err
    # supported_policies(config): a preset runs under the configs that claim it
    report = run_checks(host_tier_presets, examples=1, tiers=("walker",))
    assert report.policies == ("pr13805", "stale-snapshot")
    assert report.report("pr13805").configs == DEFAULT_CONFIGS
    own = report.report("stale-snapshot").configs
    assert own == tuple(c for c in DEFAULT_CONFIGS if c.num_host_pages)
    assert "(configs #0 #1 #2 #3 #4 #6 #7)" in report.render()


@pytest.mark.parametrize(("claim", "words"), [
    (("pr13805", "nope"), "unknown preset.*'nope'"),
    ((), "claims no preset"),
    ("pr13805", "expected a tuple of preset names"),
])
def test_bad_claims_are_bad_input(claim: Any, words: str) -> None:
    def factory(config: Config, policy: Policy) -> impls.CheckedReference:
        return impls.CheckedReference(config, policy)

    factory.kvspec_presets = claim  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgument, match=words):
        run_checks(factory, examples=1)


def test_a_bug_only_a_non_default_preset_shows_is_found_by_the_default_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alone = run_check(swa_assert_skipped, DEFAULT_ONE, examples=16, tiers=("walker",))
    assert alone.ok  # the pre-issue-10 default: one preset, and it never takes the path
    impl = "kvspec.conformance.broken:swa_assert_skipped"
    rc = main(["check", "--impl", impl, "--examples", "8", "-q", "--export", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert out.splitlines()[0].endswith("DIVERGES")
    diverged = [ln.split()[0] for ln in out.splitlines()
                if ln.startswith("  ") and " DIVERGES " in ln]
    assert "pr13805" in diverged and DEFAULT_ONE not in diverged
    assert "=== policy pr13805: DIVERGES ===" in out and "SWA-REWIND" in out
    exported = sorted(p.name for p in tmp_path.iterdir())
    assert exported == sorted(f"check-{p}.jsonl" for p in diverged)  # one per diverging preset
    assert main(["replay", str(tmp_path / "check-pr13805.jsonl"), "--impl", impl]) == 1


# ---- configs --------------------------------------------------------------------------------


def test_the_builtin_configs_cover_the_rare_corners() -> None:
    cs = DEFAULT_CONFIGS
    assert {c.num_gpu_pages for c in cs} >= {1, 2, 3}
    assert {c.tokens_per_block for c in cs} == {1, 2}
    assert {c.num_host_pages for c in cs} >= {0, 1, 2, 3, 4}
    assert {c.num_requests for c in cs} == {2, 3}
    assert any(c.attention_dp for c in cs)
    assert any(not c.attention_dp and c.batch_waiting_enabled for c in cs)
    assert len(set(cs)) == len(cs)


def test_both_tiers_cycle_the_configs_and_name_them() -> None:
    report = run_check(REF, DEFAULT_ONE, examples=len(DEFAULT_CONFIGS), tiers=("walker",))
    text = report.render()
    assert "both tiers cycle 8 built-in configs" in text
    named = [c for i, c in enumerate(report.configs) if f"#{i} {c.describe()}" in text]
    assert any(c.tokens_per_block == 1 for c in named)
    assert any(c.batch_waiting_enabled and not c.attention_dp for c in named)
    # the walker ran each config once (walk w under config w mod 8) ...
    assert report.tiers[0].runs == len(DEFAULT_CONFIGS)
    # ... and each hypothesis example draws its config
    seen: list[int] = []
    base = machine_mod.make_machine(impls.reference, DEFAULT_CONFIGS, PRESETS[DEFAULT_ONE],
                                    targets=False)

    class Recording(base):  # type: ignore[valid-type,misc]
        def teardown(self) -> None:
            seen.append(self.config_index)
            super().teardown()

    run_state_machine_as_test(Recording, settings=settings(
        max_examples=40, stateful_step_count=3, derandomize=True, database=None))
    drawn = {DEFAULT_CONFIGS[i] for i in seen}
    assert len(drawn) >= 4
    assert any(c.tokens_per_block == 1 for c in drawn)


def test_a_hypothesis_divergence_names_its_config() -> None:
    res = hypothesis_tier(swa_assert_skipped, DEFAULT_CONFIGS, PRESETS["pr13805"],
                          examples=40, seed=0)
    div = res.divergence
    assert div is not None
    assert res.config_index is not None and DEFAULT_CONFIGS[res.config_index] is res.config
    assert div.trace.config == res.config


def test_hypothesis_targets_pool_pressure(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float]] = []
    real = machine_mod.target

    def record(observation: float, *, label: str = "") -> float:
        seen.append((label, observation))
        return real(observation, label=label)

    monkeypatch.setattr(machine_mod, "target", record)
    res = hypothesis_tier(impls.reference, DEFAULT_CONFIGS, PRESETS[DEFAULT_ONE], examples=4,
                          seed=0)
    assert res.divergence is None
    assert {label for label, _ in seen} == set(machine_mod.TARGETS) == {"implicit evictions"}
    assert all(v >= 0 for _, v in seen) and len(seen) >= 4  # once per example


# ---- swarm ----------------------------------------------------------------------------------


def _swarms(seed: int, n: int, policy: str = DEFAULT_ONE) -> list[Swarm]:
    model = Model(Config(), PRESETS[policy])
    return [Swarm.draw(model, random.Random(f"{seed}:{w}:swarm:{policy}")) for w in range(n)]


def test_swarms_are_deterministic_per_seed_and_differ_between_walks() -> None:
    first = _swarms(0, 40)
    assert first == _swarms(0, 40)  # same seed, same swarms
    assert first != _swarms(1, 40)
    assert len(set(first)) >= 20  # walks differ
    assert any(sw.full for sw in first) and any(sw.dropped for sw in first)
    assert any(sw.bias for sw in first)
    for sw in first:
        assert not sw.dropped & SWARM_ESSENTIAL and sw.dropped <= set(SWARM_OPTIONAL)
        assert not {"try_allocate_generation", "free_resources"} <= sw.dropped
    assert _swarms(0, 40, "pr13805") != first  # another preset walks elsewhere


def test_a_swarm_walk_keeps_to_its_actions_and_biases() -> None:
    policy = PRESETS[DEFAULT_ONE]
    sw = Swarm(frozenset({"evict_to_host", "free_resources", "suspend_request"}),
               (("arrive.prompt_len", "high"), ("decide.wait", "low")))
    assert "without free_resources, suspend_request, evict_to_host" in sw.describe()
    lock = Lockstep(impls.reference, Config(num_gpu_pages=8), policy)
    sampler = Sampler(lock.model, random.Random(0), sw)
    drawn: list[tuple[str, int, dict[str, Any]]] = []
    for _ in range(300):
        nxt = sampler.draw(lock.state)
        assert nxt is not None
        drawn.append(nxt)
        assert lock.step(*nxt) is None
    names = {n for n, _, _ in drawn}
    assert not names & sw.dropped and "forward" in names
    prompts = [a["prompt_len"] for n, _, a in drawn if n == "arrive"]
    waits = [a["wait"] for n, _, a in drawn if n == "decide"]
    assert prompts and sum(prompts) / len(prompts) > 3.5  # uniform over 1..5 would be 3
    assert waits and sum(waits) / len(waits) < 0.4  # uniform would be 0.5
    assert sw.weights("arrive", "prompt_len", 3) == [1, 4, 9]
    assert Swarm().weights("arrive", "prompt_len", 3) is None


def test_the_failing_walk_names_its_swarm() -> None:
    report = run_check(swa_assert_skipped, "pr13805", examples=8, tiers=("walker",))
    assert not report.ok
    assert any("ran under the swarm: " in n for n in report.tiers[0].notes)
    off = run_check(swa_assert_skipped, "pr13805", examples=8, tiers=("walker",), swarm=False)
    assert not any("swarm" in n for t in off.tiers for n in t.notes)


def test_an_interrupt_keeps_the_policies_done_and_lists_the_rest() -> None:
    def progress(tier: str, done: int, total: int) -> None:
        if tier == "pr13805-reviewed walker":
            raise KeyboardInterrupt

    report = run_checks(REF, examples=2, tiers=("walker",), progress=progress)
    assert report.interrupted and [r.policy for r in report.reports] == ["pr13805",
                                                                         "pr13805-reviewed"]
    assert report.not_run == list(PRESETS)[2:]
    text = report.render()
    assert text.splitlines()[0].endswith(": INTERRUPTED")
    assert "  pr14849" in text and "not run (interrupted)" in text
