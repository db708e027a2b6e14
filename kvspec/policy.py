"""Protocol policies: the switches that distinguish PR 13805, its reviewed fix and PR 14849.

A policy is a parameter of the model and of every implementation, never a fork. The presets are
the one place that says which switches each TensorRT-LLM revision had (docs/model.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvspec.errors import InvalidArgument


@dataclass(frozen=True)
class Policy:
    """Switches of the KV-capacity protocol; field meanings in docs/protocol.md."""

    name: str = "custom"
    revert_deferred_context: bool = False
    revert_context_on_skip: bool = False
    revert_generation_on_skip: bool = True
    rollback_failed_resize: bool = False
    clear_snapshot_on_failure: bool = False
    clear_snapshot_at_iteration_start: bool = False
    swa_scratch_reuse: bool = False
    host_tier: bool = True
    draft_record_before_resize: bool = False
    revert_clears_before_resize: bool = False
    pop_draft_record_on_update: bool = True
    free_branch_rewinds: bool = True
    commit_on_forward: bool = True
    gate_before_resume: bool = False
    reserve_context: bool = False

    def switches(self) -> dict[str, bool]:
        """The boolean switches by field name (no name)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}

    def replace(self, **changes: object) -> Policy:
        """A copy with ``changes`` applied; unknown switches raise :class:`InvalidArgument`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidArgument(
                f"unknown policy switch(es) {unknown}; known: {sorted(known - {'name'})}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_PR13805 = Policy(
    name="pr13805",
    revert_deferred_context=True,
    revert_context_on_skip=False,
    swa_scratch_reuse=True,
)

PRESETS: dict[str, Policy] = {
    # PR 13805 as merged: deferred context growth reverted, snapshot written on success only,
    # can_queue skip reverts generation growth only; deployed with SWA scratch reuse.
    "pr13805": _PR13805,
    # Both review findings fixed (snapshot cleared on failure and at iteration start, context
    # growth reverted on the can_queue skip); no scratch reuse.
    "pr13805-reviewed": _PR13805.replace(
        name="pr13805-reviewed", revert_context_on_skip=True, clear_snapshot_on_failure=True,
        clear_snapshot_at_iteration_start=True, swa_scratch_reuse=False),
    # The reviewed fix under SWA scratch reuse: why PR 14849 withdrew the revert.
    "pr13805-reviewed-swa": _PR13805.replace(
        name="pr13805-reviewed-swa", revert_context_on_skip=True, clear_snapshot_on_failure=True,
        clear_snapshot_at_iteration_start=True, swa_scratch_reuse=True),
    # PR 14849: deferred context requests keep their growth; generation rollback kept.
    "pr14849": _PR13805.replace(name="pr14849", revert_deferred_context=False),
    # A new rollback caller that also reverts requests whose resize failed, with the snapshot
    # written on success only (review finding 1, TRT bug 1).
    "stale-snapshot": _PR13805.replace(
        name="stale-snapshot", revert_context_on_skip=True, rollback_failed_resize=True,
        swa_scratch_reuse=False),
    # The older try_allocate_generation that recorded the draft length before the resize.
    "draft-before-resize": _PR13805.replace(
        name="draft-before-resize", revert_context_on_skip=True, clear_snapshot_on_failure=True,
        clear_snapshot_at_iteration_start=True, swa_scratch_reuse=False,
        draft_record_before_resize=True),
    # Before PR 13104: the can_queue skip reverted nothing (generation accumulation, bug 5).
    "pre-pr13104": _PR13805.replace(
        name="pre-pr13104", revert_deferred_context=False, revert_generation_on_skip=False),
    # TensorRT-LLM's pyexecutor KVCacheManagerV2 as of May 2026 (PR 13805's revert in place),
    # read from its code (docs/fidelity.md): both reverts consume their record before the
    # resize that can raise; the draft record is written before the resize and never popped
    # by update_resources; the FREE branch returns None and leaves the cursor; block reuse
    # off, so nothing is committed.
    "trtllm-2026-05": _PR13805.replace(
        name="trtllm-2026-05", draft_record_before_resize=True,
        revert_clears_before_resize=True, pop_draft_record_on_update=False,
        free_branch_rewinds=False, commit_on_forward=False),
    # PR 13805's rejected alternative, "gate delay batching before resume": caches created
    # for every candidate, delay batching on the candidates, then resume + resize of the
    # survivors only. Nothing is grown for a deferred request, so nothing is reverted.
    "gate-before-resume": _PR13805.replace(
        name="gate-before-resume", revert_deferred_context=False,
        clear_snapshot_on_failure=True, clear_snapshot_at_iteration_start=True,
        gate_before_resume=True),
    # Two-phase reservation (docs/design-space.md): resize_context reserves the new pages
    # (out of the pool, not in the cache), the decision commits them for the queued batch,
    # the revert releases them for the dropped and skipped requests; SWA scratch reuse on.
    "reserve-commit": _PR13805.replace(
        name="reserve-commit", revert_context_on_skip=True, clear_snapshot_on_failure=True,
        clear_snapshot_at_iteration_start=True, reserve_context=True),
}

DEFAULT_PRESETS: tuple[str, ...] = tuple(PRESETS)

DESIGN_PRESETS: tuple[str, ...] = ("gate-before-resume", "reserve-commit")
"""The design-space presets (docs/design-space.md): not TensorRT-LLM revisions; the torch
manager's per-preset randomized suites leave them to tests/gpu/test_gpu_design.py."""


def get_policy(name: str) -> Policy:
    """The preset called ``name``; an unknown name raises :class:`InvalidArgument` listing all."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown policy {name!r}; known presets: {', '.join(PRESETS)}") from None
