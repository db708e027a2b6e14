"""What a simulation measures: per iteration, per request and per policy, plus the iteration
cost model that turns iterations into seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    """Seconds one iteration takes: ``fixed_ms + per_token_us * batch_tokens / 1000``, in ms.

    ``batch_tokens`` is what the forward processes on the busiest rank: the forwarded context
    chunk tokens plus ``1 + draft_len`` per forwarded generation request (attention-DP ranks
    run in lock step, so the slowest rank sets the pace). An iteration that forwards nothing
    (every rank waiting or skipped) costs ``fixed_ms``. Linear, as a roofline in the
    compute-bound regime; the defaults (10 ms + 50 us per token: 20,000 tokens/s of prefill
    per rank) are illustrative, not measured. Set them from a profile of your model and GPU.
    """

    fixed_ms: float = 10.0
    per_token_us: float = 50.0

    def seconds(self, batch_tokens: int) -> float:
        """The iteration's duration for ``batch_tokens`` tokens. O(1)."""
        return (self.fixed_ms + self.per_token_us * batch_tokens / 1000.0) / 1000.0


@dataclass(frozen=True, slots=True)
class IterationMetrics:
    """One iteration, summed over the ranks (pages: GPU pages after the iteration's reverts
    and forward; ``idle + active + free == total`` is checked on every iteration).

    Attributes:
        iteration: 1-based iteration number.
        time_s: simulated clock at the end of the iteration (cost model).
        idle_pages: GPU pages held by context requests that were deferred (batch waiting, ADP
            balance) or skipped (``can_queue`` false) in this iteration, after the policy's
            reverts: pages that hold no running work.
        idle_unwritten_pages: of ``idle_pages``, those past the request's history: allocated
            for a chunk that did not run (what PR 13805's revert gives back).
        active_pages: the other held GPU pages (running requests, and suspended caches'
            GPU pages). evictable_pages: GPU pages of SUSPENDED caches (counted in idle or
            active; a deferred context request reverted by the SHRINK branch is suspended).
        free_pages: free GPU pages. host_pages: host-tier pages in use.
        ctx_tokens: context tokens forwarded (admitted). gen_tokens: tokens generated
            (accepted drafts included). batch_size: requests forwarded.
        waited_ranks: ranks that deferred their context requests. skipped_ranks: ranks that
            scheduled requests but whose ``can_queue`` was false.
        suspends: suspensions (victims and self-evictions). self_evictions: of them, requests
            suspended for their own growth. resume_refusals: resumes the gate refused.
        recompute_pauses: victims whose cache was freed (they replay their prompt).
        evictions: requests with pages demoted to the host (reference backend only).
        queue_len: requests arrived that wait for their first chunk: not yet admitted to
            the executor, or admitted with no prompt token forwarded yet (position 0: never
            scheduled, deferred, or recompute-paused and rewound). unadmitted: of them, those
            not admitted (beyond ``Config.num_requests`` live per rank). live: requests
            admitted and unfinished (the admitted part of ``queue_len`` included).
    """

    iteration: int
    time_s: float
    idle_pages: int
    idle_unwritten_pages: int
    active_pages: int
    evictable_pages: int
    free_pages: int
    host_pages: int
    ctx_tokens: int
    gen_tokens: int
    batch_size: int
    waited_ranks: int
    skipped_ranks: int
    suspends: int
    self_evictions: int
    resume_refusals: int
    recompute_pauses: int
    evictions: int
    queue_len: int
    unadmitted: int
    live: int


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """One request: sizes, rank, and its time to first token (TTFT) and to completion.

    Iterations count from the first iteration that could admit it (its arrival iteration,
    counted as 1); seconds from its arrival time. The first token is produced by the
    iteration that forwards the prompt's last chunk. None: not reached when the run ended.
    """

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    rank: int
    arrival_iteration: int
    ttft_iterations: int | None
    ttft_s: float | None
    completion_iterations: int | None
    completion_s: float | None


@dataclass(frozen=True)
class Stop:
    """Why a run stopped before every request finished.

    kind: ``"invariant"`` (the manager refused an operation that would break ``invariant``,
    where TensorRT-LLM asserts), ``"protocol"`` (a protocol error), ``"stalled"`` (no
    iteration forwarded anything for ``stall_iterations``) or ``"max_iterations"``.
    """

    kind: str
    iteration: int
    message: str
    invariant: str | None = None


@dataclass(frozen=True)
class PolicySummary:
    """Per-policy totals (the terminal table's columns, and more).

    ``idle_page_iterations`` is the sum of ``idle_pages`` over iterations;
    ``idle_page_seconds`` weighs each iteration by its duration. Throughput: output tokens
    per simulated second (finished requests). Preemptions: suspensions plus recompute pauses.
    ``peak_queue_len``: the most requests waiting for their first chunk at the end of an
    iteration (:class:`IterationMetrics`). Percentiles (nearest rank) are over the requests
    that reached the event (first token, completion); None when none did.
    """

    policy: str
    iterations: int
    sim_seconds: float
    requests: int
    finished: int
    idle_page_iterations: int
    idle_page_seconds: float
    peak_idle_pages: int
    idle_unwritten_page_iterations: int
    peak_idle_unwritten_pages: int
    peak_queue_len: int
    min_free_pages: int
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    ttft_p50_iterations: int | None
    ttft_p99_iterations: int | None
    completion_p50_s: float | None
    completion_p99_s: float | None
    throughput_tokens_s: float
    preemptions: int
    suspends: int
    self_evictions: int
    resume_refusals: int
    recompute_pauses: int
    evictions: int
    wall_seconds: float
    stop: Stop | None


def percentile(values: list[float] | list[int], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty. O(n log n)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-len(s) * q // 100) - 1))
    return s[int(k)]
