"""Reports a reader can act on (issue 8, items 5 and 6): the config and seed named, raised
exceptions and None returns shown as what they are, empty slots left out, and the divergence
saved as a trace that replays to the same divergence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvspec.config import Config
from kvspec.conformance import broken, impls
from kvspec.conformance.check import DEFAULT_CONFIGS, run_check
from kvspec.conformance.exhaustive import explore
from kvspec.conformance.lockstep import Lockstep, model_observation, render_observation
from kvspec.conformance.replay import replay_on_impl
from kvspec.conformance.report import render_config
from kvspec.errors import InvalidArgument
from kvspec.policy import PRESETS, Policy
from kvspec.spec.trace import Trace, digest, replay

POLICY = PRESETS["pr13805-reviewed"]


class RaisesOnGrowth(impls.CheckedReference):
    """Raises instead of growing a context cache past 1 token (a crash mid-run)."""

    def resize_context(self, req: Any, num_tokens: int) -> bool:
        if self.get_capacity(req.request_id) >= 1:
            raise RuntimeError(f"boom: request {req.request_id}")
        return super().resize_context(req, num_tokens)


class ForgetsReturn(impls.CheckedReference):
    """``try_allocate_generation`` without its ``return`` (always None)."""

    def try_allocate_generation(self, req: Any) -> bool:
        super().try_allocate_generation(req)
        return None  # type: ignore[return-value]  # the bug under test


def raises_on_growth(config: Config, policy: Policy) -> RaisesOnGrowth:
    return RaisesOnGrowth(config, policy)


def forgets_return(config: Config, policy: Policy) -> ForgetsReturn:
    return ForgetsReturn(config, policy)


def _diverging_line(text: str) -> str:
    return next(ln for ln in text.splitlines() if "<-- diverges" in ln)


def test_render_names_impl_policy_seed_and_every_builtin_config() -> None:
    report = run_check(impls.reference, POLICY, examples=3, seed=11, tiers=("walker",))
    text = report.render()
    head = text.splitlines()[0]
    assert "impl kvspec.conformance.impls:reference" in head
    assert "policy pr13805-reviewed" in head and "seed 11" in head and head.endswith("OK")
    for i, cfg in enumerate(DEFAULT_CONFIGS):
        assert f"#{i} {render_config(cfg)}" in text
    assert "max_util_for_resume=2/3" in text and "attention_dp=False" in text


def test_render_config_lists_every_field() -> None:
    cfg = Config(num_gpu_pages=3, max_prompt_len=4)
    text = render_config(cfg)
    for field in ("tokens_per_block=2", "num_gpu_pages=3", "num_host_pages=4",
                  "max_util_for_resume=3/4", "max_rewind_len=2", "num_requests=2",
                  "max_prompt_len=4", "max_batch_size=8", "attention_dp=True"):
        assert field in text
    report = run_check(impls.reference, POLICY, examples=2, seed=0, config=cfg,
                       tiers=("walker",))
    assert f"config: {text}" in report.render()


def test_divergence_names_the_failing_builtin_config() -> None:
    report = run_check(broken.shrink_below_snapshot, POLICY, examples=50, seed=0,
                       tiers=("walker",))
    tier = report.tiers[0]
    assert report.divergence is not None and tier.failed_run is not None
    assert tier.config_index is not None and tier.config is DEFAULT_CONFIGS[tier.config_index]
    text = report.render()
    assert (f"in run {tier.failed_run} of 50 (run seed '0:{tier.failed_run - 1}') under config"
            f" #{tier.config_index}: {render_config(tier.config)}") in text
    assert report.trace is not None and report.trace.config == tier.config


def test_a_manager_that_raises_is_a_divergence_shown_on_its_step() -> None:
    report = run_check(raises_on_growth, POLICY, examples=20, seed=0, tiers=("walker",))
    div = report.divergence
    assert div is not None and not report.ok
    assert div.impl_result == "raised RuntimeError: boom: request " + str(div.steps[-1].r)
    line = _diverging_line(report.render())
    assert "resize_context" in line and "raised RuntimeError: boom" in line
    assert "-> False" not in line.split("<--")[0]  # not the model's result in its place
    assert any(d.name == "raised" for d in div.diffs)


def test_a_forgotten_return_shows_as_none() -> None:
    report = run_check(forgets_return, POLICY, examples=30, seed=0, tiers=("walker",))
    div = report.divergence
    assert div is not None
    result = next(d for d in div.diffs if d.name == "result")
    assert result.actual == "None" and result.expected in ("True", "False")
    line = _diverging_line(report.render())
    assert "try_allocate_generation" in line and "-> None" in line
    assert f"(model: -> {result.expected})" in line


def test_observations_leave_out_empty_slots() -> None:
    ls = Lockstep(impls.reference, Config(num_requests=3), POLICY)
    assert render_observation(ls.obs) == "(no requests) gpu_free=4 host_free=4"
    assert ls.step("arrive", 1, {"prompt_len": 2, "chunk_size": 1, "draft_len": 0}) is None
    text = render_observation(ls.obs)
    assert text.startswith("r1{phase=CONTEXT") and "r0{" not in text and "r2{" not in text
    assert render_observation(model_observation(ls.state, True)).startswith("r1{")


def test_explore_render_and_scope_error_name_the_cli() -> None:
    cfg = Config(num_gpu_pages=2, num_host_pages=1, num_requests=1, max_prompt_len=2)
    res = explore(impls.reference, POLICY, cfg, max_depth=4)
    text = res.render()
    assert text.splitlines()[0].startswith(
        "kvspec explore: impl kvspec.conformance.impls:reference, policy pr13805-reviewed")
    assert f"config: {render_config(cfg)}" in text and "seed" in text
    assert "BOUNDED: depth 4 reached" in text
    with pytest.raises(InvalidArgument) as err:
        explore(impls.reference, POLICY, Config(num_gpu_pages=8))
    msg = str(err.value)
    assert "kvspec check" in msg and "--gpu-pages 4" in msg and "run_check" not in msg
    with pytest.raises(InvalidArgument, match="max_depth"):
        explore(impls.reference, POLICY, cfg, max_depth=0)


def test_explore_keeps_a_raising_manager_a_divergence() -> None:
    cfg = Config(num_gpu_pages=2, num_host_pages=1, num_requests=1, max_prompt_len=2)
    res = explore(raises_on_growth, POLICY, cfg, max_depth=12)
    assert not res.ok
    assert "raised RuntimeError: boom" in _diverging_line(res.render())


def _round_trip(report_trace: Trace | None, factory: Any, index: int, diffs: Any,
                tmp_path: Path) -> None:
    assert report_trace is not None
    path = report_trace.save(tmp_path / "div.jsonl")
    loaded = Trace.load(path)
    assert loaded.config == report_trace.config and loaded.policy == report_trace.policy
    rep = replay(loaded)  # results and digests are the model's
    assert [st.result for st in loaded.steps] == list(rep.results)
    assert [st.digest for st in loaded.steps] == [digest(s) for s in rep.states[1:]]
    again = replay_on_impl(loaded, factory)
    assert again.divergence is not None and not again.same_violation
    assert again.divergence.index == index
    assert again.divergence.diffs == diffs


@pytest.mark.parametrize("factory", [broken.shrink_below_snapshot, raises_on_growth,
                                     broken.corrupting_double_free])
def test_walker_divergence_trace_replays_to_the_same_divergence(factory: Any,
                                                                tmp_path: Path) -> None:
    report = run_check(factory, POLICY, examples=50, seed=0, tiers=("walker",))
    div = report.divergence
    assert div is not None and report.trace is div.trace
    assert div.index == len(div.trace.steps)
    _round_trip(report.trace, factory, div.index, div.diffs, tmp_path)


def test_hypothesis_divergence_trace_replays_to_the_same_divergence(tmp_path: Path) -> None:
    report = run_check(broken.shrink_below_snapshot, POLICY, examples=5, seed=0,
                       config=Config(), tiers=("hypothesis",), hypothesis_examples=60)
    div = report.divergence
    assert div is not None, report.render()
    assert report.trace is not None and report.trace.config == Config()
    _round_trip(report.trace, broken.shrink_below_snapshot, div.index, div.diffs, tmp_path)


class ObservationRaises(impls.CheckedReference):
    """``get_draft_record`` raises: even the fresh manager cannot be observed."""

    def get_draft_record(self, rid: int) -> int | None:
        raise KeyError(f"slot {rid}")


@pytest.mark.parametrize("tier", ["walker", "hypothesis"])
def test_an_observation_that_raises_is_a_divergence_at_step_0(tier: str) -> None:
    report = run_check(lambda c, p: ObservationRaises(c, p), POLICY, examples=1, seed=0,
                       tiers=(tier,), hypothesis_examples=1)
    div = report.divergence
    assert div is not None and div.index == 0 and div.action == "initial state"
    assert [d.name for d in div.diffs] == ["raised"] and "KeyError" in div.diffs[0].actual
    assert "Steps: none" in report.render()
