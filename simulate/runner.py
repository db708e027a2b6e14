"""Run the reference executor over a workload once per policy, with the same arrivals and
seeds, and collect :mod:`kvspec.simulate.metrics` from the executor's and the managers' own
state."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvariantViolation, ProtocolError
from kvspec.policy import Policy, get_policy
from kvspec.reference import LlmRequest, RequestState
from kvspec.reference.executor import IterationResult, ReferenceExecutor

from .backends import BACKENDS, manager_factory
from .metrics import CostModel, IterationMetrics, PolicySummary, RequestMetrics, Stop, percentile
from .workload import PRESETS, Arrival, WorkloadSpec, read_trace

_CONTEXT = RequestState.CONTEXT_INIT
_GENERATION = RequestState.GENERATION_IN_PROGRESS


class AccountingError(InvariantViolation):
    """A manager's state is inconsistent after an iteration: a rank's GPU pages do not add
    up (held + reserved + free != total), or its ``check_integrity`` failed. A bug in a
    manager (or here), not bad input: ``kvspec simulate`` exits 1 on it."""


@dataclass(frozen=True)
class Workload:
    """The arrivals a simulation replays, with the per-request knobs the executor needs.

    Attributes:
        name: Label for reports and plot titles (a preset name or the trace's file name).
        arrivals: Requests in arrival order.
        chunk_size: Context chunk size (tokens per context iteration).
        draft_len: Draft tokens per generation step.
        description: One line naming the source and its parameters.
        settings: ``FIELD=VALUE`` of a generated workload's fields that differ from the
            preset of the same name (``num_requests`` aside); plot titles show them.
    """

    name: str
    arrivals: tuple[Arrival, ...]
    chunk_size: int
    draft_len: int = 0
    description: str = ""
    settings: tuple[str, ...] = ()

    @classmethod
    def generated(cls, spec: WorkloadSpec, seed: int) -> Workload:
        """The arrivals of ``spec`` drawn with ``seed``."""
        desc = (f"{spec.name}: {spec.num_requests} requests, {spec.arrival} arrivals at"
                f" {spec.rate:g}/s, prompt lognormal(median {spec.prompt_median:.0f},"
                f" sigma {spec.prompt_sigma:g}), output lognormal(median"
                f" {spec.output_median:.0f}, sigma {spec.output_sigma:g}), chunk"
                f" {spec.chunk_size}, draft {spec.draft_len}")
        base = PRESETS.get(spec.name)
        settings = () if base is None else tuple(
            f"{f.name}={_short(getattr(spec, f.name))}" for f in dataclasses.fields(spec)
            if f.name not in ("name", "num_requests")
            and getattr(spec, f.name) != getattr(base, f.name))
        return cls(spec.name, spec.generate(seed), spec.chunk_size, spec.draft_len, desc,
                   settings)

    @classmethod
    def from_trace(cls, path: str, chunk_size: int, draft_len: int = 0,
                   limit: int | None = None) -> Workload:
        """The requests of a CSV trace (:func:`workload.read_trace`)."""
        from pathlib import Path

        arrivals = read_trace(path, limit)
        return cls(Path(path).stem, arrivals, chunk_size, draft_len,
                   f"trace {Path(path).name}: {len(arrivals)} requests, chunk {chunk_size},"
                   f" draft {draft_len}")


@dataclass(frozen=True)
class PolicyRun:
    """One policy's run: totals, one row per iteration and one per request."""

    policy: str
    summary: PolicySummary
    iterations: tuple[IterationMetrics, ...]
    requests: tuple[RequestMetrics, ...]


@dataclass(frozen=True)
class SimulationResult:
    """Every policy's run over the same workload, config and seed."""

    workload: Workload
    config: Config
    ranks: int
    seed: int
    backend: str
    cost: CostModel
    runs: tuple[PolicyRun, ...]

    def title(self) -> str:
        """``<workload> [FIELD=VALUE...] (<n> req), <delay batching>, <G> pages x <B> tok,
        <H> host pages``: how plots and tables name the setup."""
        c = self.config
        if c.attention_dp:
            delay = f"ADP x{self.ranks}"
        elif c.batch_waiting_enabled:
            delay = (f"batch waiting {c.batch_wait_timeout_iters} it /"
                     f" {float(c.batch_wait_max_tokens_ratio):g}")
        else:
            delay = "no delay batching"
        w = self.workload
        name = " ".join((w.name, *w.settings))
        return (f"{name} ({len(w.arrivals)} req), {delay}, {c.num_gpu_pages} pages x"
                f" {c.tokens_per_block} tok, {c.num_host_pages} host pages")


@dataclass
class SimulationOptions:
    """How to run (not what): backend, cost model and stop rules.

    Attributes:
        backend: ``"reference"`` (CPU reference manager) or ``"torch"`` (the torch manager
            behind :class:`backends.TorchSlots`; ``device`` picks CPU or CUDA).
        cost: The iteration cost model.
        integrity_every: call each manager's ``check_integrity`` every N iterations (0 never;
            O(pages) each). Page accounting is checked on every iteration regardless.
        max_iterations: stop after this many iterations (None: no limit).
        stall_iterations: stop when this many iterations in a row forwarded nothing.
        enable_recompute_pause, adp_timeout_iters, adp_batching_wait_iters: the executor's.
        progress: called as progress(policy, requests_finished, requests) now and then.
    """

    backend: str = "reference"
    device: str = "cpu"
    cost: CostModel = field(default_factory=CostModel)
    integrity_every: int = 0
    max_iterations: int | None = None
    stall_iterations: int = 2000
    enable_recompute_pause: bool = True
    adp_timeout_iters: int = 50
    adp_batching_wait_iters: int = 10
    progress: Callable[[str, int, int], None] | None = None


def simulate(policies: Sequence[str | Policy], workload: Workload, config: Config, *,
             ranks: int = 1, seed: int = 0,
             options: SimulationOptions | None = None) -> SimulationResult:
    """Run ``workload`` under each policy (same arrivals, same executor seed) and measure.

    Policies are preset names (``kvspec.policy.PRESETS``, so a preset added later works with
    no change here) or :class:`Policy` values. Each run stops when every request finished,
    when the manager refuses an operation that would break an invariant (recorded in the
    summary's ``stop``: where TensorRT-LLM would assert), on a stall or at
    ``max_iterations``. Cost: O(iterations x live requests) manager calls per policy.
    Deterministic given ``seed`` (wall times aside).

    Raises:
        InvalidArgument: an unknown policy or backend, no policy, ``policies`` a bare string,
            a chunk above ``max_num_tokens``, a prompt above ``max_prompt_len``, a draft
            length above ``max_draft_len``, or a request that needs more pages than the pool.
        AccountingError: a rank's pages do not add up or its ``check_integrity`` failed (a
            bug in a manager or here).
    """
    opts = options or SimulationOptions()
    if isinstance(policies, str):
        raise InvalidArgument(
            f"simulate: policies={policies!r} is a string; pass a list of preset names or"
            f" Policy values, e.g. [{policies!r}]")
    if not policies:
        raise InvalidArgument("simulate: give at least one policy")
    pols = [get_policy(p) if isinstance(p, str) else p for p in policies]
    if opts.backend not in BACKENDS:
        raise InvalidArgument(
            f"simulate: backend={opts.backend!r}; expected one of {', '.join(BACKENDS)}")
    _validate(workload, config, ranks)
    most = max((config.blocks(a.prompt_tokens + a.output_tokens + workload.draft_len)
                for a in workload.arrivals), default=1)
    factory = manager_factory(opts.backend, max_pages_per_request=most, device=opts.device)
    runs = tuple(_run(p, workload, config, ranks, seed, opts, factory) for p in pols)
    return SimulationResult(workload, config, ranks, seed, opts.backend, opts.cost, runs)


def _validate(workload: Workload, config: Config, ranks: int) -> None:
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise InvalidArgument(f"simulate: ranks={ranks!r} must be an integer >= 1")
    if ranks > 1 and not config.attention_dp:
        raise InvalidArgument(f"simulate: ranks={ranks} needs attention DP (Config."
                              "attention_dp=True); use ranks=1 without it")
    if workload.chunk_size > config.max_num_tokens:
        raise InvalidArgument(
            f"simulate: workload {workload.name!r} chunk_size={workload.chunk_size} exceeds"
            f" max_num_tokens={config.max_num_tokens}; no chunk could be scheduled")
    if not workload.arrivals:
        raise InvalidArgument(f"simulate: workload {workload.name!r} has no requests")
    if workload.draft_len > config.max_draft_len:
        raise InvalidArgument(
            f"simulate: workload {workload.name!r} draft_len={workload.draft_len} exceeds"
            f" Config.max_draft_len={config.max_draft_len}; raise max_draft_len or lower the"
            " draft length")
    for i, a in enumerate(workload.arrivals):
        if a.prompt_tokens > config.max_prompt_len:
            raise InvalidArgument(
                f"simulate: request {i} of workload {workload.name!r} has a prompt of"
                f" {a.prompt_tokens} tokens, above Config.max_prompt_len="
                f"{config.max_prompt_len}; raise max_prompt_len or clip the prompts")
        need = config.blocks(a.prompt_tokens + a.output_tokens + workload.draft_len)
        if need > config.num_gpu_pages:
            raise InvalidArgument(
                f"simulate: request {i} of workload {workload.name!r} (prompt"
                f" {a.prompt_tokens} + output {a.output_tokens} tokens) needs {need} pages;"
                f" the pool has {config.num_gpu_pages} per rank: raise the pool or clip the"
                " lengths")


class _Tracker:
    """Per-request timestamps of one run."""

    __slots__ = ("arrival_iter", "done_iter", "done_s", "first_iter", "first_s", "rank")

    def __init__(self, arrival_iter: int, rank: int) -> None:
        self.arrival_iter = arrival_iter
        self.rank = rank
        self.first_iter: int | None = None
        self.first_s: float | None = None
        self.done_iter: int | None = None
        self.done_s: float | None = None


def _run(policy: Policy, workload: Workload, config: Config, ranks: int, seed: int,
         opts: SimulationOptions, factory: Callable[[Config, Policy], Any]) -> PolicyRun:
    started = time.perf_counter()
    ex = ReferenceExecutor(config, policy, num_ranks=ranks, seed=seed,
                           enable_recompute_pause=opts.enable_recompute_pause,
                           adp_timeout_iters=opts.adp_timeout_iters,
                           adp_batching_wait_iters=opts.adp_batching_wait_iters,
                           manager_factory=factory)
    managers: tuple[Any, ...] = ex.managers
    arrivals = workload.arrivals
    chunk, draft = workload.chunk_size, workload.draft_len
    reqs: list[LlmRequest] = []
    track: list[_Tracker] = []
    rows: list[IterationMetrics] = []
    cost = opts.cost
    total = config.num_gpu_pages
    clock = 0.0
    k = 0
    n = len(arrivals)
    finished = 0
    idle_streak = 0
    stop: Stop | None = None
    while True:
        while k < n and arrivals[k].arrival_s <= clock:
            a = arrivals[k]
            # the context iteration makes the first token, generation steps the others (an
            # output of 1 token finishes with its context: max_new_tokens 0)
            q = LlmRequest(k, prompt_len=a.prompt_tokens, context_chunk_size=chunk,
                           draft_len=draft, max_new_tokens=a.output_tokens - 1)
            reqs.append(q)
            track.append(_Tracker(ex.iteration + 1, ex.add_request(q)))
            k += 1
        if not ex.num_unfinished():
            if k == n:
                break
            clock = arrivals[k].arrival_s
            continue
        if opts.max_iterations is not None and ex.iteration >= opts.max_iterations:
            stop = Stop("max_iterations", ex.iteration,
                        f"stopped at max_iterations={opts.max_iterations} with"
                        f" {n - finished} request(s) unfinished")
            break
        try:
            results = ex.step()
        except InvariantViolation as exc:
            stop = Stop("invariant", ex.iteration, str(exc), exc.invariant_id)
            break
        except ProtocolError as exc:
            stop = Stop("protocol", ex.iteration, str(exc))
            break
        it = ex.iteration
        # ---- what the iteration did
        ctx_tokens = gen_tokens = batch = waited = skipped = 0
        suspends = pauses = evictions = 0
        busiest = 0
        done_now: list[int] = []
        for r in results:
            rank_tokens = 0
            acc = dict(r.accepted)
            for rid in r.forwarded:
                q = reqs[rid]
                if rid in acc:
                    gen_tokens += 1 + acc[rid]
                    rank_tokens += 1 + q.draft_len
                else:
                    pos = q.context_current_position
                    c = pos - chunk * ((pos - 1) // chunk)
                    ctx_tokens += c
                    rank_tokens += c
                    if q.state is _GENERATION and track[rid].first_iter is None:
                        done_now.append(rid)
            batch += len(r.forwarded)
            busiest = max(busiest, rank_tokens)
            suspends += len(r.suspended)
            pauses += len(r.recompute_paused)
            evictions += len(r.evicted)
            waited += r.waited
            skipped += not r.can_queue and bool(r.scheduled)
        clock += cost.seconds(busiest)
        for rid in done_now:
            t = track[rid]
            t.first_iter, t.first_s = it, clock
            if arrivals[rid].output_tokens == 1:    # its only token
                t.done_iter, t.done_s = it, clock
                finished += 1
        live = not_started = 0
        for r in results:
            for rid in r.finished:
                t = track[rid]
                if t.done_iter is None:
                    t.done_iter, t.done_s = it, clock
                    finished += 1
            running = ex.live_requests(r.rank)
            live += len(running)
            not_started += sum(1 for q in running
                               if q.state is _CONTEXT and not q.context_current_position)
        unadmitted = ex.num_unfinished() - live - sum(len(r.finished) for r in results)
        # ---- pages, per rank, from the managers' own state
        idle_set = idle_requests(results, reqs)
        idle = unwritten = active = free = host = evictable = self_ev = refusals = 0
        for rank, mgr in enumerate(managers):
            held = r_idle = 0
            for rid, gpu, _h, past in mgr.cache_pages():
                held += gpu
                if rid in idle_set:
                    r_idle += gpu
                    unwritten += min(gpu, past)
            r_free = mgr.num_free_gpu_pages
            if held + r_free != total:
                raise AccountingError(
                    "PAGE-ACCOUNTING",
                    f"iteration {it} rank {rank} under policy {policy.name!r}: caches hold"
                    f" {held} GPU pages and {r_free} are free, not {total}; a manager lost or"
                    " double-counted a page")
            idle += r_idle
            active += held - r_idle
            free += r_free
            host += config.num_host_pages - mgr.num_free_host_pages if policy.host_tier else 0
            evictable += mgr.num_evictable_gpu_pages
            s, rf = mgr.counters.take()
            self_ev += s
            refusals += rf
            if opts.integrity_every and it % opts.integrity_every == 0:
                try:
                    mgr.check_integrity()
                except InvariantViolation as exc:
                    raise AccountingError(
                        exc.invariant_id, f"iteration {it} rank {rank} under policy"
                        f" {policy.name!r}: check_integrity failed: {exc}") from exc
        rows.append(IterationMetrics(
            it, round(clock, 9), idle, unwritten, active, evictable, free, host, ctx_tokens,
            gen_tokens, batch, waited, skipped, suspends, self_ev, refusals, pauses, evictions,
            unadmitted + not_started, unadmitted, live))
        idle_streak = 0 if batch else idle_streak + 1
        if idle_streak >= opts.stall_iterations:
            stop = Stop("stalled", it, f"{idle_streak} iterations in a row forwarded nothing"
                        f" with {n - finished} request(s) unfinished; the pool or the"
                        " budgets cannot fit the queued work")
            break
        if opts.progress is not None and it % 64 == 0:
            opts.progress(policy.name, finished, n)
    if opts.progress is not None:
        opts.progress(policy.name, finished, n)
    return _finish(policy, workload, reqs, track, rows, clock, time.perf_counter() - started,
                   stop)


def idle_requests(results: Sequence[IterationResult], reqs: Sequence[LlmRequest]) -> set[int]:
    """Ids of the context requests whose pages hold no running work after this iteration:
    those a rank deferred (batch waiting, ADP balance: ``dropped``), and the context requests
    of a rank that scheduled work but was skipped (``can_queue`` false) without deferring.
    O(scheduled requests)."""
    out: set[int] = set()
    for r in results:
        if r.waited:
            out.update(r.dropped)
        elif not r.can_queue:
            out.update(x for x in r.scheduled if reqs[x].state is _CONTEXT)
    return out


def _short(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _finish(policy: Policy, workload: Workload, reqs: list[LlmRequest],
            track: list[_Tracker], rows: list[IterationMetrics], clock: float, wall: float,
            stop: Stop | None) -> PolicyRun:
    per_req = []
    for q, t in zip(reqs, track, strict=True):
        a = workload.arrivals[q.request_id]
        per_req.append(RequestMetrics(
            q.request_id, a.arrival_s, a.prompt_tokens, a.output_tokens, t.rank,
            t.arrival_iter,
            None if t.first_iter is None else t.first_iter - t.arrival_iter + 1,
            None if t.first_s is None else round(t.first_s - a.arrival_s, 9),
            None if t.done_iter is None else t.done_iter - t.arrival_iter + 1,
            None if t.done_s is None else round(t.done_s - a.arrival_s, 9)))
    ttft_s = [m.ttft_s for m in per_req if m.ttft_s is not None]
    ttft_i = [m.ttft_iterations for m in per_req if m.ttft_iterations is not None]
    comp_s = [m.completion_s for m in per_req if m.completion_s is not None]
    out_tokens = sum(m.output_tokens for m in per_req if m.completion_s is not None)
    prev = 0.0
    idle_s = 0.0
    for r in rows:
        idle_s += r.idle_pages * (r.time_s - prev)
        prev = r.time_s
    suspends = sum(r.suspends for r in rows)
    pauses = sum(r.recompute_pauses for r in rows)

    def p(values: list[float], q: float) -> float | None:
        v = percentile(values, q)
        return None if v is None else round(float(v), 6)

    def pi(values: list[int], q: float) -> int | None:
        v = percentile(values, q)
        return None if v is None else int(v)

    summary = PolicySummary(
        policy=policy.name, iterations=len(rows), sim_seconds=round(clock, 6),
        requests=len(workload.arrivals), finished=len(comp_s),
        idle_page_iterations=sum(r.idle_pages for r in rows),
        idle_page_seconds=round(idle_s, 6),
        peak_idle_pages=max((r.idle_pages for r in rows), default=0),
        idle_unwritten_page_iterations=sum(r.idle_unwritten_pages for r in rows),
        peak_idle_unwritten_pages=max((r.idle_unwritten_pages for r in rows), default=0),
        peak_queue_len=max((r.queue_len for r in rows), default=0),
        min_free_pages=min((r.free_pages for r in rows), default=0),
        ttft_p50_s=p(ttft_s, 50), ttft_p99_s=p(ttft_s, 99),
        ttft_p50_iterations=pi(ttft_i, 50), ttft_p99_iterations=pi(ttft_i, 99),
        completion_p50_s=p(comp_s, 50), completion_p99_s=p(comp_s, 99),
        throughput_tokens_s=round(out_tokens / clock, 3) if clock > 0 else 0.0,
        preemptions=suspends + pauses, suspends=suspends,
        self_evictions=sum(r.self_evictions for r in rows),
        resume_refusals=sum(r.resume_refusals for r in rows), recompute_pauses=pauses,
        evictions=sum(r.evictions for r in rows), wall_seconds=round(wall, 3), stop=stop)
    return PolicyRun(policy.name, summary, tuple(rows), tuple(per_req))
