"""Misuse tolerance (issue 9, deliverable 3): a manager that accepts a misuse silently, or
refuses it with another exception type, is a warning once per kind and the run goes on;
``strict`` makes it a failure; a misuse that changes the manager state is a failure always.

The managers here (and ``broken.CorruptingDoubleFree``) wrap the reference
(``kvspec.conformance.impls:reference``'s class) and change only how they answer a misuse.
Keep these fast: each check runs a few short walks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from kvspec.cli import main
from kvspec.config import Config
from kvspec.conformance import broken, impls
from kvspec.conformance.check import run_check
from kvspec.conformance.exhaustive import explore
from kvspec.conformance.lockstep import Lockstep
from kvspec.conformance.misuse import KINDS, MisuseFinding
from kvspec.conformance.replay import replay_on_impl
from kvspec.conformance.walker import Sampler
from kvspec.policy import Policy, get_policy
from kvspec.reference.cache import CacheStatus

POLICY = "pr13805-reviewed"
WALK_CONFIG = Config(max_prompt_len=2, max_draft_len=0)
"""Short prompts: requests finish (free_resources) within a 200-step walk of seed 0."""
MODULE = __name__  # "test_misuse": tests/conformance is on sys.path (pytest's rootdir import)


class Tolerant(impls.CheckedReference):
    """free_resources of a request without a cache and suspend_request of a SUSPENDED cache
    return silently (what TensorRT-LLM's, vLLM's and SGLang's managers do)."""

    def misuse(self, req: Any) -> None:
        return None

    def free_resources(self, req: Any) -> None:
        if not self.has_cache(req.request_id):
            return self.misuse(req)
        super().free_resources(req)

    def suspend_request(self, req: Any) -> None:
        rid = req.request_id
        if self.has_cache(rid) and self.get_status(rid) == CacheStatus.SUSPENDED:
            return self.misuse(req)
        super().suspend_request(req)


class RaisesKeyError(Tolerant):
    """The same misuses raise KeyError (nothing changed) instead of ProtocolError."""

    def misuse(self, req: Any) -> None:
        raise KeyError(f"request {req.request_id}")


class CorruptingFreeThenRaises(broken.CorruptingDoubleFree):
    then_raise = True


def tolerant(config: Config, policy: Policy) -> Tolerant:
    return Tolerant(config, policy)


def raises_key_error(config: Config, policy: Policy) -> RaisesKeyError:
    return RaisesKeyError(config, policy)


def corrupting_free_then_raises(config: Config, policy: Policy) -> CorruptingFreeThenRaises:
    return CorruptingFreeThenRaises(config, policy)


def _walk(factory: Any, *, strict: bool = False, length: int = 200, seed: int = 0
          ) -> tuple[Lockstep, Any]:
    lock = Lockstep(factory, WALK_CONFIG, get_policy(POLICY), strict=strict)
    sampler = Sampler(lock.model, random.Random(seed))
    div = None
    for _ in range(length):
        step = sampler.draw(lock.state)
        assert step is not None
        div = lock.step(*step)
        if div is not None:
            break
    return lock, div


SETS_UP = {"double-free": "free_resources", "free-unknown": "free_resources",
           "suspend-suspended": "suspend_request"}


def test_the_reference_refuses_every_probe() -> None:
    lock, div = _walk(impls.reference, strict=True)
    assert div is None and lock.warnings == []
    assert {"free_resources", "suspend_request"} <= {st.action for st in lock.steps}


def test_silent_acceptance_is_one_warning_per_kind_at_its_first_step() -> None:
    lock, div = _walk(tolerant)
    assert div is None and len(lock.steps) == 200  # the run went on
    assert {w.kind for w in lock.warnings} == set(KINDS)
    for w in lock.warnings:
        assert w.outcome == "accepted" and not w.failure and w.where == ""
        assert "accepted silently" in w.detail and "ProtocolError" in w.detail
        # the step is the first one that sets this probe up
        first = next(i for i, st in enumerate(lock.steps, start=1)
                     if st.action == SETS_UP[w.kind])
        assert w.step == first, (w, first)
        assert w.action.startswith(SETS_UP[w.kind] + "(")
        assert w.render().startswith(f"{w.kind} at step {w.step}: {SETS_UP[w.kind]}(")


def test_strict_makes_the_first_warning_a_divergence() -> None:
    lock, div = _walk(tolerant, strict=True)
    assert div is not None and lock.warnings == []
    assert div.steps[-1].action in ("free_resources", "suspend_request")
    (diff,) = [d for d in div.diffs if d.name == "misuse"]
    assert diff.expected == "ProtocolError, nothing changed"
    assert "accepted silently" in diff.actual


def test_another_exception_type_is_a_warning_naming_it() -> None:
    lock, div = _walk(raises_key_error)
    assert div is None and {w.kind for w in lock.warnings} == set(KINDS)
    for w in lock.warnings:
        assert w.outcome == "raised" and "raised KeyError: 'request " in w.detail


@pytest.mark.parametrize("factory", [broken.corrupting_double_free,
                                     corrupting_free_then_raises])
def test_a_double_free_that_corrupts_the_counts_fails_even_without_strict(factory: Any) -> None:
    report = run_check(factory, POLICY, examples=10, seed=0, tiers=("walker",))
    div = report.divergence
    assert div is not None, report.render()
    assert div.steps[-1].action == "free_resources"
    (diff,) = [d for d in div.diffs if d.name == "misuse"]
    assert diff.actual.startswith("double-free: free_resources(r=")
    how = "raised ProtocolError" if factory is corrupting_free_then_raises else "accepted it"
    assert f"{how} but changed the manager state: gpu_free " in diff.actual
    assert "gpu_free" in {d.name for d in div.diffs}  # the lockstep sees the counts too


def test_check_reports_warnings_and_stays_ok_strict_fails() -> None:
    report = run_check(tolerant, POLICY, examples=6, seed=0)
    assert report.ok and report.steps == 6 * 60 + report.tiers[1].steps
    warnings = report.warnings
    assert {w.kind for w in warnings} == set(KINDS)
    assert all(w.where.startswith("walker run ") for w in warnings)
    text = report.render()
    assert text.splitlines()[0].endswith(": OK")
    for w in warnings:
        assert f"  warning: {w.render()}" in text
    assert text.splitlines()[-len(warnings) - 1].startswith("Misuse warnings")

    strict = run_check(tolerant, POLICY, examples=6, seed=0, strict=True)
    assert not strict.ok and strict.warnings == []
    assert strict.render().splitlines()[0].endswith(", strict: DIVERGES")
    div = strict.divergence
    assert div is not None and "misuse" in div.kinds()
    # the shrunk strict divergence replays as itself only with strict
    again = replay_on_impl(div.trace, tolerant, strict=True)
    assert again.divergence is not None and again.divergence.diffs == div.diffs
    lenient = replay_on_impl(div.trace, tolerant)
    assert lenient.divergence is None and lenient.same_violation
    assert {w.kind for w in lenient.warnings} == {div.diffs[-1].actual.split(":")[0]}
    assert "Misuse warnings" in lenient.render()


def test_hypothesis_tier_collects_warnings() -> None:
    report = run_check(tolerant, POLICY, examples=1, seed=0, tiers=("hypothesis",),
                       hypothesis_examples=5)
    assert report.ok
    assert report.warnings and all(w.where == "a hypothesis example" for w in report.warnings)


def test_explore_warns_and_strict_fails() -> None:
    # free_resources leads back to the empty state, one the BFS has seen: its probes run on
    # the replay of that closing edge (before issue 10 they needed two requests and depth 16)
    cfg = Config(num_requests=1, num_gpu_pages=2, num_host_pages=1, max_prompt_len=2,
                 max_draft_len=0, tokens_per_block=2)
    res = explore(tolerant, get_policy(POLICY), cfg, max_depth=8)
    assert res.ok and {w.kind for w in res.warnings} == set(KINDS), res.render()
    assert res.warnings[0].where.startswith("replayed path ")
    assert "Misuse warnings" in res.render()
    res = explore(tolerant, get_policy(POLICY), cfg, max_depth=8, strict=True)
    assert not res.ok and res.warnings == []
    assert "misuse" in res.divergences[0].kinds()


def test_finding_renders_and_serializes() -> None:
    f = MisuseFinding("double-free", 7, "free_resources(r=0) again", "accepted", "nothing",
                      where="walker run 2")
    assert f.render() == "double-free at step 7 of walker run 2: free_resources(r=0) again: nothing"
    assert f.to_json()["step"] == 7 and not f.failure


# ---- the command line ----------------------------------------------------------------------


def test_cli_check_warns_exit_0_strict_exits_1(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    impl = f"{MODULE}:tolerant"
    assert main(["check", "--impl", impl, "--examples", "3"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("  warning: ")]
    assert {ln.split()[1] for ln in lines} == set(KINDS)  # one line per kind
    assert all(" at step " in ln and "accepted silently" in ln for ln in lines)

    rc = main(["check", "--impl", impl, "--examples", "3", "--strict", "--export",
               str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "DIVERGES" in out and "misuse: expected ProtocolError, nothing changed" in out
    assert "--strict)" in out  # the replay hint keeps --strict
    trace = tmp_path / f"check-{POLICY}.jsonl"
    assert main(["replay", str(trace), "--impl", impl, "--strict"]) == 1
    assert main(["replay", str(trace), "--impl", impl]) == 0
    assert "  warning: " in capsys.readouterr().err  # (--strict without --impl: test_cli_errors)


def test_cli_explore_strict(capsys: pytest.CaptureFixture[str]) -> None:
    impl = f"{MODULE}:tolerant"
    assert main(["explore", "--impl", impl, "--max-depth", "8"]) == 0
    assert "  warning: suspend-suspended at step " in capsys.readouterr().out
    assert main(["explore", "--impl", impl, "--max-depth", "8", "--strict"]) == 1
