"""hypothesis's files (issue 8, item 9): ``run_check`` never writes into the current directory;
without ``hypothesis_dir`` there is no example database and hypothesis's own files go under
``$KVSPEC_CACHE_DIR``; with one the example database lives there and failures replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import configuration

from kvspec.config import Config
from kvspec.conformance import broken, impls
from kvspec.conformance.check import cache_dir, run_check
from kvspec.errors import InvalidArgument

_HOME_KEY = "__hypothesis_home_directory"

_SCRIPT = textwrap.dedent("""
    import json
    from hypothesis import configuration
    from kvspec.conformance.check import run_check
    before = vars(configuration)["__hypothesis_home_directory"]
    report = run_check("kvspec.conformance.impls:reference", "pr13805-reviewed", examples=5,
                       hypothesis_examples=3, seed=0)
    after = vars(configuration)["__hypothesis_home_directory"]
    print(json.dumps({"ok": report.ok, "runs": [t.runs for t in report.tiers],
                      "before": str(before), "after": str(after)}))
""")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}
    env.update(KVSPEC_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    return env


def test_check_writes_nothing_into_the_current_directory(tmp_path: Path) -> None:
    """A fresh process (hypothesis writes its constants cache once per process)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=cwd, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["runs"] == [5, 3]
    assert out["before"] == out["after"] == "None"  # the global is restored
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "cache" / "hypothesis").is_dir()
    assert not (tmp_path / "home").exists()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("KVSPEC_CACHE_DIR", str(tmp_path / "k"))
    assert cache_dir() == tmp_path / "k"
    monkeypatch.delenv("KVSPEC_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "kvspec"


def test_hypothesis_dir_holds_the_database_and_failures_replay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "hyp"
    before = vars(configuration)[_HOME_KEY]
    first = run_check(broken.shrink_below_snapshot, "pr13805-reviewed", examples=1, seed=0,
                      config=Config(), tiers=("hypothesis",), hypothesis_examples=60,
                      hypothesis_dir=db)
    assert vars(configuration)[_HOME_KEY] == before
    assert first.divergence is not None and first.hypothesis_dir == str(db)
    saved = [p for p in (db / "examples").rglob("*") if p.is_file()]
    assert saved, "the failing example is in the database"
    # another seed: the database's failing example is tried first
    again = run_check(broken.shrink_below_snapshot, "pr13805-reviewed", examples=1, seed=99,
                      config=Config(), tiers=("hypothesis",), hypothesis_examples=60,
                      hypothesis_dir=db)
    assert again.divergence is not None
    assert again.tiers[0].runs <= 2 < first.tiers[0].runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyp"]


def test_hypothesis_dir_is_validated_before_any_run(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        run_check(impls.reference, examples=1, hypothesis_dir=afile)
    with pytest.raises(InvalidArgument, match="hypothesis_dir"):
        run_check(impls.reference, examples=1, hypothesis_dir=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="not a directory"):
        run_check(impls.reference, examples=1, tiers=("walker",), hypothesis_dir=afile)
