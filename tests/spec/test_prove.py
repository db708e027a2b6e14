"""The z3 matrix: what the semantics note implies must be found, not stated."""

from __future__ import annotations

import pytest

from kvspec.config import Config
from kvspec.policy import PRESETS, get_policy
from kvspec.spec.invariants import PROPERTIES, PROPERTY_IDS, get_property
from kvspec.spec.prove import (
    DEFAULT_BMC2_DEPTH,
    Matrix,
    bmc,
    houdini,
    k_induction,
    prove_matrix,
)
from kvspec.spec.trace import Trace, replay


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return prove_matrix(Config(), list(PRESETS.values()))


def status(m: Matrix, pol: str, inv: str) -> str:
    return m.get(pol, inv).status


def test_every_cell_is_decided(matrix: Matrix) -> None:
    assert len(matrix.cells) == len(PRESETS) * len(PROPERTIES)
    assert {v.status for v in matrix.cells.values()} <= {"PROVED", "REFUTED"}
    assert not matrix.interrupted


def test_pr13805_with_swa_scratch_reuse_breaks_swa_rewind(matrix: Matrix) -> None:
    assert status(matrix, "pr13805", "SWA-REWIND") == "REFUTED"


def test_pr14849_keeps_deferred_growth_but_lengths_and_pages_hold(matrix: Matrix) -> None:
    assert status(matrix, "pr14849", "NO-DEFERRED-HOLD") == "REFUTED"
    for inv in ("INV-LEN", "INV-CONSERVE", "GEN-EXACTLY-ONCE"):
        assert status(matrix, "pr14849", inv) == "PROVED"


def test_snapshot_written_on_success_only_with_failed_resize_rollback_is_stale(
        matrix: Matrix) -> None:
    assert status(matrix, "stale-snapshot", "NO-STALE-SNAPSHOT") == "REFUTED"


def test_pr13805_reviewed_without_scratch_reuse_keeps_everything(matrix: Matrix) -> None:
    for inv in PROPERTY_IDS:
        assert status(matrix, "pr13805-reviewed", inv) == "PROVED", inv


def test_unreverted_skip_path_of_pr13805_is_found(matrix: Matrix) -> None:
    v = matrix.get("pr13805", "NO-DEFERRED-HOLD")
    assert v.trace is not None
    assert any(s.action == "decide" and s.args["can_queue"] is False for s in v.trace.steps)


def test_the_may_2026_revision_breaks_atomicity_of_a_refused_revert(matrix: Matrix) -> None:
    """trtllm-2026-05 consumes the snapshot before the resize that asserts under scratch
    reuse: INV-ATOMIC (covering reverts) is refuted by a shortest counterexample ending in
    that revert; the same revert under pr13805's order (refusal changes nothing) keeps it."""
    v = matrix.get("trtllm-2026-05", "INV-ATOMIC")
    assert v.status == "REFUTED" and v.trace is not None
    assert v.trace.steps[-1].action == "revert_allocate_context"
    assert len(v.trace.steps) == 5
    assert status(matrix, "pr13805", "INV-ATOMIC") == "PROVED"
    for inv in ("SWA-REWIND", "NO-DEFERRED-HOLD", "INV-LEN", "GEN-EXACTLY-ONCE"):
        assert status(matrix, "trtllm-2026-05", inv) == "REFUTED", inv
    for inv in ("INV-CONSERVE", "NO-STALE-SNAPSHOT", "REVERT-FLOOR", "RESUME-GATE"):
        assert status(matrix, "trtllm-2026-05", inv) == "PROVED", inv


def test_refuted_traces_replay_on_the_concrete_model(matrix: Matrix) -> None:
    for v in matrix.cells.values():
        if v.trace is None:
            continue
        rep = replay(Trace.from_jsonl(v.trace.to_jsonl()))
        assert v.invariant in rep.final_violations
        # shortest: the violation appears exactly at the last step
        assert v.invariant not in rep.violations[-2]


def test_bmc_counterexamples_are_shortest() -> None:
    """No counterexample exists one step shorter (BMC explores every shorter depth)."""
    pol = get_policy("stale-snapshot")
    prop = get_property("NO-STALE-SNAPSHOT")
    assert bmc(Config(), pol, [prop], max_depth=9) == {}
    assert len(bmc(Config(), pol, [prop], max_depth=10)["NO-STALE-SNAPSHOT"]) == 10


def test_houdini_drops_exactly_the_refuted_properties_under_the_reviewed_policy() -> None:
    ind = houdini(Config(), get_policy("pr13805-reviewed"))
    assert set(ind.properties) == set(PROPERTY_IDS)
    assert ind.lemmas  # the strengthening is not empty


def test_k_induction_does_not_prove_a_false_property() -> None:
    pol = get_policy("pr14849")
    ind = houdini(Config(), pol)
    assert k_induction(Config(), pol, get_property("NO-DEFERRED-HOLD"), ind, 2).sat


@pytest.mark.parametrize("fix", ["clear_snapshot_on_failure",
                                 "clear_snapshot_at_iteration_start"])
def test_either_snapshot_fix_alone_suffices(fix: str) -> None:
    pol = get_policy("stale-snapshot").replace(name=f"stale-snapshot+{fix}", **{fix: True})
    mat = prove_matrix(Config(), [pol], [get_property("NO-STALE-SNAPSHOT")])
    assert mat.get(pol.name, "NO-STALE-SNAPSHOT").status == "PROVED"


def test_bmc_counterexample_arguments_are_minimal(matrix: Matrix) -> None:
    v = matrix.get("pr14849", "NO-DEFERRED-HOLD")
    assert v.trace is not None
    arrive = v.trace.steps[0]
    assert arrive.action == "arrive"
    assert arrive.args == {"prompt_len": 1, "chunk_size": 1, "draft_len": 0}


def test_proved_cells_carry_a_rechecked_certificate_and_a_two_request_bmc(
        matrix: Matrix) -> None:
    """A second route for PROVED verdicts: the certificate re-verified, 2-slot BMC clean."""
    for v in matrix.cells.values():
        if v.status != "PROVED":
            continue
        assert v.invariant in v.certificate, (v.policy, v.invariant)
        assert v.bmc_depth == DEFAULT_BMC2_DEPTH
        assert v.route in ("induction", "k-induction")
        cell = v.to_json()
        assert cell["certificate"]["size"] == len(v.certificate) > 1
        assert cell["route"] == v.route and cell["bmc_depth"] == DEFAULT_BMC2_DEPTH


def test_a_bmc_trace_config_covers_the_arguments_z3_chose() -> None:
    """z3 bounds action parameters by BMC_VALUE_BOUND, not by the config: the decoded
    trace's config is widened so that its own generators can produce the steps."""
    small = Config(max_prompt_len=1, max_draft_len=0)
    trace = bmc(small, get_policy("stale-snapshot"), [get_property("NO-STALE-SNAPSHOT")],
                max_depth=12)["NO-STALE-SNAPSHOT"]
    prompts = [st.args["prompt_len"] for st in trace.steps if st.action == "arrive"]
    assert max(prompts) > 1  # a 1-token prompt cannot show a stale snapshot
    assert trace.config.max_prompt_len >= max(prompts)
    assert "NO-STALE-SNAPSHOT" in replay(trace).final_violations
