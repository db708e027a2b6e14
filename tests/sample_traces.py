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
