"""Properties no manager can detect by itself, checked by conformance from observations.

A manager raises :class:`~kvspec.errors.InvariantViolation` for what it can see (INV-LEN on a
generation revert below history, SWA-REWIND). The rest speak about the executor's iteration
(NO-DEFERRED-HOLD, GEN-EXACTLY-ONCE, NO-STALE-SNAPSHOT) or about a whole call (INV-ATOMIC,
REVERT-FLOOR, SUSPEND-PRECAP, RESUME-GATE): :func:`observe_step` decides them from the
implementation's observations before and after each step and the driver's marks, with the
same definitions as the model's ghost flags (spec/actions.py), so "the implementation shows
violation X at step i" can be compared with "the model sets flag X at step i".
"""

from __future__ import annotations

from typing import Any

from .driver import ACTIVE, CONTEXT, NONE, SUSPENDED, Driver, Observation, StepOutcome, pinned
from .driver import F as _F
from .driver import blocks as _blocks

FLAG_IDS: dict[str, str] = {
    "v_len": "INV-LEN", "v_swa_rewind": "SWA-REWIND", "v_atomic": "INV-ATOMIC",
    "v_stale_snapshot": "NO-STALE-SNAPSHOT", "v_revert_floor": "REVERT-FLOOR",
    "v_suspend_precap": "SUSPEND-PRECAP", "v_gen_once": "GEN-EXACTLY-ONCE",
    "v_deferred_hold": "NO-DEFERRED-HOLD", "v_resume_gate": "RESUME-GATE",
    "v_decision": "DECISION-IS-ADMISSION", "v_budget": "BUDGET-CONSISTENT"}
"""The model's ghost violation flags and the invariant ids they stand for."""

EXECUTOR_IDS = frozenset({"DECISION-IS-ADMISSION", "BUDGET-CONSISTENT"})
"""Properties of the executor's delay-batching decision, not of a manager: the driver takes
the model's decision (``decide``'s arguments), so a violation is the model's alone. The
lockstep lists them among the model's violations and leaves them out of the per-step
comparison with what the implementation shows."""

_ATOMIC = tuple(_F[f] for f in ("capacity", "history", "committed", "pos", "draft_record"))
_REVERT_ATOMIC = tuple(_F[f] for f in ("capacity", "history", "committed", "pos", "snapshot",
                                        "draft_record", "status", "has_cache"))
"""What a revert that raises must leave unchanged (the model's INV-ATOMIC for reverts)."""
_CAP, _HIST, _STATUS, _HAS, _HOST = _F["capacity"], _F["history"], _F["status"], \
    _F["has_cache"], _F["host_pages"]


def _utilization_exceeded(d: Driver, obs: Observation) -> bool:
    k = d.config
    g = k.num_gpu_pages
    if g == 0:
        return False
    evictable = 0
    if d.policy.host_tier:
        for q in obs[0]:
            if q[_HAS] and q[_STATUS] == SUSPENDED:
                evictable += _blocks(q[_CAP], k.tokens_per_block) - q[_HOST]
    used = g - obs[1] - evictable
    u = k.max_util_for_resume
    return used * u.denominator > u.numerator * g


def _gen_revert_acts(b: tuple[int, ...]) -> bool:
    rec = b[_F["draft_record"]]
    return bool(rec != NONE and b[_HAS] and b[_STATUS] == ACTIVE and b[_CAP] - 1 - rec >= 0)


def observe_step(d: Driver, name: str, r: int, args: dict[str, Any], out: StepOutcome,
                 before: Observation, after: Observation) -> frozenset[str]:
    """Ids of the properties the implementation violated in this step; updates the marks.

    Cost: O(slots). ``before``/``after`` are :func:`~kvspec.conformance.driver.abstract`
    observations around the step; a step that raised is judged only by what it raised.
    """
    found: set[str] = set()
    b, a = before[0][r], after[0][r]
    if out.raised is not None:  # refused: only what the call itself could tell
        found.add(out.raised.invariant_id)
        if any(b[i] != a[i] for i in _REVERT_ATOMIC):
            found.add("INV-ATOMIC")  # it raised after changing its request
        if name == "revert_allocate_generation" and _gen_revert_acts(b) \
                and not d.gen_outstanding[r]:
            found.add("GEN-EXACTLY-ONCE")
        if name == "revert_allocate_context" and b[_F["snapshot"]] != NONE and not d.fresh[r]:
            found.add("NO-STALE-SNAPSHOT")
        return frozenset(found)
    if name in ("prepare_context", "resize_context", "try_allocate_generation",
                "resume_request"):
        if out.result is False and any(b[i] != a[i] for i in _ATOMIC):
            found.add("INV-ATOMIC")
        if name != "resize_context" and a[_HAS] and a[_STATUS] == ACTIVE and (
                not b[_HAS] or b[_STATUS] == SUSPENDED) and _utilization_exceeded(d, before):
            found.add("RESUME-GATE")
        if name == "resize_context" and out.result:
            d.fresh[r] = d.resized[r] = True
        if name == "try_allocate_generation" and out.result:
            d.gen_outstanding[r] = True
    elif name == "revert_allocate_context":
        pre = b[_F["snapshot"]]
        if pre != NONE and not d.fresh[r]:
            found.add("NO-STALE-SNAPSHOT")
        shrink = (pre != NONE and b[_HAS] and b[_STATUS] == ACTIVE and pre < b[_CAP]
                  and b[_HIST] <= pre)
        if shrink:
            if not a[_HAS] or a[_CAP] != pre or pre < b[_HIST]:
                found.add("REVERT-FLOOR")
            if a[_HAS] and (a[_STATUS] == SUSPENDED) != (pre > 0):
                found.add("SUSPEND-PRECAP")
            if (d.policy.swa_scratch_reuse and b[_F["phase"]] == CONTEXT
                    and b[_CAP] - d.config.max_rewind_len > b[_HIST]):
                found.add("SWA-REWIND")  # the shrink went through instead of being refused
    elif name == "revert_allocate_generation":
        acts = _gen_revert_acts(b)
        if acts and not d.gen_outstanding[r]:
            found.add("GEN-EXACTLY-ONCE")
        if acts and a[_CAP] < b[_HIST]:
            found.add("INV-LEN")
        if acts:
            d.gen_outstanding[r] = False
    elif name == "forward":
        if b[_F["phase"]] != CONTEXT:
            if not d.gen_outstanding[r]:
                found.add("GEN-EXACTLY-ONCE")
            d.gen_outstanding[r] = False
        d.ran[r] = True
    elif name == "end_iteration":
        k, p = d.config, d.policy
        for i, q in enumerate(after[0]):
            now = pinned(q, k, p)
            if d.resized[i] and not d.ran[i] and now > d.pinned_start[i]:
                found.add("NO-DEFERRED-HOLD")
            if d.gen_outstanding[i]:
                found.add("GEN-EXACTLY-ONCE")
            d.pinned_start[i] = now
            d.fresh[i] = d.gen_outstanding[i] = d.resized[i] = d.ran[i] = False
    return frozenset(found)
