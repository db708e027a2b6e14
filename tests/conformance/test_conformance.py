"""Conformance of the reference and the torch manager to the model; broken adapters caught."""

from __future__ import annotations

import pytest
import torch
from budget import scaled
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from kvspec.config import Config
from kvspec.conformance import broken, impls
from kvspec.conformance.adapter import resolve_factory
from kvspec.conformance.check import run_check
from kvspec.conformance.exhaustive import explore
from kvspec.conformance.machine import make_machine
from kvspec.conformance.replay import replay_on_impl
from kvspec.errors import InvalidArgument
from kvspec.policy import PRESETS

PRESET_NAMES = sorted(PRESETS)


def _machine_settings(n: int) -> settings:
    return settings(max_examples=scaled(n), stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("policy", PRESET_NAMES)
def test_reference_walker(policy: str) -> None:
    report = run_check(impls.reference, policy, examples=40, seed=7, tiers=("walker",))
    assert report.ok, report.render()
    assert report.steps == 40 * 60


@pytest.mark.parametrize("policy", PRESET_NAMES)
def test_reference_hypothesis_machine(policy: str) -> None:
    machine = make_machine(impls.reference, Config(), PRESETS[policy])
    run_state_machine_as_test(machine, settings=_machine_settings(6))


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU_FACTORIES = [impls.gpu, pytest.param(impls.gpu_cuda, marks=[pytest.mark.gpu, NO_CUDA])]


@pytest.mark.parametrize("factory", GPU_FACTORIES, ids=["cpu", "cuda"])
@pytest.mark.parametrize("policy", ["pr13805", "pr13805-reviewed", "stale-snapshot",
                                    "draft-before-resize", "pre-pr13104"])
def test_gpu_walker(policy: str, factory: object) -> None:
    report = run_check(factory, policy, examples=4, seed=3,  # type: ignore[arg-type]
                       tiers=("walker",))
    assert report.ok, report.render()


def test_gpu_hypothesis_machine() -> None:
    machine = make_machine(impls.gpu, Config(), PRESETS["pr13805-reviewed-swa"])
    run_state_machine_as_test(machine, settings=_machine_settings(3))


def test_string_factories_and_errors() -> None:
    assert resolve_factory("kvspec.conformance.impls:reference") is impls.reference
    for bad, words in [("nocolon", "module:factory"), ("no.such.mod:f", "does not import"),
                       ("kvspec.conformance.impls:nope", "no attribute"),
                       ("kvspec.conformance.impls:DEFAULT", "no attribute"),
                       ("kvspec.policy:PRESETS", "not a callable")]:
        with pytest.raises(InvalidArgument, match=words):
            resolve_factory(bad)
    with pytest.raises(InvalidArgument, match="lacks"):
        run_check(lambda c, p: object(), "pr13805", examples=1)


def test_broken_double_free_is_a_warning_and_caught_with_strict() -> None:
    report = run_check(broken.silent_double_free, "pr13805-reviewed", examples=50, seed=0,
                       tiers=("walker",))
    assert report.ok and {w.kind for w in report.warnings} == {"double-free", "free-unknown"}
    report = run_check(broken.silent_double_free, "pr13805-reviewed", examples=50, seed=0,
                       tiers=("walker",), strict=True)
    assert not report.ok
    text = report.render()
    div = report.divergence
    assert div is not None and div.steps[-1].action == "free_resources"
    assert "accepted silently" in text and "misuse" in text
    assert "   1. " in text and "<-- diverges" in text


def test_broken_shrink_below_snapshot_is_caught() -> None:
    report = run_check(broken.shrink_below_snapshot, "pr13805-reviewed", examples=50, seed=0,
                       tiers=("walker",))
    div = report.divergence
    assert div is not None, report.render()
    assert div.steps[-1].action == "revert_allocate_context"
    names = {d.name for d in div.diffs}
    assert "violations" in names and any(n.endswith(".capacity") for n in names)
    assert "REVERT-FLOOR" in report.render()
    assert div.shrunk_from is not None and len(div.steps) <= div.shrunk_from


def test_broken_stale_snapshot_is_caught() -> None:
    clears = PRESETS["stale-snapshot"].replace(name="stale-snapshot-cleared",
                                               clear_snapshot_on_failure=True)
    report = run_check(broken.keeps_stale_snapshot, clears, examples=50, seed=0,
                       tiers=("walker",))
    div = report.divergence
    assert div is not None, report.render()
    assert div.steps[-1].action == "resize_context" and div.steps[-1].result is False
    assert any(d.name.endswith(".snapshot") and d.expected == "None" for d in div.diffs)


def test_z3_counterexamples_replay_on_reference() -> None:
    from kvspec.spec.prove import prove_matrix

    pols = [PRESETS[p] for p in ("pr13805", "stale-snapshot", "pre-pr13104")]
    matrix = prove_matrix(Config(), pols)
    traces = [v.trace for v in matrix.cells.values() if v.trace is not None]
    assert traces, "expected refuted cells with counterexamples"
    for trace in traces:
        rep = replay_on_impl(trace, impls.reference)
        assert rep.first_violation_step is not None
        assert rep.same_violation, rep.render()


def test_exhaustive_small_scope() -> None:
    one = Config(num_gpu_pages=2, num_host_pages=1, num_requests=1, tokens_per_block=2,
                 max_prompt_len=2, max_draft_len=1)
    res = explore(impls.reference, PRESETS["pr13805-reviewed"], one)
    assert res.ok and not res.bounded, res.render()
    assert res.states == res.behaviours > 500
    two = Config(num_gpu_pages=2, num_host_pages=1, num_requests=2, tokens_per_block=2,
                 max_prompt_len=2, max_draft_len=0)
    res2 = explore(impls.reference, PRESETS["pr13805"], two, max_depth=7)
    assert res2.ok, res2.render()
    assert res2.bounded and "depth 7" in res2.bounded_reason
    with pytest.raises(InvalidArgument, match="small scope"):
        explore(impls.reference, PRESETS["pr13805"], Config(num_gpu_pages=8))
