"""Hand-written traces shared by the trace-loader and replay tests."""

from __future__ import annotations

from kvspec.config import Config
from kvspec.policy import get_policy
from kvspec.spec.trace import Step, Trace, with_digests

HOLD = (  # pr14849: a deferred context request keeps its growth (NO-DEFERRED-HOLD, 5 steps)
    Step("arrive", 0, {"prompt_len": 1, "chunk_size": 1, "draft_len": 0}),
    Step("prepare_context", 0),
    Step("resize_context", 0),
    Step("decide", 0, {"wait": True, "can_queue": True}),
    Step("end_iteration", 0),
)
HOLD_TRACE = with_digests(Trace(get_policy("pr14849"), Config(), HOLD, source="hand"))
"""The 5-step pr14849 counterexample, with results and digests from the model."""

EVICTION_CONFIG = Config(tokens_per_block=1, num_gpu_pages=4, num_host_pages=4, num_requests=3,
                         max_prompt_len=2, max_draft_len=0)
EVICTION_PROLOGUE: tuple[Step, ...] = (
    # under pr14849: r0 and r1 fill the pool, run their prompts and are suspended; r2 then
    # needs 2 GPU pages (implicit eviction of 2 of their 4 pages: three admissible splits)
    Step("arrive", 0, {"prompt_len": 2, "chunk_size": 2, "draft_len": 0}),
    Step("arrive", 1, {"prompt_len": 2, "chunk_size": 2, "draft_len": 0}),
    Step("prepare_context", 0), Step("resize_context", 0),
    Step("prepare_context", 1), Step("resize_context", 1),
    Step("decide", 0, {"wait": False, "can_queue": True}),
    Step("forward", 0, {"accepted": 0}), Step("forward", 1, {"accepted": 0}),
    Step("end_iteration", 0),
    Step("suspend_request", 0), Step("suspend_request", 1),
    Step("arrive", 2, {"prompt_len": 2, "chunk_size": 2, "draft_len": 0}),
    Step("prepare_context", 2),
)
"""Steps after which ``resize_context(r=2)`` must demote 2 of 4 evictable pages."""
