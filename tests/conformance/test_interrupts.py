"""Progress callbacks and interrupts (issue 8, items 4 and 7, library side): ``walk``,
``run_check`` and ``explore`` report progress, and a ``KeyboardInterrupt`` inside their loops
returns the normal result with ``interrupted=True`` and everything done so far."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from kvspec.config import Config
from kvspec.conformance import broken, impls
from kvspec.conformance.check import run_check
from kvspec.conformance.exhaustive import explore
from kvspec.policy import PRESETS
from kvspec.spec.walker import PROGRESS_EVERY, walk

POLICY = PRESETS["pr13805-reviewed"]
SMALL = Config(num_gpu_pages=2, num_host_pages=1, num_requests=1, max_prompt_len=2)


def _interrupt_at(n: int, calls: list[tuple[object, ...]]):  # type: ignore[no-untyped-def]
    def progress(*args: object) -> None:
        calls.append(args)
        if len(calls) == n:
            raise KeyboardInterrupt
    return progress


def test_walk_progress_is_sparse_and_ends_at_the_total() -> None:
    calls: list[tuple[object, ...]] = []
    res = walk(Config(), POLICY, steps=3 * PROGRESS_EVERY + 5, seed=0,
               progress=lambda d, t: calls.append((d, t)))
    total = 3 * PROGRESS_EVERY + 5
    assert calls == [(PROGRESS_EVERY, total), (2 * PROGRESS_EVERY, total),
                     (3 * PROGRESS_EVERY, total), (total, total)]
    assert not res.interrupted and res.steps == total


def test_walk_interrupted_keeps_what_it_did() -> None:
    calls: list[tuple[object, ...]] = []
    res = walk(Config(), PRESETS["pr13805"], steps=10**9, seed=2,
               progress=_interrupt_at(3, calls))
    assert res.interrupted and res.steps == 3 * PROGRESS_EVERY
    assert res.counterexamples  # pr13805 breaks within 3,000 steps; kept across the interrupt
    assert sum(res.actions.values()) == res.steps


def test_check_progress_per_walk_and_per_example() -> None:
    calls: list[tuple[object, ...]] = []
    report = run_check(impls.reference, POLICY, examples=4, seed=0, hypothesis_examples=3,
                       progress=lambda *a: calls.append(a))
    assert report.ok and not report.interrupted
    assert calls[:4] == [("walker", i, 4) for i in range(1, 5)]
    hyp = [c for c in calls if c[0] == "hypothesis"]
    assert hyp and hyp[-1] == ("hypothesis", 3, 3)
    assert [c[1] for c in hyp] == sorted(c[1] for c in hyp)


@pytest.mark.parametrize("tier,at", [("walker", 3), ("hypothesis", 6)])
def test_check_interrupted_in_either_tier(tier: str, at: int) -> None:
    calls: list[tuple[object, ...]] = []
    report = run_check(impls.reference, POLICY, examples=5, seed=0, hypothesis_examples=20,
                       progress=_interrupt_at(at, calls))
    assert report.interrupted and report.ok
    last = report.tiers[-1]
    assert last.tier == tier and last.interrupted
    assert last.runs == (3 if tier == "walker" else 1) and last.steps > 0
    text = report.render()
    assert text.splitlines()[0].endswith("INTERRUPTED")
    assert f"interrupted after {last.runs} of {last.runs_total} {tier} runs" in text
    if tier == "walker":
        assert "not run: hypothesis" in text


def test_check_interrupted_after_a_divergence_keeps_it() -> None:
    calls: list[tuple[object, ...]] = []

    def progress(tier: str, done: int, total: int) -> None:
        calls.append((tier, done, total))

    report = run_check(broken.corrupting_double_free, POLICY, examples=50, seed=0,
                       tiers=("walker",), progress=progress)
    assert report.divergence is not None
    n = calls[-1][1]  # the walk that diverged
    calls.clear()
    report = run_check(broken.corrupting_double_free, POLICY, examples=50, seed=0,
                       tiers=("walker",), progress=_interrupt_at(int(n), calls))
    # the interrupt lands right after the diverging walk, before shrinking: kept unshrunk
    assert report.interrupted and report.divergence is not None
    assert report.divergence.shrunk_from is None
    assert "DIVERGES (interrupted)" in report.render().splitlines()[0]


def test_explore_progress_and_interrupts() -> None:
    seen: list[tuple[int, int]] = []
    paths: list[tuple[int, int]] = []
    res = explore(impls.reference, POLICY, SMALL, progress=lambda s, d: seen.append((s, d)),
                  replay_progress=lambda a, b: paths.append((a, b)))
    assert res.ok and not res.interrupted
    assert seen and seen[-1] == (res.states, res.max_depth)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert paths[-1] == (res.replayed_paths, res.leaf_paths) and res.leaf_paths > 0

    cut = explore(impls.reference, POLICY, SMALL, progress=_interrupt_at(1, []))
    assert cut.interrupted and cut.interrupted_in == "bfs" and cut.replayed_paths == 0
    assert 0 < cut.states < res.states
    assert f"interrupted after {cut.states} states of the BFS" in cut.render()
    assert cut.render().splitlines()[0].endswith("INTERRUPTED")

    cut = explore(impls.reference, POLICY, SMALL, replay_progress=_interrupt_at(2, []))
    assert cut.interrupted and cut.interrupted_in == "replay"
    assert cut.states == res.states and 0 < cut.replayed_paths < cut.leaf_paths
    assert (f"interrupted after replaying {cut.replayed_paths} of {cut.leaf_paths} paths"
            in cut.render())


_SIGINT_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading
    from kvspec.config import Config
    from kvspec.conformance import impls
    from kvspec.conformance.check import run_check
    from kvspec.conformance.exhaustive import explore
    from kvspec.policy import PRESETS
    from kvspec.spec.walker import walk

    def sigint_in(seconds):
        threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()

    pol = PRESETS["pr13805-reviewed"]
    out = {}
    sigint_in(0.4)
    w = walk(Config(), pol, steps=10**9, seed=0)
    out["walk"] = [w.interrupted, w.steps]
    sigint_in(0.4)
    r = run_check(impls.reference, pol, examples=10**6, seed=0)
    out["check"] = [r.interrupted, r.tiers[-1].runs, r.render().splitlines()[0]]
    sigint_in(1.2)  # hypothesis loads first (~0.5 s), then the examples run
    r = run_check(impls.reference, pol, examples=1, hypothesis_examples=10**6, seed=0,
                  tiers=("hypothesis",))
    out["hypothesis"] = [r.interrupted, r.tiers[-1].runs, r.render().splitlines()[0]]
    sigint_in(0.4)
    two = Config(num_gpu_pages=2, num_host_pages=1, num_requests=2, max_prompt_len=2)
    e = explore(impls.reference, pol, two)
    out["explore"] = [e.interrupted, e.states, e.interrupted_in]
    print(json.dumps(out))
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_real_sigint_returns_partial_results(tmp_path: object) -> None:
    env = dict(os.environ, KVSPEC_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", _SIGINT_SCRIPT], capture_output=True,
                          text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.returncode != -signal.SIGINT
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["walk"][0] is True and out["walk"][1] > 0
    assert out["check"][0] is True and out["check"][1] > 0
    assert out["check"][2].endswith("INTERRUPTED")
    assert out["hypothesis"][0] is True and out["hypothesis"][2].endswith("INTERRUPTED")
    assert out["explore"][0] is True and out["explore"][1] > 0
    assert "Traceback" not in proc.stderr
