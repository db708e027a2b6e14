"""Every bad input is a typed error: exit 2 and ONE line on stderr, ``kvspec: error: ...``,
reported before any long work starts (issue 8, "Bad input still ends in raw tracebacks" and
item 4). The work functions are replaced by tripwires, so a case that reached them fails."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvspec.cli import main
from kvspec.config import Config
from kvspec.policy import get_policy

PKG = "kvspec_cli_fixture"
"""Prefix of the fixture modules' names (unique, so no clash with installed modules)."""

MODULES = {
    "syntax": "def make(config, policy:\n    pass\n",
    "raises_at_import": "raise RuntimeError('boom at import')\n",
    "exits_at_import": "import sys\nsys.exit(3)\n",
    "missing_dep": "import kvspec_no_such_dependency_xyz\n\ndef make(config, policy):\n    pass\n",
    "factories": (
        "def raises(config, policy):\n    raise RuntimeError('no GPU today')\n\n"
        "def one_arg(config):\n    pass\n\n"
        "def three_args(config, policy, device):\n    pass\n\n"
        "def lacks_api(config, policy):\n    return object()\n\n"
        "NOT_CALLABLE = 3\n"),
}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("cli_errors")
    for name, text in MODULES.items():
        (d / f"{PKG}_{name}.py").write_text(text)
    (d / "a_file").write_text("not a folder\n")
    (d / "a_folder").mkdir()
    _write_traces(d)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    for mod in [m for m in sys.modules if m.startswith(PKG)]:
        del sys.modules[mod]


def _write_traces(d: Path) -> None:
    from kvspec.spec.trace import Trace

    good = Trace(get_policy("pr13805"), Config(), ()).to_jsonl()
    header = json.loads(good.splitlines()[0])
    (d / "empty.jsonl").write_text(good)
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81garbage\x00\n\x9c")
    (d / "array_header.jsonl").write_text("[1, 2, 3]\n")
    (d / "no_policy.jsonl").write_text(
        json.dumps({k: v for k, v in header.items() if k != "policy"}) + "\n")
    bad_number = dict(header, config=dict(header["config"], num_gpu_pages="four"))
    (d / "string_number.jsonl").write_text(json.dumps(bad_number) + "\n")


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be rejected before the long work: the work functions must not run."""
    import kvspec.conformance.check as check
    import kvspec.conformance.exhaustive as exhaustive
    import kvspec.spec.prove as prove
    import kvspec.spec.walker as walker

    def tripped(*args: object, **kwargs: object) -> None:
        raise AssertionError("the long work started before the bad input was rejected")

    monkeypatch.setattr(prove, "prove_matrix", tripped)
    monkeypatch.setattr(walker, "walk", tripped)
    monkeypatch.setattr(check, "run_check", tripped)
    monkeypatch.setattr(check, "run_checks", tripped)
    monkeypatch.setattr(exhaustive, "explore", tripped)


M = PKG + "_"
CASES: list[tuple[str, list[str], str]] = [
    # --impl: modules and factories (check, explore and replay share the resolution)
    ("impl-not-module-factory", ["check", "--impl", "nocolon"],
     r"not of the form 'module:factory'"),
    ("impl-module-not-found", ["check", "--impl", f"{M}nosuch:make"], r"does not import"),
    ("impl-syntax-error", ["check", "--impl", f"{M}syntax:make"],
     r"failed to import: SyntaxError"),
    ("impl-raises-at-import", ["check", "--impl", f"{M}raises_at_import:make"],
     r"failed to import: RuntimeError: boom at import"),
    ("impl-exits-at-import", ["explore", "--impl", f"{M}exits_at_import:make"],
     r"failed to import: SystemExit"),
    ("impl-missing-dependency", ["check", "--impl", f"{M}missing_dep:make"],
     r"failed to import: its dependency 'kvspec_no_such_dependency_xyz' is missing"),
    ("impl-no-attribute", ["check", "--impl", f"{M}factories:nope"], r"has no attribute 'nope'"),
    ("impl-not-callable", ["check", "--impl", f"{M}factories:NOT_CALLABLE"], r"not a callable"),
    ("factory-raises", ["check", "--impl", f"{M}factories:raises"],
     r"factory \S+:raises raised RuntimeError: no GPU today"),
    ("factory-raises-explore", ["explore", "--impl", f"{M}factories:raises"],
     r"factory \S+:raises raised RuntimeError: no GPU today"),
    ("factory-raises-replay", ["replay", "{d}/empty.jsonl", "--impl", f"{M}factories:raises"],
     r"factory \S+:raises raised RuntimeError: no GPU today"),
    ("impl-syntax-error-replay", ["replay", "{d}/empty.jsonl", "--impl", f"{M}syntax:make"],
     r"failed to import: SyntaxError"),
    ("factory-one-arg", ["check", "--impl", f"{M}factories:one_arg"],
     r"signature \(config\).*expected factory\(config, policy\)"),
    ("factory-three-args", ["explore", "--impl", f"{M}factories:three_args"],
     r"signature \(config, policy, device\).*expected factory\(config, policy\)"),
    ("factory-lacks-api", ["check", "--impl", f"{M}factories:lacks_api"],
     r"returned object, which lacks"),
    # traces
    ("trace-missing", ["replay", "{d}/no_such.jsonl"], r"does not exist"),
    ("trace-is-folder", ["replay", "{d}/a_folder"], r"is a folder"),
    ("trace-binary", ["replay", "{d}/binary.jsonl"], r"trace"),
    ("trace-header-array", ["replay", "{d}/array_header.jsonl"], r"trace"),
    ("trace-header-no-policy", ["replay", "{d}/no_policy.jsonl"], r"policy"),
    ("trace-string-for-number", ["replay", "{d}/string_number.jsonl"], r"num_gpu_pages"),
    ("replay-strict-without-impl", ["replay", "{d}/empty.jsonl", "--strict"],
     r"replay: --strict applies to the implementation replay; give --impl"),
    # export folders, checked before the work
    ("prove-export-is-file", ["prove", "--export", "{d}/a_file"], r"--export .* is a file"),
    ("prove-export-under-file", ["prove", "--export", "{d}/a_file/sub"],
     r"--export .*cannot write there"),
    ("walk-export-under-file", ["walk", "--export", "{d}/a_file/sub"],
     r"--export .*cannot write there"),
    ("check-export-under-file", ["check", "--impl", "kvspec.conformance.impls:reference",
                                 "--export", "{d}/a_file/sub"], r"--export .*cannot write there"),
    ("check-hypothesis-dir-is-file", ["check", "--impl", "kvspec.conformance.impls:reference",
                                      "--hypothesis-dir", "{d}/a_file"],
     r"--hypothesis-dir .* is a file"),
    # names and numbers
    ("unknown-policy", ["walk", "--policy", "nope"],
     r"walk: argument --policy: unknown policy 'nope'; known presets: pr13805, "),
    ("unknown-invariant", ["prove", "--invariant", "NOPE"],
     r"unknown invariant 'NOPE'; known: INV-"),
    ("steps-zero", ["walk", "--steps", "0"], r"walk: argument --steps: 0 must be >= 1"),
    ("steps-not-int", ["walk", "--steps", "many"], r"'many' is not an integer"),
    ("seed-not-int", ["check", "--impl", "x:y", "--seed", "1.5"], r"'1.5' is not an integer"),
    ("timeout-zero", ["prove", "--timeout", "0"], r"prove: argument --timeout: .*> 0"),
    ("timeout-not-number", ["prove", "--timeout", "soon"], r"'soon' is not a number"),
    ("bmc2-depth-zero", ["prove", "--bmc2-depth", "0"], r"argument --bmc2-depth"),
    ("explore-too-many-requests", ["explore", "--requests", "3"],
     r"explore: argument --requests: .*use 'kvspec check'"),
    ("explore-too-many-pages", ["explore", "--gpu-pages", "9"], r"use 'kvspec check'"),
    # argparse's own errors, with the one prefix and the subcommand's name
    ("unknown-option-of-subcommand", ["prove", "--polcy", "pr13805"],
     r"prove: unrecognized arguments: --polcy pr13805 \(did you mean --policy\?\); "
     r"see 'kvspec prove --help'"),
    ("unknown-top-level-option", ["--bogus", "walk"], r"unrecognized arguments: --bogus; "
     r"see 'kvspec --help'"),
    ("unknown-command", ["prov"], r"invalid choice: 'prov'"),
    ("missing-required", ["check"], r"check: the following arguments are required: --impl"),
    ("bad-choice", ["replay", "{d}/empty.jsonl", "--render", "pdf"],
     r"replay: argument --render: invalid choice"),
]


@pytest.mark.parametrize(("argv", "first_line"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(argv: list[str], first_line: str, fixture_dir: Path,
                                         tripwires: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([a.replace("{d}", str(fixture_dir)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kvspec: error: "), err
    assert re.search(first_line, lines[0]), lines[0]
    assert "Traceback" not in err


def test_a_manager_that_raises_mid_run_is_a_divergence_not_bad_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / f"{PKG}_midrun.py").write_text(
        "from kvspec.reference import ReferenceKVCacheManager\n\n"
        "class Boom(ReferenceKVCacheManager):\n"
        "    def resize_context(self, req, num_tokens):\n"
        "        raise RuntimeError('resize exploded')\n\n"
        "def make(config, policy):\n"
        "    return Boom(config, policy)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["check", "--impl", f"{PKG}_midrun:make", "--examples", "2", "--export",
               str(tmp_path / "out")])
    out = capsys.readouterr().out
    sys.modules.pop(f"{PKG}_midrun", None)
    assert rc == 1, out
    assert "RuntimeError" in out and "resize exploded" in out
