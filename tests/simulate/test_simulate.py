"""kvspec.simulate: determinism, page accounting, hand-computed metrics, invariant stops, the
torch backend, the trace reader's errors, the output files and plots, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import time
from fractions import Fraction
from pathlib import Path

import pytest

import kvspec.simulate.runner as runner
from kvspec.cli import _simulate_workloads, main
from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvariantViolation
from kvspec.policy import get_policy
from kvspec.reference import LlmRequest, RequestState
from kvspec.reference.executor import IterationResult
from kvspec.simulate import (
    WORKLOADS,
    AccountingError,
    Arrival,
    SimulationOptions,
    Workload,
    get_workload,
    read_trace,
    simulate,
)
from kvspec.simulate.backends import ObservedReference
from kvspec.simulate.report import render_table, write_files

SMALL = Config(tokens_per_block=16, num_gpu_pages=256, num_host_pages=256, num_requests=16,
               max_num_tokens=512, max_batch_size=16, attention_dp=False,
               batch_wait_timeout_iters=4, batch_wait_max_tokens_ratio=Fraction(1, 2),
               max_prompt_len=1024)


def small_workload(seed: int = 1, n: int = 40) -> Workload:
    spec = get_workload("chat").replace(num_requests=n, rate=40.0, prompt_median=200.0,
                                        prompt_max=600, output_median=20.0, output_max=80,
                                        chunk_size=128)
    return Workload.generated(spec, seed)


def _strip(run: object) -> object:
    return dataclasses.replace(run.summary, wall_seconds=0.0)  # type: ignore[attr-defined]


def test_same_seed_same_result_and_same_arrivals_for_every_policy() -> None:
    w = small_workload()
    a = simulate(["pr14849", "pr13805-reviewed"], w, SMALL, seed=3)
    b = simulate(["pr14849", "pr13805-reviewed"], small_workload(), SMALL, seed=3)
    assert [_strip(r) for r in a.runs] == [_strip(r) for r in b.runs]
    assert [r.iterations for r in a.runs] == [r.iterations for r in b.runs]
    assert [r.requests for r in a.runs] == [r.requests for r in b.runs]
    assert small_workload(seed=2).arrivals != w.arrivals
    # the policies see the same arrivals; the deferred pages differ (the point of the tool)
    s14849, reviewed = (r.summary for r in a.runs)
    assert s14849.finished == reviewed.finished == 40
    assert s14849.idle_unwritten_page_iterations > 0 == reviewed.idle_unwritten_page_iterations


@pytest.mark.parametrize("ranks", [1, 2])
def test_page_accounting_holds_on_every_iteration(ranks: int) -> None:
    cfg = SMALL.replace(num_gpu_pages=96, attention_dp=ranks > 1)
    res = simulate(["pr14849", "pr13805-reviewed"], small_workload(n=30), cfg, ranks=ranks,
                   options=SimulationOptions(integrity_every=1))
    for run in res.runs:
        assert run.iterations
        for m in run.iterations:
            assert m.idle_pages + m.active_pages + m.free_pages == ranks * cfg.num_gpu_pages
            assert 0 <= m.idle_unwritten_pages <= m.idle_pages
            assert m.evictable_pages <= m.idle_pages + m.active_pages
        assert run.summary.finished == 30
    assert any(m.suspends or m.recompute_pauses for r in res.runs for m in r.iterations), \
        "the pool is meant to be tight enough to preempt"


HAND = Config(tokens_per_block=2, num_gpu_pages=8, num_host_pages=8, num_requests=2,
              max_num_tokens=64, max_batch_size=4, attention_dp=False, max_prompt_len=8)


def test_one_request_by_hand() -> None:
    # prompt 4 in one chunk of 4, 3 output tokens: the context iteration makes the first,
    # two generation steps the others; cost 10 ms + 50 us/token.
    res = simulate(["pr14849"], Workload("hand", (Arrival(0.0, 4, 3),), 4), HAND)
    rows = res.runs[0].iterations
    assert [(m.active_pages, m.free_pages, m.ctx_tokens, m.gen_tokens) for m in rows] == [
        (2, 6, 4, 0),     # capacity 4 -> 2 pages
        (3, 5, 0, 1),     # capacity 5 -> 3 pages
        (3, 5, 0, 1),     # capacity 6, finished
        (0, 8, 0, 0)]     # freed at the start of the next iteration
    assert [m.time_s for m in rows] == pytest.approx([0.0102, 0.02025, 0.0303, 0.0403])
    (req,) = res.runs[0].requests
    assert (req.ttft_iterations, req.completion_iterations) == (1, 3)
    assert req.ttft_s == pytest.approx(0.0102) and req.completion_s == pytest.approx(0.0303)
    s = res.runs[0].summary
    assert s.throughput_tokens_s == pytest.approx(3 / 0.0403, rel=1e-3)


def test_deferred_context_pages_by_hand() -> None:
    # A (prompt 2, 6 out) runs alone; B (prompt 4 = one chunk) arrives after iteration 2 and
    # batch waiting (2 iterations, while tokens < 32) defers it in iterations 3 and 4.
    # PR 14849 keeps B's chunk: 2 pages (4 tokens / 2 per page) idle, unwritten, for 2
    # iterations = 4 page-iterations; the reviewed PR 13805 reverts them: 0.
    cfg = HAND.replace(batch_wait_timeout_iters=2, batch_wait_max_tokens_ratio=Fraction(1, 2))
    w = Workload("hand", (Arrival(0.0, 2, 6), Arrival(0.015, 4, 2)), 4)
    res = simulate(["pr14849", "pr13805-reviewed"], w, cfg)
    keep, revert = res.runs
    assert [m.idle_pages for m in keep.iterations] == [0, 0, 2, 2, 0, 0, 0]
    assert [m.idle_unwritten_pages for m in keep.iterations] == [0, 0, 2, 2, 0, 0, 0]
    assert [m.waited_ranks for m in keep.iterations] == [0, 0, 1, 1, 0, 0, 0]
    # B is admitted at once (2 slots) but waits for its first chunk in iterations 3 and 4
    assert [m.queue_len for m in keep.iterations] == [0, 0, 1, 1, 0, 0, 0]
    assert {m.unadmitted for m in keep.iterations} == {0} and keep.summary.peak_queue_len == 1
    assert keep.summary.idle_page_iterations == 4 and keep.summary.peak_idle_pages == 2
    assert revert.summary.idle_page_iterations == 0
    b = keep.requests[1]
    assert (b.arrival_iteration, b.ttft_iterations) == (3, 3)   # first token in iteration 5
    assert b.ttft_s == pytest.approx(0.0505 - 0.015)
    assert revert.requests[1].ttft_s == b.ttft_s


def test_a_policy_that_breaks_an_invariant_stops_there_and_says_so() -> None:
    cfg = SMALL.replace(num_gpu_pages=4096, num_host_pages=0, max_prompt_len=8192)
    spec = get_workload("chat").replace(num_requests=20, rate=100.0, prompt_min=300,
                                        output_median=30.0, chunk_size=128)
    res = simulate(["pr13805", "pr13805-reviewed"], Workload.generated(spec, 0), cfg)
    broken, fine = res.runs
    assert broken.summary.stop is not None and broken.summary.stop.kind == "invariant"
    assert broken.summary.stop.invariant == "SWA-REWIND"
    assert broken.summary.finished < 20 and fine.summary.stop is None
    assert "pr13805: stopped at iteration" in render_table(res)
    assert "breaks SWA-REWIND" in render_table(res)


def test_torch_backend_matches_the_reference_without_pool_pressure() -> None:
    pytest.importorskip("torch")
    spec = get_workload("chat").replace(num_requests=8, rate=40.0, prompt_median=200.0,
                                        prompt_max=600, output_median=8.0, output_max=24,
                                        chunk_size=128)
    w = Workload.generated(spec, 1)
    cfg = SMALL.replace(num_gpu_pages=1024)
    # reserve-commit: the adapter's commit_context, and reserved pages counted as held
    policies = ["pr14849", "reserve-commit"]
    ref = simulate(policies, w, cfg)
    tor = simulate(policies, w, cfg, options=SimulationOptions(backend="torch"))
    for a, b in zip(ref.runs, tor.runs, strict=True):
        assert a.iterations == b.iterations
        assert _strip(a) == _strip(b)
    assert ref.runs[0].summary.idle_page_iterations > ref.runs[1].summary.idle_page_iterations


def test_bad_inputs_raise_before_running() -> None:
    w = small_workload(n=3)
    with pytest.raises(InvalidArgument, match="unknown policy 'nope'"):
        simulate(["nope"], w, SMALL)
    with pytest.raises(InvalidArgument, match="needs .* pages; the pool has 4"):
        simulate(["pr14849"], w, SMALL.replace(num_gpu_pages=4))
    with pytest.raises(InvalidArgument, match="chunk_size=128 exceeds max_num_tokens=64"):
        simulate(["pr14849"], w, SMALL.replace(max_num_tokens=64))
    with pytest.raises(InvalidArgument, match="backend='gpu'"):
        simulate(["pr14849"], w, SMALL, options=SimulationOptions(backend="gpu"))
    with pytest.raises(InvalidArgument, match="unknown workload field 'rte'"):
        get_workload("chat").with_settings({"rte": "3"})
    with pytest.raises(InvalidArgument, match="rate=-1.0 must be a finite number > 0"):
        get_workload("chat").with_settings({"rate": "-1"})
    assert tuple(WORKLOADS) == _simulate_workloads()


def test_bursty_arrivals_keep_the_mean_rate_and_vary_more() -> None:
    spec = get_workload("chat").replace(num_requests=2000, rate=10.0)
    poisson = spec.generate(0)
    bursty = spec.replace(arrival="bursty", burst_cv=3.0).generate(0)

    def gaps(arr: tuple[Arrival, ...]) -> list[float]:
        return [b.arrival_s - a.arrival_s for a, b in zip(arr, arr[1:])]

    def cv(xs: list[float]) -> float:
        m = sum(xs) / len(xs)
        return (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5 / m

    for arr in (poisson, bursty):
        assert sum(gaps(arr)) / len(gaps(arr)) == pytest.approx(0.1, rel=0.2)
    assert cv(gaps(poisson)) == pytest.approx(1.0, abs=0.15) and cv(gaps(bursty)) > 2.0


# ---- the trace reader ----------------------------------------------------------------------

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:47.0000000,879,15
"""


def test_trace_reader_accepts_the_azure_layout(tmp_path: Path) -> None:
    p = tmp_path / "azure.csv"
    p.write_text(AZURE)
    arr = read_trace(p)
    assert [(a.prompt_tokens, a.output_tokens) for a in arr] == [(374, 44), (879, 15),
                                                                  (396, 109)]
    assert arr[0].arrival_s == 0.0
    assert arr[1].arrival_s == pytest.approx(0.31941, abs=1e-5)
    assert arr[2].arrival_s == pytest.approx(4.314578, abs=1e-5)
    plain = tmp_path / "plain.csv"
    plain.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,2\n0.5,20,3\n")
    assert read_trace(plain, limit=1) == (Arrival(0.0, 10, 2),)


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"),
    ("a,b,c\n1,2,3\n", "line 1: header .* lacks the columns"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no request rows"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,2\n1,ten,2\n",
     "line 3: ContextTokens='ten' must be an integer >= 1"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,2\n\n5,10,0\n",
     "line 4: GeneratedTokens='0' must be an integer >= 1"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,2\n",
     "line 2: TIMESTAMP='yesterday' is not a time"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10\n", "line 2: 2 column"),
])
def test_trace_reader_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        read_trace(p)


# ---- outputs, plots and the CLI -----------------------------------------------------------

def test_files_and_plots_are_written_and_not_empty(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from kvspec.simulate.plots import PLOTS, write_plots

    res = simulate(["pr14849", "pr13805-reviewed"], small_workload(n=15), SMALL)
    files = write_files(res, tmp_path) + write_plots(res, tmp_path, dpi=30)
    assert {f.name for f in files} >= {f"{p}.png" for p in PLOTS} | {
        "summary.json", "summary.csv", "iterations-pr14849.csv", "requests-pr14849.csv"}
    for f in files:
        assert f.stat().st_size > 0, f
    for p in PLOTS:
        assert (tmp_path / f"{p}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["policies"]) == {"pr14849", "pr13805-reviewed"}
    rows = (tmp_path / "iterations-pr14849.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,time_s,idle_pages") and len(rows) == 1 + len(
        res.runs[0].iterations)


def test_cli_runs_and_reports_bad_input_in_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--requests", "10", "--gpu-pages", "512", "--set",
                 "prompt_max=2000", "--set", "output_max=50", "--policy", "pr14849",
                 "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policies"]["pr14849"]["finished"] == 10
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,2\n1,-5,2\n")
    assert main(["simulate", "--workload", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvspec: error: ") and "line 3" in err
    assert main(["simulate", "--set", "rate"]) == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err
    assert main(["simulate", "--ranks", "2", "--batch-wait-iters", "3"]) == 2
    assert "--batch-wait-iters applies without attention DP" in capsys.readouterr().err


# ---- review fixes: accounting, reservations, waiting work, output 1, API checks --------------

class _Leaky(ObservedReference):
    """A manager that loses one GPU page at its first prepare_context (taken from the pool,
    in no cache)."""

    def prepare_context(self, req: LlmRequest) -> bool:
        if not getattr(self, "_leaked", False):
            self._leaked = True
            self._gpu.allocate_n(1)
        return super().prepare_context(req)


def _second_rank_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []

    def factory(backend: str, **_: object) -> object:
        def make(config: Config, policy: object) -> ObservedReference:
            made.append(None)
            return (_Leaky if len(made) == 2 else ObservedReference)(config, policy)
        return make
    monkeypatch.setattr(runner, "manager_factory", factory)


def test_a_manager_that_leaks_a_page_raises_accounting_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _second_rank_leaks(monkeypatch)
    w = Workload("two", (Arrival(0.0, 4, 3), Arrival(0.0, 4, 3)), 4)
    with pytest.raises(AccountingError,
                       match="iteration 1 rank 1 under policy 'pr14849': caches hold 2 GPU"
                       " pages and 5 are free, not 8"):
        simulate(["pr14849"], w, HAND.replace(attention_dp=True), ranks=2)


def test_a_failed_check_integrity_is_an_accounting_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(ObservedReference):
        def check_integrity(self) -> None:
            raise InvariantViolation("INV-CONSERVE", "page 3 is free and held")

    monkeypatch.setattr(runner, "manager_factory", lambda backend, **_: Broken)
    w = Workload("one", (Arrival(0.0, 4, 3),), 4)
    with pytest.raises(AccountingError, match="iteration 2 rank 0 under policy 'pr14849':"
                       " check_integrity failed: INV-CONSERVE"):
        simulate(["pr14849"], w, HAND, options=SimulationOptions(integrity_every=2))


def test_cli_exits_1_on_an_accounting_error(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _second_rank_leaks(monkeypatch)
    assert main(["simulate", "--requests", "4", "--ranks", "2", "--gpu-pages", "512",
                 "--set", "prompt_max=2000", "--set", "output_max=20", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manager accounting failure (AccountingError)" in err
    assert "rank 1" in err


def _result(rank: int, *, scheduled: tuple[int, ...], dropped: tuple[int, ...] = (),
            can_queue: bool, waited: bool = False) -> IterationResult:
    return IterationResult(iteration=1, rank=rank, scheduled=scheduled, dropped=dropped,
                           reverted=(), can_queue=can_queue, forwarded=(), finished=(),
                           waited=waited)


def test_idle_requests_are_the_deferred_and_the_skipped_context_requests() -> None:
    reqs = [LlmRequest(i, prompt_len=4, context_chunk_size=4) for i in range(6)]
    reqs[2].state = RequestState.GENERATION_IN_PROGRESS
    results = (
        _result(0, scheduled=(0, 1), dropped=(0, 1), can_queue=False, waited=True),
        # skipped (another rank had nothing to run), not deferred: its context requests idle,
        # its generation request (2) not
        _result(1, scheduled=(3, 2), can_queue=False),
        _result(2, scheduled=(4,), can_queue=True),           # ran
        _result(3, scheduled=(), can_queue=False))
    assert runner.idle_requests(results, reqs) == {0, 1, 3}


def test_reserved_pages_are_held_and_idle_while_deferred() -> None:
    # reserve_context without the deferred revert: B's reservation outlives the iteration;
    # its 2 reserved pages are held (accounting adds up) and idle, unwritten, like pr14849's
    cfg = HAND.replace(batch_wait_timeout_iters=2, batch_wait_max_tokens_ratio=Fraction(1, 2))
    w = Workload("hand", (Arrival(0.0, 2, 6), Arrival(0.015, 4, 2)), 4)
    keep = get_policy("reserve-commit").replace(name="reserve-keep",
                                                revert_deferred_context=False)
    res = simulate([keep], w, cfg, options=SimulationOptions(integrity_every=1))
    (run,) = res.runs
    assert run.summary.stop is None and run.summary.finished == 2
    assert [m.idle_pages for m in run.iterations] == [0, 0, 2, 2, 0, 0, 0]
    assert [m.idle_unwritten_pages for m in run.iterations] == [0, 0, 2, 2, 0, 0, 0]


def test_waiting_work_counts_unadmitted_and_not_started_requests() -> None:
    # one slot: B is not admitted until A finishes (iteration 2), then starts in iteration 3
    w = Workload("hand", (Arrival(0.0, 4, 2), Arrival(0.0, 4, 3)), 4)
    (run,) = simulate(["pr14849"], w, HAND.replace(num_requests=1)).runs
    assert [(m.queue_len, m.unadmitted, m.live) for m in run.iterations][:3] == [
        (1, 1, 1), (1, 1, 0), (0, 0, 1)]


def test_an_output_of_one_token_completes_at_the_first_token() -> None:
    (run,) = simulate(["pr14849"], Workload("one", (Arrival(0.0, 4, 1),), 4), HAND).runs
    (req,) = run.requests
    assert req.ttft_iterations == req.completion_iterations == 1
    assert req.completion_s == req.ttft_s == pytest.approx(0.0102)
    assert run.summary.finished == 1
    # no generation step: the context iteration, then its pages freed at the next start
    assert [(m.active_pages, m.free_pages, m.ctx_tokens, m.gen_tokens, m.batch_size)
            for m in run.iterations] == [(2, 6, 4, 0, 1), (0, 8, 0, 0, 0)]


def test_api_refuses_a_bare_string_and_sizes_above_the_config() -> None:
    w = Workload("one", (Arrival(0.0, 4, 3),), 4)
    with pytest.raises(InvalidArgument, match="policies='pr14849' is a string"):
        simulate("pr14849", w, HAND)
    with pytest.raises(InvalidArgument, match="prompt of 9 tokens, above Config.max_prompt_len=8"):
        simulate(["pr14849"], Workload("big", (Arrival(0.0, 9, 1),), 4), HAND)
    with pytest.raises(InvalidArgument, match="draft_len=2 exceeds Config.max_draft_len=1"):
        simulate(["pr14849"], dataclasses.replace(w, draft_len=2), HAND)


def test_title_names_the_overrides_and_the_host_pages() -> None:
    res = simulate(["pr14849"], small_workload(n=3), SMALL)
    title = res.title()
    assert title.startswith("chat rate=40 prompt_median=200 prompt_max=600 output_median=20"
                            " output_max=80 chunk_size=128 (3 req)")
    assert title.endswith("256 host pages")
    with pytest.raises(TypeError):
        WORKLOADS["mine"] = get_workload("chat")


# ---- review fixes: the trace reader ---------------------------------------------------------

HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def test_trace_reader_turns_decode_and_csv_errors_into_invalid_argument(
        tmp_path: Path) -> None:
    p = tmp_path / "latin1.csv"
    p.write_bytes((HEAD + "0,10,2\n1,10,2,caf\xe9\n").encode("latin-1"))
    with pytest.raises(InvalidArgument, match=r"latin1.csv' line 3: not UTF-8 text"):
        read_trace(p)
    p = tmp_path / "long.csv"
    p.write_text(HEAD + "0,10,2\n1,10,2," + "x" * 200_000 + "\n")
    with pytest.raises(InvalidArgument, match=r"long.csv' line 3: not a valid CSV record"
                       r" \(field larger than field limit"):
        read_trace(p)
    p = tmp_path / "bom.csv"
    p.write_text(HEAD + "0,10,2\n", encoding="utf-8-sig")
    assert read_trace(p) == (Arrival(0.0, 10, 2),)


def test_trace_errors_name_file_lines_not_records(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text('arrival_s,prompt_tokens,output_tokens,note\n0,10,2,"two\nlines"\n'
                 '1,ten,2,x\n')
    with pytest.raises(InvalidArgument, match="line 4: prompt_tokens='ten'"):
        read_trace(p)
    p.write_text('arrival_s,prompt_tokens,output_tokens,note\n0,10,"2\nx",x\n')
    with pytest.raises(InvalidArgument, match="lines 2-3: output_tokens='2\\\\nx'"):
        read_trace(p)


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset (POSIX)")
def test_trace_date_times_are_utc_whatever_the_local_zone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # New York left daylight time at 02:00 on 2023-11-05: in local time these two are 2.5 h
    # apart, in UTC (and in the trace) 1.5 h
    p = tmp_path / "dst.csv"
    p.write_text(HEAD + "2023-11-05 01:30:00.0000000,10,2\n2023-11-05 03:00:00,10,2\n"
                 "2023-11-05 03:00:00+01:00,10,2\n")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        arr = read_trace(p)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert [a.arrival_s for a in arr] == [0.0, 3600.0 * 0.5, 3600.0 * 1.5]


def test_trace_time_format_is_fixed_by_the_first_row(tmp_path: Path) -> None:
    p = tmp_path / "mixed.csv"
    p.write_text(HEAD + "0,10,2\n2023-11-16 18:15:46,10,2\n")
    with pytest.raises(InvalidArgument, match="line 3: TIMESTAMP='2023-11-16 18:15:46' is a"
                       " date-time but the first row \\(line 2\\) gives seconds"):
        read_trace(p)
    p.write_text(HEAD + "2023-11-16 18:15:46,10,2\n\n5,10,2\n")
    with pytest.raises(InvalidArgument, match="line 4: TIMESTAMP='5' is a seconds but"):
        read_trace(p)


def test_a_skipped_rank_s_context_pages_are_idle_end_to_end() -> None:
    # Two ADP ranks; in iteration 4 one rank has a context chunk scheduled (not deferred) but
    # can_queue is false because the other rank has live requests and nothing to run: PR 14849
    # keeps the chunk's fresh page, idle and unwritten.
    cfg = Config(tokens_per_block=2, num_gpu_pages=6, num_host_pages=0, num_requests=2,
                 max_num_tokens=64, max_batch_size=4, attention_dp=True, max_prompt_len=8)
    w = Workload("skip", (Arrival(0.01, 2, 4), Arrival(0.01, 5, 3), Arrival(0.02, 8, 1),
                          Arrival(0.03, 2, 1)), 4)
    opts = SimulationOptions(adp_timeout_iters=2, adp_batching_wait_iters=1, integrity_every=1)
    (run,) = simulate(["pr14849"], w, cfg, ranks=2, options=opts).runs
    m = run.iterations[3]
    assert (m.iteration, m.skipped_ranks, m.waited_ranks, m.batch_size) == (4, 1, 0, 0)
    assert (m.idle_pages, m.idle_unwritten_pages) == (1, 1)
    assert run.summary.finished == 4
