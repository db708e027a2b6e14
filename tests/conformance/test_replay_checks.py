"""Replay checks a trace against the model (each step's result and digest, the header's claim)
and `kvspec replay` keeps its rendering alone on stdout, so the output can be reused."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sample_traces import HOLD, HOLD_TRACE

from kvspec.cli import main
from kvspec.config import Config
from kvspec.conformance import impls
from kvspec.conformance.replay import replay_on_impl
from kvspec.errors import InvalidArgument
from kvspec.policy import get_policy
from kvspec.spec.machine import PropertyViolated
from kvspec.spec.trace import Step, Trace, verify_trace, with_digests

CEX = HOLD_TRACE
CUT = dataclasses.replace(CEX, steps=CEX.steps[:2])  # header still claims NO-DEFERRED-HOLD


def _with_step(t: Trace, i: int, **changes: object) -> Trace:
    steps = list(t.steps)
    steps[i] = dataclasses.replace(steps[i], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(t, steps=tuple(steps))


# ---- verify_trace ---------------------------------------------------------------------------


def test_a_faithful_counterexample_verifies() -> None:
    check = verify_trace(CEX)
    assert check.ok and check.fully_verified and check.replays
    assert check.reached == ("NO-DEFERRED-HOLD",) and check.first_violation() == 5
    assert "header claim NO-DEFERRED-HOLD reached" in check.verdict()


def test_a_truncated_counterexample_is_reported() -> None:
    check = verify_trace(CUT)
    assert not check.ok and check.mismatch is None
    assert check.claimed_not_reached == ("NO-DEFERRED-HOLD",)
    assert "header claims NO-DEFERRED-HOLD but the steps reach no violation" in check.verdict()


def test_an_edited_digest_stops_the_check_at_that_step() -> None:
    check = verify_trace(_with_step(CEX, 2, digest="000000000000"))
    m = check.mismatch
    assert m is not None and (m.step, m.field) == (3, "digest")
    assert m.recorded == "'000000000000'" and m.model == repr(CEX.steps[2].digest)
    assert check.steps_checked == 3 and not check.ok
    assert check.claimed_not_reached == ()  # not judged past a mismatch
    assert "MISMATCH at step 3 resize_context(r=0): the trace records digest" in check.verdict()
    assert "not checked" in check.render()


def test_an_edited_result_is_a_mismatch() -> None:
    check = verify_trace(_with_step(CEX, 1, result=False))
    m = check.mismatch
    assert m is not None and (m.step, m.field, m.recorded, m.model) == (2, "result", "False",
                                                                         "True")
    # a result recorded for an action that returns nothing is a mismatch too
    m2 = verify_trace(_with_step(CEX, 0, result=True)).mismatch
    assert m2 is not None and (m2.step, m2.field, m2.model) == (1, "result", "nothing (null)")


def test_a_step_the_guard_forbids_is_a_mismatch_not_a_traceback() -> None:
    bad = dataclasses.replace(CEX, steps=(CEX.steps[1],) + CEX.steps)
    check = verify_trace(bad)
    m = check.mismatch
    assert m is not None and (m.step, m.field) == (1, "enabled") and check.refused == 1
    assert not check.replays and "does not allow this step" in m.render()
    assert "REFUSED by the model" in bad.table()
    with pytest.raises(InvalidArgument, match="not enabled"):
        exec(bad.program(), {})  # noqa: S102 - the generated program, as the CLI prints it


def test_hand_written_steps_replay_but_are_not_verified() -> None:
    hand = Trace(get_policy("pr14849"), Config(), HOLD, ("NO-DEFERRED-HOLD",), "hand")
    check = verify_trace(hand)
    assert check.ok and not check.fully_verified
    assert check.unverified_digests == (1, 2, 3, 4, 5)
    assert check.unverified_results == (2, 3)  # prepare_context and resize_context return
    assert "NOT verified" in check.verdict()


def test_violations_the_header_does_not_claim_are_noted() -> None:
    check = verify_trace(dataclasses.replace(CEX, violated=()))
    assert check.ok and check.unclaimed == ("NO-DEFERRED-HOLD",)
    assert "does not claim" in check.render()


def test_the_report_names_policy_full_config_and_source() -> None:
    custom = dataclasses.replace(CEX, policy=get_policy("pr14849").replace(host_tier=False),
                                 config=Config(num_gpu_pages=5, num_host_pages=3))
    text = verify_trace(with_digests(custom)).render("t.jsonl")
    assert "Trace: t.jsonl, 5 steps, source hand" in text
    assert "pr14849 (NOT the preset: differs in host_tier=False)" in text
    for part in ("tokens_per_block=2", "num_gpu_pages=5", "num_host_pages=3",
                 "max_util_for_resume=3/4", "max_rewind_len=2", "num_requests=2",
                 "max_draft_len=1", "attention_dp=True"):
        assert part in text


# ---- the rendered program ----------------------------------------------------------------------


def test_the_program_reproduces_what_the_model_does() -> None:
    with pytest.raises(PropertyViolated, match="NO-DEFERRED-HOLD"):
        exec(CEX.program(), {})  # noqa: S102
    cut = CUT.program()
    assert "claims NO-DEFERRED-HOLD, which these steps do not reach" in cut
    exec(cut, {})  # noqa: S102 - passes: the cut steps violate nothing


def test_the_program_of_a_custom_policy_and_config_is_exact() -> None:
    pol = get_policy("pr14849").replace(name="mine", swa_scratch_reuse=False)
    t = with_digests(Trace(pol, Config(num_gpu_pages=3, max_util_for_resume="9/10"), HOLD))
    env: dict[str, object] = {}
    with pytest.raises(PropertyViolated):
        exec(t.program(), env)  # noqa: S102
    driver = env["state"]
    assert driver.policy == pol and driver.config == t.config  # type: ignore[attr-defined]


# ---- ImplReplay ---------------------------------------------------------------------------------


def test_impl_replay_report_names_impl_policy_and_config() -> None:
    rep = replay_on_impl(CEX, impls.reference, impl_name="ref")
    assert rep.same_violation and rep.impl_name == "ref"
    text = rep.render()
    assert text.splitlines()[0].startswith("Implementation ref on trace hand: policy pr14849;"
                                           " config tokens_per_block=2")
    assert "same violation" in rep.render(context=False)
    assert len(rep.render(context=False).splitlines()) == 1


def test_abstract_traces_do_not_replay_on_an_implementation() -> None:
    t = with_digests(Trace(get_policy("pr14849"), Config(),
                           (Step("others", 0, {"delta": 1, "evictable": 0, "host_delta": 0}),),
                           abstract_rest=True))
    with pytest.raises(InvalidArgument, match="abstract_rest"):
        replay_on_impl(t, impls.reference)


# ---- kvspec replay ------------------------------------------------------------------------------


def _save(tmp_path: Path, t: Trace, name: str = "t.jsonl") -> str:
    return str(t.save(tmp_path / name))


@pytest.mark.parametrize("render", ["table", "path", "program", "jsonl"])
def test_cli_rendering_alone_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       render: str) -> None:
    path = _save(tmp_path, CEX)
    assert main(["replay", path, "--render", render]) == 0
    out, err = capsys.readouterr()
    expected = {"table": CEX.table, "path": CEX.path, "program": CEX.program,
                "jsonl": CEX.to_jsonl}[render]()
    assert out == expected.rstrip("\n") + "\n"
    assert "Model: violates NO-DEFERRED-HOLD (first at step 5)" in err
    assert f"Trace: {path}" in err and "Policy: pr14849" in err and "num_gpu_pages=4" in err


def test_cli_jsonl_output_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", _save(tmp_path, CEX), "--render", "jsonl"]) == 0
    again = tmp_path / "u.jsonl"
    again.write_text(capsys.readouterr().out)
    assert main(["replay", str(again), "--render", "path"]) == 0
    assert Trace.load(again) == CEX


@pytest.mark.parametrize("trace,needle", [
    (CUT, "header claims NO-DEFERRED-HOLD but the steps reach no violation"),
    (_with_step(CEX, 2, digest="0" * 12), "MISMATCH at step 3"),
    (_with_step(CEX, 1, result=False), "MISMATCH at step 2"),
    (dataclasses.replace(CEX, steps=CEX.steps[1:]), "does not allow this step"),
])
def test_cli_mismatches_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], trace: Trace,
                               needle: str) -> None:
    assert main(["replay", _save(tmp_path, trace), "--render", "path"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("Path[") and len(out.splitlines()) == 1
    assert needle in err


def test_cli_bad_trace_exits_2_with_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    lines = CEX.to_jsonl().splitlines()
    header = json.loads(lines[0])
    del header["config"]["num_gpu_pages"]
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert main(["replay", str(p)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"kvspec: error: {p} line 1: config lacks num_gpu_pages")
    assert len(err.splitlines()) == 1


def test_cli_impl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    impl = "kvspec.conformance.impls:reference"
    assert main(["replay", _save(tmp_path, CEX), "--render", "path", "--impl", impl]) == 0
    out, err = capsys.readouterr()
    assert out == CEX.path() + "\n"
    assert f"Implementation {impl}: replay of 5 steps: model violates NO-DEFERRED-HOLD at " \
           "step 5; implementation shows the same violation(s)" in err
    refused = dataclasses.replace(CEX, steps=CEX.steps[1:])
    assert main(["replay", _save(tmp_path, refused), "--impl", impl]) == 1
    assert "not replayed: the model refuses step 1" in capsys.readouterr().err
    assert main(["replay", _save(tmp_path, CEX), "--impl", "no_such_module_xyz:f"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("kvspec: error:")


def test_redirected_output_replays_and_runs(tmp_path: Path) -> None:
    """The shell round trip: `replay --render jsonl > u.jsonl && replay u.jsonl`, and
    `replay --render program > p.py && python p.py` (which fails as the trace does)."""
    path = _save(tmp_path, CEX)
    kvspec = [sys.executable, "-m", "kvspec.cli", "replay"]
    script = (f"{' '.join(kvspec)} {path} --render jsonl > u.jsonl && {' '.join(kvspec)} u.jsonl"
              f" --render path && {' '.join(kvspec)} {path} --render program > p.py")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "u.jsonl").read_text() == CEX.to_jsonl()
    ran = subprocess.run([sys.executable, "p.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 1 and "PropertyViolated: NO-DEFERRED-HOLD" in ran.stderr
