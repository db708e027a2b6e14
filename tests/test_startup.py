"""Fast start-up (issue 8, item 8): the CLI module and the reference replay path import neither
torch nor z3 (nor hypothesis) until a command needs them. Checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("torch", "z3", "hypothesis")

_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys

    HEAVY = {heavy!r}

    def loaded():
        return sorted(m for m in HEAVY if m in sys.modules)

    out = {{}}
    import kvspec.cli
    out["import kvspec.cli"] = loaded()

    from kvspec.conformance.adapter import resolve_factory
    factory = resolve_factory("kvspec.conformance.impls:reference")
    resolve_factory("kvspec.conformance.impls:gpu")  # resolving is not calling
    out["resolve impls:reference"] = loaded()

    from kvspec.config import Config
    from kvspec.policy import get_policy
    from kvspec.spec.trace import Step, Trace, with_digests
    steps = (Step("arrive", 0, dict(prompt_len=1, chunk_size=1, draft_len=0)),
             Step("prepare_context", 0), Step("resize_context", 0),
             Step("decide", 0, dict(wait=False, can_queue=False)), Step("end_iteration", 0))
    trace = with_digests(Trace(get_policy("pr14849"), Config(), steps, source="startup"))
    trace.save({path!r})

    from kvspec.conformance.replay import replay_on_impl
    rep = replay_on_impl(Trace.load({path!r}), factory)
    out["replay_on_impl"] = loaded()
    out["same_violation"] = rep.same_violation

    with contextlib.redirect_stdout(io.StringIO()):
        rc = kvspec.cli.main(["replay", {path!r}, "--impl",
                              "kvspec.conformance.impls:reference"])
    out["kvspec replay"] = loaded()
    out["rc"] = rc
    print(json.dumps(out))
""")


def test_cli_and_reference_replay_import_no_torch_z3_or_hypothesis(tmp_path: Path) -> None:
    script = _SCRIPT.format(heavy=HEAVY, path=str(tmp_path / "five.jsonl"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same_violation"] is True and out["rc"] == 0
    for stage in ("import kvspec.cli", "resolve impls:reference", "replay_on_impl",
                  "kvspec replay"):
        assert out[stage] == [], f"{stage} imported {out[stage]}"


def test_gpu_factories_still_work_lazily() -> None:
    """In-process (torch is loaded by the GPU tests anyway): the lazily defined class."""
    from kvspec.config import Config
    from kvspec.conformance import impls
    from kvspec.policy import get_policy

    m = impls.gpu(Config(), get_policy("pr13805"))
    assert isinstance(m, impls.CheckedGpuManager)
    assert impls.CheckedGpuManager.__module__ == "kvspec.conformance.impls"
    gpu_free, host_free = m.free_page_ids()
    assert sorted(gpu_free) == [1, 2, 3, 4] and sorted(host_free) == [1, 2, 3, 4]
