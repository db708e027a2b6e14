"""The bug catalogue, run (issue 10, deliverable 6): every row found by two independent
checkers, in the bounded form CI runs; the CLI's exit codes; the stale-free probe."""

from __future__ import annotations

import json

import pytest

from kvspec.cli import main
from kvspec.config import Config
from kvspec.conformance import broken, impls
from kvspec.conformance.adapter import Factory
from kvspec.conformance.catalogue import (
    BUGS,
    CHECKERS,
    FULL_ONLY,
    MIN_DETECTIONS,
    QUICK,
    run_catalogue,
)
from kvspec.conformance.lockstep import Lockstep
from kvspec.conformance.report import Divergence
from kvspec.errors import InvalidArgument
from kvspec.policy import get_policy


def test_every_row_is_found_by_two_checkers_in_the_bounded_form() -> None:
    res = run_catalogue(budget=QUICK, budget_name="quick")
    assert [r.bug.id for r in res.rows] == [b.id for b in BUGS]
    missed = {r.bug.id: [d.note for d in r.detections if not d.found]
              for r in res.rows if not r.ok}
    # the rows that need the full budget for their second checker, and only those
    assert set(missed) == FULL_ONLY, missed
    for row in res.rows:
        assert len(row.found_by) >= (1 if row.bug.id in FULL_ONLY else MIN_DETECTIONS)
        for d in row.detections:
            assert (d.length is not None) is d.found
    text = res.render()
    assert text.splitlines()[-1].startswith("verdict: FAIL (" + ", ".join(sorted(FULL_ONLY)))


def test_rows_cover_protocol_bugs_and_the_peers_misuse_bugs() -> None:
    kinds = {b.kind for b in BUGS}
    assert kinds == {"protocol", "implementation"}
    ids = {b.id for b in BUGS}
    assert {"double-free", "stale-free-after-reuse", "stale-snapshot", "swa-rewind"} <= ids
    for b in BUGS:
        assert (b.invariant is None) != (b.impl is None)
        assert b.impl is None or b.impl in broken.BROKEN
        assert len(b.checkers) >= MIN_DETECTIONS


def test_a_row_found_by_one_checker_fails_and_the_cli_exits_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalogue", "--row", "skip-keeps-context-growth", "--checker", "bmc",
                 "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["rows"][0]["found_by"] == ["bmc"]
    assert main(["catalogue", "--row", "skip-keeps-context-growth", "--checker", "bmc",
                 "--checker", "walker", "--quick"]) == 0
    text = capsys.readouterr().out
    assert "skip-keeps-context-growth" in text and "verdict: OK" in text


def test_bad_rows_and_checkers_are_refused_before_any_run(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidArgument, match="unknown row"):
        run_catalogue(["no-such-bug"])
    with pytest.raises(InvalidArgument, match="unknown checker"):
        run_catalogue(checkers=["z4"])
    assert main(["catalogue", "--checker", "z4"]) == 2
    err = capsys.readouterr().err
    assert "unknown checker" in err and ", ".join(CHECKERS) in err


CONFIG = Config(num_requests=2, tokens_per_block=2, num_gpu_pages=2, num_host_pages=0,
                max_prompt_len=3, max_draft_len=0)
# request 0 runs its prompt and is freed; request 1 then takes request 0's old page
STEPS = [("arrive", 0, dict(prompt_len=2, chunk_size=2, draft_len=0)),
         ("arrive", 1, dict(prompt_len=2, chunk_size=2, draft_len=0)),
         ("prepare_context", 0, {}), ("resize_context", 0, {}),
         ("decide", 0, dict(wait=False, can_queue=True)), ("forward", 0, dict(accepted=0)),
         ("end_iteration", 0, {}), ("free_resources", 0, {}),
         ("prepare_context", 1, {}), ("resize_context", 1, {})]


def _run(factory: Factory) -> tuple[Lockstep, Divergence | None]:
    lock = Lockstep(factory, CONFIG, get_policy("pr13805-reviewed"))
    for name, r, args in STEPS:
        div = lock.step(name, r, dict(args))
        if div is not None:
            return lock, div
    return lock, None


def test_a_stale_free_after_reuse_is_probed_and_caught() -> None:
    lock, div = _run(impls.reference)
    assert div is None and lock.warnings == []
    _, div = _run(broken.stale_free_after_reuse)
    assert div is not None and div.index == len(STEPS)  # at the growth that reused the page
    text = div.render()
    assert "after request 1 took some of its old pages" in text
    assert "both free and held" in text


def test_explore_replays_every_transition_including_closing_edges() -> None:
    """A free that returns to the empty state closes a cycle: it is on no BFS tree path, so
    before issue 10 explore never replayed it and a corrupting double free passed."""
    from kvspec.conformance.catalogue import _SMALL
    from kvspec.conformance.exhaustive import explore

    config = _SMALL.replace(num_gpu_pages=2, max_prompt_len=2, max_draft_len=0)
    ok = explore(impls.reference, get_policy("pr13805-reviewed"), config)
    assert ok.ok and ok.closing_edges > 0
    assert ok.leaf_paths == ok.replayed_paths  # leaves and closing edges, all replayed
    assert f"+ {ok.closing_edges} closing edges" in ok.render()
    bad = explore(broken.corrupting_double_free, get_policy("pr13805-reviewed"), config)
    assert not bad.ok
    assert bad.divergences[0].action.startswith("free_resources")
