"""SIGINT: every subcommand ends with the partial summary (where there is one), one line
``kvspec: interrupted`` on stderr, exit 130, no traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kvspec.cli import main


def _interrupt(argv: list[str], after: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kvspec.cli argv``, send SIGINT after ``after`` seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvspec.cli", *argv], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=cwd,
        # a shell without job control starts background children with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after)
    assert proc.poll() is None, "finished before the interrupt; make the command longer"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(("argv", "summary"), [
    (["walk", "--steps", "10000000"], r"Walked\. .*steps=\d+ of 10000000 \(interrupted\)"),
    (["check", "--impl", "kvspec.conformance.impls:reference", "--examples", "1000000"],
     r"INTERRUPTED"),
    (["explore", "--requests", "2"], r"interrupted"),
], ids=["walk", "check", "explore"])
def test_sigint_prints_the_partial_summary_and_exits_130(argv: list[str], summary: str,
                                                         tmp_path: Path) -> None:
    import re

    res = _interrupt(argv, 2.0, tmp_path)
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert re.search(summary, res.stdout), res.stdout
    assert res.stderr.strip().splitlines()[-1] == "kvspec: interrupted"


def test_keyboard_interrupt_anywhere_is_one_line_and_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import kvspec.spec.walker as walker

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(walker, "walk", interrupted)
    assert main(["walk"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "kvspec: interrupted\n" and captured.out == ""


def test_an_interrupt_wrapped_by_ctypes_is_an_interrupt(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """z3's ctypes calls turn a KeyboardInterrupt into ``ArgumentError``."""
    import ctypes

    import kvspec.spec.prove as prove

    def wrapped(*args: Any, **kwargs: Any) -> None:
        raise ctypes.ArgumentError("argument 1: KeyboardInterrupt: ")

    monkeypatch.setattr(prove, "prove_matrix", wrapped)
    assert main(["prove", "--policy", "pr13805", "--invariant", "INV-LEN"]) == 130
    assert capsys.readouterr().err == "kvspec: interrupted\n"
