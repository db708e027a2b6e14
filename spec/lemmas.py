"""Candidate strengthening lemmas for the inductive proofs (proof artefacts, not properties).

:func:`kvspec.spec.prove.houdini` keeps the largest subset of properties + lemmas that is
inductive under a policy; a lemma that does not hold under a policy is simply dropped there.
Each lemma states one request's view and is checked for every slot (the proofs track one
request against an abstract rest).
"""

from __future__ import annotations

from collections.abc import Callable

from .actions import context_target
from .ops import Term
from .registry import Ctx
from .state import (
    ACTIVE,
    CONTEXT,
    DONE,
    GENERATION,
    NONE,
    SCHEDULE,
    SETTLE,
    SUSPENDED,
    Req,
    State,
)

Lemma = tuple[str, Callable[[Ctx, State], Term]]
LEMMAS_LIST: list[Lemma] = []


def per_request(f: Callable[[Ctx, State, Req], Term]) -> Callable[[Ctx, State, Req], Term]:
    """Register ``f`` as a lemma that must hold for every request slot."""
    LEMMAS_LIST.append((f.__name__, lambda c, s: c.o.and_(*[f(c, s, q) for q in s.reqs])))
    return f


def globally(f: Callable[[Ctx, State], Term]) -> Callable[[Ctx, State], Term]:
    """Register ``f`` as a lemma over the global fields."""
    LEMMAS_LIST.append((f.__name__, f))
    return f


@globally
def globals_nonnegative(c: Ctx, s: State) -> Term:
    return c.o.and_(s.num_gpu_pages >= 0, s.num_host_pages >= 0, s.max_rewind_len >= 0,
                    s.rest_gpu >= 0, s.rest_evictable >= 0, s.rest_evictable <= s.rest_gpu,
                    s.rest_host >= 0,
                    s.batch_wait_iters >= 0, s.stage >= 0, s.stage <= 1)


@per_request
def no_cache_means_empty(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(o.not_(q.has_cache), o.and_(
        q.capacity == 0, q.history == 0, q.committed == 0, q.host_pages == 0,
        q.draft_record == NONE, o.not_(q.gen_outstanding)))


@per_request
def cache_lengths_nonnegative(c: Ctx, s: State, q: Req) -> Term:
    return c.o.and_(q.capacity >= 0, q.history >= 0, q.committed >= 0)


@per_request
def cache_lengths_ordered(c: Ctx, s: State, q: Req) -> Term:
    """INV-LEN's state part alone: it survives a refused shrink that sets INV-LEN's flag."""
    return c.o.and_(q.committed <= q.history, q.history <= q.capacity)


@per_request
def done_means_empty(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(q.phase == DONE, o.and_(
        o.not_(q.has_cache), q.snapshot == NONE, o.not_(q.resized), o.not_(q.prepared),
        o.not_(q.gen_tried), o.not_(q.ran), o.not_(q.ctx_reverted), o.not_(q.resize_failed),
        q.pinned_start == 0))


@per_request
def fields_in_range(c: Ctx, s: State, q: Req) -> Term:
    return c.o.and_(q.phase >= DONE, q.phase <= GENERATION, q.status >= ACTIVE,
                    q.status <= SUSPENDED, q.pinned_start >= 0)


@per_request
def request_params_valid(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(q.phase != DONE, o.and_(q.prompt_len >= 1, q.chunk_size >= 1,
                                             q.draft_len >= 0))


@per_request
def context_cursor_in_prompt(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    # a FREE revert that does not rewind leaves a cursor without a cache
    cached = o.implies(q.pos > 0, q.has_cache) if c.policy.free_branch_rewinds else True
    return o.implies(q.phase == CONTEXT, o.and_(q.pos >= 0, q.pos < q.prompt_len, cached))


@per_request
def context_history_is_pos(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    committed = q.pos if c.policy.commit_on_forward else 0
    return o.implies(o.and_(q.phase == CONTEXT, q.has_cache),
                     o.and_(q.history == q.pos, q.committed == committed))


@per_request
def context_capacity_is_pos_between_chunks(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(
        o.and_(q.phase == CONTEXT, q.has_cache, o.or_(o.not_(q.resized), q.ctx_reverted, q.ran)),
        q.capacity == q.pos)


@per_request
def context_capacity_at_least_pos(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(c.o.and_(q.phase == CONTEXT, q.has_cache), q.capacity >= q.pos)


@per_request
def generation_has_cache(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.phase == GENERATION, c.o.and_(q.has_cache, q.history >= q.prompt_len))


@per_request
def host_only_with_tier(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.host_pages > 0, c.o.and_(c.policy.host_tier, q.has_cache,
                                                  q.status == SUSPENDED))


@per_request
def host_pages_within_cache(c: Ctx, s: State, q: Req) -> Term:
    return c.o.and_(q.host_pages >= 0, q.host_pages <= c.o.blocks(q.capacity))


@per_request
def schedule_stage_has_no_settle_marks(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(s.stage == SCHEDULE, o.and_(o.not_(q.dropped), o.not_(q.ctx_reverted),
                                                 o.not_(q.gen_reverted), o.not_(q.ran)))


@per_request
def resized_is_prepared(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(o.or_(q.resized, q.resize_failed),
                     o.and_(q.prepared, o.or_(q.has_cache, q.ctx_reverted)))


@per_request
def ran_only_when_queued(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.ran, c.o.and_(s.can_queue, s.stage == SETTLE))


@per_request
def resized_and_failed_exclusive(c: Ctx, s: State, q: Req) -> Term:
    return c.o.not_(c.o.and_(q.resized, q.resize_failed))


@per_request
def dropped_is_resized(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.dropped, q.resized)


@per_request
def grown_context_holds_target(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(
        o.and_(q.resized, o.not_(q.ran), o.not_(q.ctx_reverted)),
        o.and_(q.phase == CONTEXT, q.has_cache, q.status == ACTIVE, q.host_pages == 0,
               # with reservations the growth is in ``reserved`` until the decision commits it
               o.or_(q.capacity >= context_target(c, q),
                     o.and_(q.capacity == q.pos, o.not_(o.and_(q.kept, s.can_queue))))
               if c.policy.reserve_context else q.capacity >= context_target(c, q)))


@per_request
def grown_context_snapshot_is_pos(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    grown = o.and_(q.resized, o.not_(q.ran), o.not_(q.ctx_reverted))
    if c.policy.reserve_context:  # reservations write no snapshot
        return o.implies(grown, q.snapshot == NONE)
    return o.implies(grown, o.and_(q.snapshot == q.pos, q.snap_fresh))


@per_request
def resized_snapshot_fresh(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(o.and_(q.resized, o.not_(q.ctx_reverted)),
                     o.or_(q.snapshot == NONE, q.snap_fresh))


@per_request
def failed_resize_cleared_snapshot(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.resize_failed, q.snapshot == NONE)


@per_request
def snapshot_is_fresh(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.snapshot != NONE, q.snap_fresh)


@per_request
def snapshot_within_capacity(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(q.snapshot != NONE, o.and_(q.snapshot >= 0, q.snapshot <= q.capacity))


@per_request
def fresh_only_when_resized(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.snap_fresh, q.resized)


def _after_revert_pins(c: Ctx, q: Req) -> Term:
    """Pages a context request pins after a SHRINK revert to capacity == pos."""
    o = c.o
    return o.ite(q.pos > 0, 0 if c.policy.host_tier else o.blocks(q.pos), 0)


@per_request
def context_pins_cover_revert(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.phase == CONTEXT, q.pinned_start >= _after_revert_pins(c, q))


@per_request
def reverted_context_pins_nothing_new(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(
        o.and_(q.ctx_reverted, q.resized, o.not_(q.ran), q.phase == CONTEXT, q.has_cache),
        o.and_(q.capacity == q.pos, q.status == o.ite(q.pos > 0, SUSPENDED, ACTIVE),
               q.host_pages == 0))


@per_request
def draft_record_valid(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.and_(q.draft_record >= NONE,
                  o.implies(q.draft_record != NONE,
                            o.and_(q.draft_record == q.draft_len, q.phase == GENERATION)))


@per_request
def draft_record_covered_by_capacity(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(o.and_(q.draft_record != NONE, q.has_cache),
                     q.capacity >= q.history + 1 + q.draft_record)


@per_request
def outstanding_iff_record(c: Ctx, s: State, q: Req) -> Term:
    return q.gen_outstanding == (q.draft_record != NONE)


@per_request
def outstanding_growth_is_in_batch(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(q.gen_outstanding, o.and_(
        q.gen_grown, q.gen_tried, o.not_(q.gen_reverted), o.not_(q.ran), q.has_cache,
        q.status == ACTIVE, q.host_pages == 0, q.capacity >= q.history + 1 + q.draft_len))


@per_request
def grown_generation_outstanding(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(o.and_(q.gen_grown, o.not_(q.gen_reverted), o.not_(q.ran)),
                     q.gen_outstanding)


@per_request
def grown_is_tried(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.gen_grown, q.gen_tried)


@per_request
def tried_is_generation(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(c.o.or_(q.gen_tried, q.gen_reverted), q.phase == GENERATION)



@per_request
def resized_unran_is_context(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(o.and_(q.resized, o.not_(q.ran)), q.phase == CONTEXT)


@per_request
def context_and_generation_exclusive(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.and_(o.not_(o.and_(o.or_(q.prepared, q.resized, q.resize_failed), q.gen_tried)),
                  o.implies(q.prepared, o.or_(q.phase == CONTEXT, q.ran)))


@per_request
def grown_context_capacity_is_target(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    grown = o.and_(q.resized, o.not_(q.ran), o.not_(q.ctx_reverted))
    if c.policy.reserve_context:
        committed = o.and_(q.kept, s.can_queue)
        return o.implies(grown, q.capacity == o.ite(committed, context_target(c, q), q.pos))
    return o.implies(grown, q.capacity == context_target(c, q))



@per_request
def grown_generation_covers_record(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(o.and_(q.gen_grown, o.not_(q.gen_reverted), o.not_(q.ran)),
                     o.and_(q.draft_record == q.draft_len, q.has_cache, q.status == ACTIVE,
                            q.host_pages == 0, q.capacity >= q.history + 1 + q.draft_len))


# ---- the design space of PR 13805 (reservations, the decision's kept set) ------------------


@per_request
def reservation_covers_growth(c: Ctx, s: State, q: Req) -> Term:
    """A grown, unrun, unreverted context request holds in ``reserved`` exactly the pages its
    cache still lacks for the chunk (0 once committed, and always 0 without reservations)."""
    o = c.o
    pending = o.and_(q.resized, o.not_(q.ctx_reverted), o.not_(q.ran))
    lacks = o.blocks(o.max(q.capacity, context_target(c, q))) - o.blocks(q.capacity)
    return o.and_(q.reserved >= 0, q.reserved == o.ite(pending, lacks, 0))


@per_request
def grown_context_is_active(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(
        o.and_(q.resized, o.not_(q.ran), o.not_(q.ctx_reverted)),
        o.and_(q.phase == CONTEXT, q.has_cache, q.status == ACTIVE, q.host_pages == 0))


@per_request
def reserved_capacity_is_pos(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(q.reserved > 0, q.capacity == q.pos)


@per_request
def kept_after_decision(c: Ctx, s: State, q: Req) -> Term:
    """The decision's kept set: counted, not dropped, resized unless the gate runs first."""
    o = c.o
    admitted = True if c.policy.gate_before_resume else q.resized
    return o.implies(q.kept, o.and_(s.stage == SETTLE, q.prepared, o.not_(q.dropped),
                                    admitted))


@per_request
def kept_queued_is_not_reverted(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(c.o.and_(q.kept, s.can_queue), c.o.not_(q.ctx_reverted))


@per_request
def decided_resized_is_kept_or_dropped(c: Ctx, s: State, q: Req) -> Term:
    o = c.o
    return o.implies(o.and_(s.stage == SETTLE, q.resized), o.or_(q.kept, q.dropped))


@per_request
def kept_queued_is_committed(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(c.o.and_(q.kept, s.can_queue), q.reserved == 0)


@per_request
def gate_resized_is_kept(c: Ctx, s: State, q: Req) -> Term:
    """Under ``gate_before_resume`` only survivors of a queued batch are resized."""
    if not c.policy.gate_before_resume:
        return True
    o = c.o
    return o.implies(o.or_(q.resized, q.resize_failed),
                     o.and_(q.kept, s.can_queue, s.stage == SETTLE))


@per_request
def no_kept_mark_while_scheduling(c: Ctx, s: State, q: Req) -> Term:
    return c.o.implies(s.stage == SCHEDULE, c.o.not_(q.kept))


LEMMAS: tuple[Lemma, ...] = tuple(LEMMAS_LIST)
