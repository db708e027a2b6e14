"""The prover never says PROVED without unsat answers: unknown, timeouts, stubs, interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import z3

import kvspec.spec.prove as prove
from kvspec.config import Config
from kvspec.errors import InvalidArgument
from kvspec.policy import get_policy
from kvspec.spec.invariants import PROPERTY_IDS, get_property
from kvspec.spec.prove import (
    INTERRUPTED,
    PROVED,
    REFUTED,
    UNKNOWN,
    Answer,
    Guard,
    Matrix,
    ProofInterrupted,
    SolverIncomplete,
    bmc,
    houdini,
    prove_matrix,
    recheck_certificate,
)

# Two policies with both verdicts in their rows (2 REFUTED in one, 1 in the other; every other
# property PROVED).
POLICIES = ("pr13805-reviewed-swa", "stale-snapshot")


@pytest.fixture(scope="module")
def truth() -> Matrix:
    """The full run these tests compare against."""
    return prove_matrix(Config(), [get_policy(p) for p in POLICIES])


def _agrees_or_unknown(m: Matrix, truth: Matrix) -> None:
    for key, v in m.cells.items():
        assert v.status in (truth.cells[key].status, UNKNOWN, INTERRUPTED), (key, v.status)
        if v.status == PROVED:
            assert v.certificate and v.bmc_depth >= 1


def test_the_truth_has_both_verdicts(truth: Matrix) -> None:
    assert truth.count(PROVED) == 2 * len(PROPERTY_IDS) - 3 and truth.count(REFUTED) == 3


def test_a_phase_out_of_time_is_unknown_never_proved() -> None:
    m = prove_matrix(Config(), [get_policy("pr13805-reviewed-swa")], timeout=1e-9)
    assert {v.status for v in m.cells.values()} == {UNKNOWN}
    for v in m.cells.values():
        assert "timeout" in v.reason, v.reason


def test_a_solver_that_always_answers_unknown_proves_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prove, "ask", lambda *a, **k: Answer("unknown", "stub: gave up"))
    m = prove_matrix(Config(), [get_policy("pr13805-reviewed")])
    assert {v.status for v in m.cells.values()} == {UNKNOWN}
    assert all("stub: gave up" in v.reason for v in m.cells.values())


FLAKY_POLICY = "pr13805-reviewed-swa"
FLAKY_DEPTH = 7
"""BMC depth of the flaky runs: past this policy's longest counterexample (6 steps), and
shallow enough that a run whose proof an unknown answer spoiled ends soon (as UNKNOWN)."""


@pytest.fixture(scope="module")
def queries() -> int:
    """How many solver queries a full run of FLAKY_POLICY asks."""
    calls = [0]
    real = prove.ask

    def counting(*a: Any, **k: Any) -> Answer:
        calls[0] += 1
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prove, "ask", counting)
        prove_matrix(Config(), [get_policy(FLAKY_POLICY)], max_depth=FLAKY_DEPTH)
    return calls[0]


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 0.95])
def test_one_unknown_answer_anywhere_never_flips_a_verdict(
        monkeypatch: pytest.MonkeyPatch, truth: Matrix, queries: int, fraction: float) -> None:
    """The n-th query answers unknown (Houdini, BMC, re-check or cross-check, depending on n):
    every cell is then its true verdict or UNKNOWN."""
    policy = FLAKY_POLICY
    n = int(fraction * (queries - 1))
    calls = [0]
    real = prove.ask

    def flaky(*a: Any, **k: Any) -> Answer:
        calls[0] += 1
        return Answer("unknown", "stub") if calls[0] - 1 == n else real(*a, **k)

    monkeypatch.setattr(prove, "ask", flaky)
    m = prove_matrix(Config(), [get_policy(policy)], max_depth=FLAKY_DEPTH)
    assert calls[0] > n
    _agrees_or_unknown(m, truth)


def test_houdini_keeps_nothing_when_consecution_is_unknown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = prove.ask

    def no_consecution(sol: z3.Solver, *assumptions: Any, **k: Any) -> Answer:
        return Answer("unknown", "stub") if not assumptions else real(sol, *assumptions, **k)

    monkeypatch.setattr(prove, "ask", no_consecution)
    ind = houdini(Config(), get_policy("pr13805-reviewed"))
    assert not ind.complete and ind.certificate == () and "stub" in ind.reason


def test_the_certificate_recheck_rejects_a_set_that_is_not_inductive() -> None:
    pol = get_policy("pr13805-reviewed")
    ind = houdini(Config(), pol)
    assert recheck_certificate(Config(), pol, ind.certificate).unsat
    # the property alone, without the lemmas that strengthen it, is not inductive
    alone = recheck_certificate(Config(), pol, ("NO-STALE-SNAPSHOT",))
    assert alone.sat and "consecution" in alone.reason
    with pytest.raises(InvalidArgument, match="NO-SUCH-LEMMA"):
        recheck_certificate(Config(), pol, ("NO-SUCH-LEMMA",))


def test_an_incomplete_bmc_raises_instead_of_reporting_no_counterexample() -> None:
    pol = get_policy("stale-snapshot")
    with pytest.raises(SolverIncomplete, match="unknown"):
        bmc(Config(), pol, [get_property("NO-STALE-SNAPSHOT")], 10, guard=Guard(1e-9).phase())


def test_an_interrupted_query_raises_proof_interrupted() -> None:
    g = Guard(None, interrupted=True)
    with pytest.raises(ProofInterrupted):
        prove.ask(z3.Solver(), guard=g)
    with pytest.raises(KeyboardInterrupt):  # a KeyboardInterrupt for callers outside prove
        prove.ask(z3.Solver(), guard=g)


def test_a_z3_call_canceled_by_the_interrupt_ends_the_run_as_interrupted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT cancels whatever z3 call is running, e.g. a model evaluation after a check:
    its "canceled" error is the interruption (partial result), not a crash; without the
    interrupt flag the same error is a real one and propagates."""
    def canceled(config: Any, policy: Any, props: Any, depth: Any, bmc2: Any,
                 guard: prove.Guard, emit: Any) -> None:
        guard.interrupted = True
        raise z3.Z3Exception(b"canceled")

    monkeypatch.setattr(prove, "_decide_policy", canceled)
    mat = prove_matrix(Config(), [get_policy("pr14849")])
    assert mat.interrupted
    assert {v.status for v in mat.cells.values()} == {"INTERRUPTED"}

    def broken(*args: Any) -> None:
        raise z3.Z3Exception(b"invalid argument")

    monkeypatch.setattr(prove, "_decide_policy", broken)
    with pytest.raises(z3.Z3Exception):
        prove_matrix(Config(), [get_policy("pr14849")])


def test_bad_limits_are_typed_errors() -> None:
    pol = [get_policy("pr14849")]
    for kw in ({"timeout": 0}, {"timeout": -1.0}, {"bmc2_depth": 0}, {"max_depth": 0}):
        with pytest.raises(InvalidArgument):
            prove_matrix(Config(), pol, **kw)  # type: ignore[arg-type]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted_runs(delays: list[float]) -> Iterator[tuple[int, dict[str, Any], str]]:
    args = [sys.executable, "-m", "kvspec.cli", "prove", "--json", "--quiet"]
    for p in POLICIES:
        args += ["--policy", p]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for delay in delays:
        # SIG_DFL in the child: a shell that runs this suite in the background ignores SIGINT,
        # and an ignored SIGINT is inherited (kvspec then respects it)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, preexec_fn=_default_sigint)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        yield proc.returncode, json.loads(out) if out.strip() else {}, err


def test_an_interrupted_prove_never_shows_a_refuted_cell_as_proved(truth: Matrix) -> None:
    """SIGINT at several points of a run (import, Houdini, BMC, cross-checks): exit 130 with
    the cells decided so far, or 0 when it had finished; never a flipped cell."""
    seen_interrupted = 0
    for rc, out, err in _interrupted_runs([1.0, 2.0, 3.5, 6.0, 10.0]):
        assert "Traceback" not in err, err
        if not out:  # interrupted before the CLI reached the prover (import time)
            assert rc == 130, (rc, err)
            continue
        assert rc in (0, 130), (rc, err)
        assert out["interrupted"] == (rc == 130)
        seen_interrupted += rc == 130
        for cell in out["cells"]:
            want = truth.get(cell["policy"], cell["invariant"]).status
            assert cell["status"] in (want, UNKNOWN, INTERRUPTED), cell
    assert seen_interrupted >= 1


def test_every_property_id_is_a_cell(truth: Matrix) -> None:
    assert set(truth.properties) == set(PROPERTY_IDS)
