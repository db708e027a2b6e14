"""An OK under a buggy preset says which invariants the model itself violated on the way."""

from __future__ import annotations

from kvspec.conformance import impls
from kvspec.conformance.check import run_check


def test_ok_under_a_buggy_preset_names_the_models_own_violations() -> None:
    rep = run_check(impls.reference, "pr14849", examples=30, tiers=("walker",))
    assert rep.ok
    assert rep.model_violations == ["NO-DEFERRED-HOLD"]
    assert "model: policy pr14849 itself violates NO-DEFERRED-HOLD" in rep.render()


def test_a_clean_preset_reports_no_model_violation() -> None:
    rep = run_check(impls.reference, "pr13805-reviewed", examples=30, tiers=("walker",))
    assert rep.ok and rep.model_violations == []
    assert "model:" not in rep.render()


def test_the_executors_decision_properties_are_listed_not_compared() -> None:
    """Under gate-before-resume the model breaks the two decision properties; the driver
    takes the model's decision, so the reference still agrees step for step and the OK
    names them as the model's own."""
    rep = run_check(impls.reference, "gate-before-resume", examples=60, tiers=("walker",))
    assert rep.ok
    assert rep.model_violations == ["BUDGET-CONSISTENT", "DECISION-IS-ADMISSION"]
    assert "itself violates BUDGET-CONSISTENT, DECISION-IS-ADMISSION" in rep.render()
