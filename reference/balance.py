"""Delay-batching decisions of TensorRT-LLM's PyExecutor (section 3 of the semantics note):
batch waiting and attention-DP balancing. Pure functions of gathered counts and counters, so
every rank that runs them on the same all-gathered data reaches the same decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class RankLoad:
    """One rank's entry of the ADP all-gather: (num ctx, num gen, tokens, num real gen)."""

    num_ctx: int
    num_gen: int
    num_tokens: int
    num_real_gen: int


@dataclass(frozen=True)
class AdpCounters:
    """``adp_ctx_waiting_iters_count`` and ``adp_ctx_batching_wait_iters_count``."""

    waiting: int = 0
    batching: int = 0


def adp_balance(loads: Sequence[RankLoad], counters: AdpCounters, max_batch_size: int,
                timeout_iters: int, batching_wait_iters: int) -> tuple[bool, AdpCounters]:
    """Models TRT ``_balance_adp_requests``: whether every rank defers its context requests.

    With F = every rank has num_gen < max_batch_size, C = every rank has a context request,
    G = every rank has a generation request: if F and C, wait up to ``batching_wait_iters``
    iterations while G holds; otherwise wait until ``timeout_iters`` or while G holds.
    O(ranks).

    Returns:
        (wait, counters after this iteration).
    """
    f = all(x.num_gen < max_batch_size for x in loads)
    c = all(x.num_ctx > 0 for x in loads)
    g = all(x.num_gen > 0 for x in loads)
    if f and c:
        if g and counters.batching < batching_wait_iters:
            return True, AdpCounters(0, counters.batching + 1)
        return False, AdpCounters(0, 0 if g else counters.batching)
    waiting = counters.waiting + 1
    if waiting >= timeout_iters or not g:
        return False, AdpCounters(0, counters.batching)
    return True, AdpCounters(waiting, counters.batching)


def batch_wait(ctx_tokens: int, gen_tokens: int, has_ctx: bool, has_gen: bool,
               iters_count: int, timeout_iters: int, max_tokens_ratio: Fraction,
               max_num_tokens: int) -> bool:
    """Models TRT ``_waiting_requests``: defer context requests while the batch is small.

    Applies only when the scheduled batch has both context and generation requests; waits
    iff ``iters_count < timeout_iters`` and the batch's tokens are below
    ``max_tokens_ratio * max_num_tokens``. O(1).
    """
    if not (has_ctx and has_gen):
        return False
    return (iters_count < timeout_iters
            and ctx_tokens + gen_tokens < max_tokens_ratio * max_num_tokens)
