"""CLI conventions: help and defaults, --version, deduplicated options, prove's exit codes
(0 / 3 UNKNOWN / 130 interrupted) and flags, progress bars (stderr, TTY only, --quiet),
check --export replayable, no hypothesis files in the current folder, a light start-up.

The prover is replaced by a fake here (real proofs are tests/spec's business): these tests
check what the CLI does with a matrix."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvspec.cli import _parser, _subparsers, main, render_matrix
from kvspec.spec.prove import Matrix, Verdict


def _commands() -> dict[str, argparse.ArgumentParser]:
    return _subparsers(_parser())


def test_every_command_has_a_description_and_every_option_help_with_its_default() -> None:
    top = _parser()
    helps = {a.dest: a.help for a in top._actions if isinstance(a, argparse._SubParsersAction)}
    assert helps
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {c.dest: c.help for c in action._choices_actions}
            assert set(listed) == set(_commands())
            assert all(listed.values()), listed
    for name, cmd in _commands().items():
        assert cmd.description and len(cmd.description) > 40, name
        for a in cmd._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"kvspec {name} {a.option_strings or a.dest}: no help"
            if a.default not in (None, False) and a.option_strings:
                assert "%(default)s" in a.help or str(a.default) in a.help, (name, a.dest)
        text = cmd.format_help()
        assert "default" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"kvspec {version('kvspec')}"
    import kvspec

    assert kvspec.__version__ == version("kvspec")


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explore", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--requests N" in out and "(default: 1)" in out


def test_start_up_imports_nothing_heavy() -> None:
    code = ("import sys, kvspec.cli; kvspec.cli._parser(); "
            "print(sorted(m for m in ('torch', 'z3', 'hypothesis', 'tqdm', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---- prove, with a fake prover ------------------------------------------------------------


class FakeProver:
    """Records its arguments; decides the cells in order with ``statuses`` (cycled), and
    with ``interrupt_after`` marks the rest INTERRUPTED, like prove_matrix on SIGINT."""

    def __init__(self, statuses: tuple[str, ...] = ("PROVED",),
                 interrupt_after: int | None = None) -> None:
        self.statuses, self.interrupt_after = statuses, interrupt_after
        self.calls: list[dict[str, Any]] = []

    def __call__(self, config: Any, policies: Any, properties: Any, max_depth: int = 14, *,
                 timeout: float = 60.0, bmc2_depth: int = 8, on_cell: Any = None) -> Matrix:
        self.calls.append(dict(policies=[p.name for p in policies],
                               properties=[p.id for p in properties], max_depth=max_depth,
                               timeout=timeout, bmc2_depth=bmc2_depth, on_cell=on_cell))
        mat = Matrix([p.name for p in policies], [p.id for p in properties])
        n = 0
        for pol in mat.policies:
            for prop in mat.properties:
                if self.interrupt_after is not None and n >= self.interrupt_after:
                    mat.interrupted = True
                    v = Verdict(pol, prop, "INTERRUPTED", "none", 0.0, reason="interrupted")
                else:
                    status = self.statuses[n % len(self.statuses)]
                    v = Verdict(pol, prop, status, "none", 0.0, k=1,
                                reason="z3: timeout" if status == "UNKNOWN" else "")
                    if on_cell is not None:
                        on_cell(v)
                mat.cells[(pol, prop)] = v
                n += 1
        return mat


@pytest.fixture
def prover(monkeypatch: pytest.MonkeyPatch) -> FakeProver:
    import kvspec.spec.prove as prove

    fake = FakeProver()
    monkeypatch.setattr(prove, "prove_matrix", fake)
    return fake


def test_repeated_policies_and_invariants_are_deduplicated_in_order(
        prover: FakeProver, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--policy", "pr14849", "--policy", "pr13805", "--policy", "pr14849",
                 "--invariant", "SWA-REWIND", "--invariant", "INV-LEN",
                 "--invariant", "swa-rewind"]) == 0
    call = prover.calls[-1]
    assert call["policies"] == ["pr14849", "pr13805"]
    assert call["properties"] == ["SWA-REWIND", "INV-LEN"]
    out = capsys.readouterr().out
    assert out.count("pr14849") == 1


def test_prove_passes_timeout_and_bmc2_depth(prover: FakeProver) -> None:
    from kvspec.spec.prove import DEFAULT_BMC2_DEPTH, DEFAULT_TIMEOUT

    assert main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN"]) == 0
    # the CLI's defaults are the library's (kept as literals: z3 is not imported to parse)
    assert (prover.calls[-1]["timeout"], prover.calls[-1]["bmc2_depth"]) == (
        DEFAULT_TIMEOUT, DEFAULT_BMC2_DEPTH)
    assert main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN", "--timeout", "2.5",
                 "--bmc2-depth", "3", "--max-depth", "6"]) == 0
    call = prover.calls[-1]
    assert (call["timeout"], call["bmc2_depth"], call["max_depth"]) == (2.5, 3, 6)
    assert call["on_cell"] is None  # stderr is not a terminal: no progress


def test_prove_exit_3_on_unknown_lists_each_with_its_reason(
        prover: FakeProver, capsys: pytest.CaptureFixture[str]) -> None:
    prover.statuses = ("PROVED", "UNKNOWN")
    rc = main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN", "--invariant",
               "SWA-REWIND"])
    out = capsys.readouterr().out
    assert rc == 3, out
    assert 'Unknown "SWA-REWIND" under pr13805: z3: timeout' in out
    assert "unknown" in out.splitlines()[2] and "unknown=1" in out
    assert main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN", "--invariant",
                 "SWA-REWIND", "--json"]) == 3


def test_prove_interrupted_prints_the_matrix_so_far_and_exits_130(
        prover: FakeProver, capsys: pytest.CaptureFixture[str]) -> None:
    prover.interrupt_after = 1
    rc = main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN", "--invariant",
               "SWA-REWIND"])
    captured = capsys.readouterr()
    assert rc == 130
    row = captured.out.splitlines()[2].split()
    assert row == ["pr13805", "proved", "interrupted"]
    assert "interrupted=1" in captured.out
    assert captured.err.splitlines()[-1] == "kvspec: interrupted"
    assert main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN", "--invariant",
                 "SWA-REWIND", "--json"]) == 130
    assert json.loads(capsys.readouterr().out)["interrupted"] is True


def test_prove_export_folder_is_made_before_the_proof(prover: FakeProver,
                                                      tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN", "--export",
                 str(target)]) == 0
    assert target.is_dir() and list(target.iterdir()) == []


def test_render_matrix_shows_every_status() -> None:
    mat = Matrix(["pol"], ["A", "B", "C", "D", "E"])
    trace: Any = (0, 1, 2)  # anything with a length of 3
    for prop, v in zip(mat.properties, [
            Verdict("pol", "A", "PROVED", "induction", 0.0, k=1),
            Verdict("pol", "B", "PROVED", "k-induction", 0.0, k=2),
            Verdict("pol", "C", "REFUTED", "bmc(n=1)", 0.0, trace=trace),
            Verdict("pol", "D", "UNKNOWN", "none", 0.0),
            Verdict("pol", "E", "INTERRUPTED", "none", 0.0)]):
        mat.cells[("pol", prop)] = v
    row = render_matrix(mat).splitlines()[2].split()
    assert row == ["pol", "proved", "proved(k=2)", "CEX[3]", "unknown", "interrupted"]


# ---- progress -----------------------------------------------------------------------------


def _tty(monkeypatch: pytest.MonkeyPatch) -> None:
    """capsys's stderr claims to be a terminal (called in the test: during fixture set-up
    sys.stderr is still pytest's global capture)."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


def test_walk_progress_on_a_terminal_only_and_not_with_quiet(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _tty(monkeypatch)
    assert main(["walk", "--steps", "3000"]) == 0
    err = capsys.readouterr().err
    assert "walk:" in err and "step/s" in err
    assert main(["walk", "--steps", "3000", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["-q", "walk", "--steps", "3000"]) == 0
    assert capsys.readouterr().err == ""


def test_walk_no_progress_when_stderr_is_not_a_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["walk", "--steps", "2000"]) == 0
    assert capsys.readouterr().err == ""


def test_prove_progress_counts_cells(monkeypatch: pytest.MonkeyPatch, prover: FakeProver,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _tty(monkeypatch)
    assert main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN", "--invariant",
                 "SWA-REWIND"]) == 0
    assert prover.calls[-1]["on_cell"] is not None
    err = capsys.readouterr().err
    assert "prove:" in err and "/2 " in err and "cell" in err


def test_check_and_explore_progress(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _tty(monkeypatch)
    assert main(["check", "--impl", "kvspec.conformance.impls:reference", "--examples", "5",
                 "--hypothesis-dir", str(tmp_path / "hyp")]) == 0
    err = capsys.readouterr().err
    assert "walker:" in err and "/5 " in err and "hypothesis:" in err and "run" in err
    assert main(["explore", "--max-depth", "4"]) == 0
    err = capsys.readouterr().err
    assert "explore:" in err and "state" in err and "replay:" in err


# ---- check --------------------------------------------------------------------------------


def test_check_export_is_replayable_and_nothing_lands_in_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    mod = "kvspec_cli_fixture_floor"
    (tmp_path / f"{mod}.py").write_text(
        "from kvspec.reference import ReferenceKVCacheManager\n\n"
        "class Bad(ReferenceKVCacheManager):\n"
        "    def revert_allocate_context(self, req):\n"
        "        raise RuntimeError('revert exploded')\n\n"
        "def make(config, policy):\n"
        "    return Bad(config, policy)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        rc = main(["check", "--impl", f"{mod}:make", "--policy", "pr13805", "--export", "out"])
        out = capsys.readouterr().out
        assert rc == 1, out
        exported = work / "out" / "check-pr13805.jsonl"
        assert exported.is_file() and str(Path("out") / "check-pr13805.jsonl") in out
        assert main(["replay", str(exported), "--impl", f"{mod}:make"]) == 1
        assert "revert exploded" in capsys.readouterr().err
        assert main(["check", "--impl", "kvspec.conformance.impls:reference", "--examples",
                     "3"]) == 0
    finally:
        sys.modules.pop(mod, None)
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # no .hypothesis/
