"""The protocol's actions, each declared once as guard + effect (semantics: docs/protocol.md).

Every function here reads state only through the ops of its :class:`Ctx`, so the same code
runs on ints (hypothesis, the walker, replay) and on z3 terms (proofs, BMC). Branches are
written as two candidate states joined by :func:`merge`, never as Python ``if`` on state.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from .eviction import demote as demote_pages
from .eviction import room, victim_caps
from .ops import Term
from .registry import Action, ActionRegistry, Ctx, Outcome, Param
from .state import (
    ACTIVE,
    CONTEXT,
    DONE,
    GENERATION,
    ITERATION_MARKS,
    NONE,
    SCHEDULE,
    SETTLE,
    SUSPENDED,
    Req,
    State,
    evictable,
    evictable_pages,
    gpu_pages,
    merge,
    pinned,
    with_req,
)

ACTIONS = ActionRegistry()


def protocol_actions(abstract_rest: bool) -> tuple[Action, ...]:
    """The registry's actions; ``others`` (requests outside the model) only in the proofs'
    one-request-versus-the-rest abstraction."""
    return tuple(a for a in ACTIONS.actions if abstract_rest or a.name not in ABSTRACT_ONLY)


ABSTRACT_ONLY = ("others", "others_evict")
"""Actions of the proofs' one-request-versus-the-rest abstraction only."""


# ---------------------------------------------------------------------------------------------
# Shared arithmetic (section 2.1 of the semantics note)


def context_tokens(c: Ctx, q: Req) -> Term:
    """Tokens of the current chunk: min(chunk_size, prompt_len - pos)."""
    return c.o.min(q.chunk_size, q.prompt_len - q.pos)


def context_target(c: Ctx, q: Req) -> Term:
    """resize_context's target: pos + chunk tokens, plus the draft length on the last chunk."""
    n = context_tokens(c, q)
    return q.pos + n + c.o.ite(q.pos + n == q.prompt_len, q.draft_len, 0)


def room_evictable(c: Ctx, s: State, r: int) -> Term:
    """Pages implicit eviction may demote to make room for slot ``r`` (all victims)."""
    total: Term = 0
    for cap in victim_caps(c, s, r):
        total = total + cap
    return total


def resume_plan(c: Ctx, s: State, r: int) -> tuple[Term, Term, Term]:
    """(gate_ok, room_ok, shortfall) of ``_KVCache.resume`` on slot ``r``: the utilization
    gate (used = total - free - evictable, the cache's own GPU pages counted evictable), then
    room on GPU for its host pages (``batched_lock_to_gpu``)."""
    o, q = c.o, s.reqs[r]
    ev = evictable(o, s, c.policy.host_tier) + s.rest_evictable
    gate_ok = o.not_(o.util_exceeds(s.num_gpu_pages - s.gpu_free - ev, s.num_gpu_pages))
    room_ok, shortfall = room(c, q.host_pages, s.gpu_free, s.host_free,
                              room_evictable(c, s, r))
    return gate_ok, room_ok, shortfall


def resume_demand(c: Ctx, s: State, r: int) -> Term:
    """Pages a resume of slot ``r`` demotes (0 when it is refused)."""
    gate_ok, room_ok, shortfall = resume_plan(c, s, r)
    return c.o.ite(c.o.and_(gate_ok, room_ok), shortfall, 0)


def resume(c: Ctx, s: State, r: int, demote: Sequence[Term]) -> tuple[Term, State]:
    """``_KVCache.resume``: the utilization gate, then room on GPU (``demote`` victims, as
    admitted by the guard), then the cache's host pages back to GPU; all-or-nothing.

    Returns (succeeded, state). Refusal leaves the state unchanged.
    """
    o = c.o
    gate_ok, room_ok, _ = resume_plan(c, s, r)
    ok = o.and_(gate_ok, room_ok)
    s1 = demote_pages(c, s, demote)
    q = s1.reqs[r]
    moved = q.host_pages
    resumed = with_req(s1, r, q._replace(status=ACTIVE, never_resumed=False, host_pages=0))
    resumed = resumed._replace(
        gpu_free=s1.gpu_free - moved, host_free=s1.host_free + moved,
        v_resume_gate=o.or_(s.v_resume_gate, o.not_(gate_ok)))
    return ok, merge(o, ok, resumed, s)


DEMOTE = Param("demote", kind="slots")
"""The victims of implicit eviction: GPU pages demoted to the host, per slot (+ the rest)."""


def ctx_revert_due(c: Ctx, s: State, q: Req) -> Term:
    """Whether the executor must call revert_allocate_context on ``q`` in the SETTLE stage."""
    o, p = c.o, c.policy
    return o.and_(
        q.phase == CONTEXT,
        o.not_(q.ctx_reverted),
        o.or_(
            o.and_(p.revert_deferred_context, q.dropped),
            o.and_(p.revert_context_on_skip, q.resized, o.not_(q.dropped),
                   o.not_(s.can_queue)),
            o.and_(p.rollback_failed_resize, q.resize_failed),
        ),
    )


def gen_revert_due(c: Ctx, s: State, q: Req) -> Term:
    """Whether the executor must call revert_allocate_generation on ``q`` (can_queue False)."""
    o = c.o
    return o.and_(c.policy.revert_generation_on_skip, q.phase == GENERATION, q.gen_tried,
                  o.not_(q.gen_reverted), o.not_(s.can_queue))


def counted(c: Ctx, q: Req) -> Term:
    """Whether the delay-batching decision counts ``q`` in its batch: a resized context
    request (admission known), or under ``gate_before_resume`` every nominated one."""
    if c.policy.gate_before_resume:
        return c.o.and_(q.prepared, q.phase == CONTEXT, q.has_cache)
    return q.resized


def in_final_batch(c: Ctx, q: Req) -> Term:
    """Whether ``q`` is forwarded when can_queue: resized and kept, or grown for generation."""
    o = c.o
    return o.or_(o.and_(q.resized, o.not_(q.dropped), o.not_(q.ctx_reverted)),
                 o.and_(q.gen_grown, o.not_(q.gen_reverted)))


def reverts_pending(c: Ctx, s: State) -> Term:
    """Whether any revert the policy requires has not happened yet."""
    return c.o.or_(*[c.o.or_(ctx_revert_due(c, s, q), gen_revert_due(c, s, q)) for q in s.reqs])


# ---------------------------------------------------------------------------------------------
# SCHEDULE stage


def _g_arrive(c: Ctx, s: State, r: int, prompt_len: Term, chunk_size: Term,
              draft_len: Term) -> Term:
    q = s.reqs[r]
    return c.o.and_(s.stage == SCHEDULE, q.phase == DONE, c.o.not_(q.has_cache),
                    prompt_len >= 1, chunk_size >= 1, draft_len >= 0)


@ACTIONS.action(guard=_g_arrive, params=(
    Param("prompt_len", lo=1, hi=lambda k: k.max_prompt_len),
    Param("chunk_size", lo=1, hi=lambda k: k.max_prompt_len),
    Param("draft_len", lo=0, hi=lambda k: k.max_draft_len)))
def arrive(c: Ctx, s: State, r: int, prompt_len: Term, chunk_size: Term,
           draft_len: Term) -> Outcome:
    """A new request takes slot r in CONTEXT_INIT with pos 0 (the executor fetches it)."""
    return Outcome(with_req(s, r, Req(
        phase=CONTEXT, prompt_len=prompt_len, chunk_size=chunk_size, draft_len=draft_len)))


def _g_prepare_context(c: Ctx, s: State, r: int) -> Term:
    q = s.reqs[r]
    o = c.o
    return o.and_(s.stage == SCHEDULE, q.phase == CONTEXT, o.not_(q.prepared),
                  o.or_(q.pos == 0, q.has_cache))


def _prepared(c: Ctx, s: State, r: int) -> State:
    """``s`` with slot ``r``'s cache created when this is a first chunk, and marked prepared."""
    o, q = c.o, s.reqs[r]
    create = o.and_(q.pos == 0, o.not_(q.has_cache))
    created = q._replace(has_cache=True, status=SUSPENDED, never_resumed=True, host_pages=0,
                         capacity=0, history=0, committed=0)
    return with_req(s, r, merge(o, create, created, q)._replace(prepared=True))


def _prepare_demand(c: Ctx, s: State, r: int) -> Term:
    if c.policy.gate_before_resume:
        return 0
    s0 = _prepared(c, s, r)
    return c.o.ite(s0.reqs[r].status == SUSPENDED, resume_demand(c, s0, r), 0)


@ACTIONS.action(guard=_g_prepare_context, params=(DEMOTE,),
                demand=_prepare_demand, returns=True, atomic_on_false=True)
def prepare_context(c: Ctx, s: State, r: int, demote: Sequence[Term]) -> Outcome:
    """Models TRT ``prepare_context``: create the cache on a first chunk, resume if suspended
    (implicit eviction may demote ``demote`` pages of other suspended caches).

    Under ``gate_before_resume`` (PR 13805's rejected alternative) it only nominates the
    request: the cache is created on a first chunk (no GPU work), nothing is resumed, and it
    returns True; resume and resize come after the delay-batching decision.
    """
    o = c.o
    s0 = _prepared(c, s, r)
    if c.policy.gate_before_resume:
        return Outcome(s0, True)
    ok, s1 = resume(c, s0, r, demote)
    s2 = merge(o, s0.reqs[r].status == SUSPENDED, s1, s0)
    return Outcome(s2, s2.reqs[r].status == ACTIVE)


def _g_resize_context(c: Ctx, s: State, r: int) -> Term:
    q = s.reqs[r]
    o = c.o
    if c.policy.gate_before_resume:  # only the survivors of the decision, in a queued batch
        return o.and_(s.stage == SETTLE, s.can_queue, q.phase == CONTEXT, q.prepared,
                      q.kept, q.has_cache, o.not_(q.resized), o.not_(q.resize_failed))
    return o.and_(s.stage == SCHEDULE, q.phase == CONTEXT, q.prepared, q.has_cache,
                  q.status == ACTIVE, o.not_(q.resized), o.not_(q.resize_failed),
                  q.reserved == 0 if c.policy.reserve_context else True)


def _resize_plan(c: Ctx, s: State, r: int) -> tuple[Term, Term, Term, Term]:
    """(new capacity, pages needed, fits, shortfall) of ``resize_context`` on slot ``r``."""
    o, q = c.o, s.reqs[r]
    new_cap = o.max(q.capacity, context_target(c, q))
    need = o.blocks(new_cap) - o.blocks(q.capacity)
    fits, shortfall = room(c, need, s.gpu_free, s.host_free, room_evictable(c, s, r))
    return new_cap, need, fits, shortfall


def _admit_plan(c: Ctx, s: State, r: int) -> tuple[Term, Term, Term, Term, Term]:
    """(was ACTIVE, succeeds, new capacity, pages needed, pages demoted) of the survivors'
    resume + resize under ``gate_before_resume``: a resume when suspended (its own
    eviction), then the growth's, counted on the pool as the resume leaves it;
    all-or-nothing."""
    o, q = c.o, s.reqs[r]
    was_active = q.status == ACTIVE
    gate_ok, room_ok, short1 = resume_plan(c, s, r)
    live = o.or_(was_active, o.and_(gate_ok, room_ok))
    short1 = o.ite(was_active, 0, short1)
    recalled = o.ite(was_active, 0, q.host_pages)
    new_cap = o.max(q.capacity, context_target(c, q))
    need = o.blocks(new_cap) - o.blocks(q.capacity)
    fits, short2 = room(c, need, s.gpu_free + short1 - recalled, s.host_free - short1 + recalled,
                        room_evictable(c, s, r) - short1)
    ok = o.and_(live, fits)
    return was_active, ok, new_cap, need, o.ite(ok, short1 + short2, 0)


def _resize_demand(c: Ctx, s: State, r: int) -> Term:
    if c.policy.gate_before_resume:
        return _admit_plan(c, s, r)[4]
    _, _, fits, shortfall = _resize_plan(c, s, r)
    return c.o.ite(fits, shortfall, 0)


def _admit(c: Ctx, s: State, r: int, demote: Sequence[Term]) -> Outcome:
    """``resize_context`` under ``gate_before_resume``: resume (if suspended) and grow a
    survivor of the decision; a failure of either changes nothing but the mark."""
    o, q = c.o, s.reqs[r]
    was_active, ok, new_cap, need, _ = _admit_plan(c, s, r)
    failed = with_req(s, r, q._replace(resize_failed=True))
    s0 = demote_pages(c, s, demote)
    q0 = s0.reqs[r]
    recalled = o.ite(was_active, 0, q0.host_pages)
    grown = with_req(s0, r, q0._replace(
        status=ACTIVE, never_resumed=o.and_(was_active, q0.never_resumed), host_pages=0,
        capacity=new_cap, snapshot=o.ite(new_cap > q0.capacity, q0.capacity, NONE),
        snap_fresh=True, resized=True))._replace(
        gpu_free=s0.gpu_free - recalled - need, host_free=s0.host_free + recalled)
    return Outcome(merge(o, ok, grown, failed), ok)


@ACTIONS.action(guard=_g_resize_context, params=(DEMOTE,),
                demand=_resize_demand, returns=True, atomic_on_false=True)
def resize_context(c: Ctx, s: State, r: int, demote: Sequence[Term]) -> Outcome:
    """Models TRT ``resize_context``: grow to max(cap, target); snapshot on growth only.

    New pages come from free GPU pages, then from demoting ``demote`` evictable pages of
    suspended caches (implicit eviction); it fails only when free + evictable (or the host's
    room for the demoted pages) is short, and then changes nothing but this: a first chunk
    is suspended; the snapshot is cleared only under ``clear_snapshot_on_failure`` (PR 13805
    left it: review finding 1).

    Under ``reserve_context`` (two-phase reservation) the new pages are reserved for the
    request, not added to its cache: capacity and snapshot stay, ``reserved`` holds them
    until the decision commits them (kept, queued) or the revert releases them. Under
    ``gate_before_resume`` it runs after the decision, on a survivor: resume and resize in
    one all-or-nothing call (:func:`_admit`).
    """
    o, p, q = c.o, c.policy, s.reqs[r]
    if p.gate_before_resume:
        return _admit(c, s, r, demote)
    new_cap, need, ok, _ = _resize_plan(c, s, r)
    s1 = demote_pages(c, s, demote)
    if p.reserve_context:  # phase 1 of the two-phase reservation: pages out of the pool only
        grown = with_req(s1, r, q._replace(reserved=need, resized=True))._replace(
            gpu_free=s1.gpu_free - need)
    else:
        grown = with_req(s1, r, q._replace(
            capacity=new_cap, snapshot=o.ite(new_cap > q.capacity, q.capacity, NONE),
            snap_fresh=True, resized=True))._replace(gpu_free=s1.gpu_free - need)
    failed = with_req(s, r, q._replace(
        status=o.ite(q.pos == 0, SUSPENDED, q.status),
        snapshot=NONE if p.clear_snapshot_on_failure else q.snapshot,
        resize_failed=True))
    return Outcome(merge(o, ok, grown, failed), ok)


def _g_try_allocate_generation(c: Ctx, s: State, r: int) -> Term:
    q = s.reqs[r]
    return c.o.and_(s.stage == SCHEDULE, q.phase == GENERATION, q.has_cache,
                    c.o.not_(q.gen_tried))


def _generation_plan(c: Ctx, s: State, r: int) -> tuple[Term, Term, Term, Term, Term]:
    """(was ACTIVE, resume ok, growth ok, pages needed, pages demoted) of
    ``try_allocate_generation`` on slot ``r``: a resume when suspended (its own eviction),
    then the growth's, counted on the pool as the resume leaves it."""
    o, q = c.o, s.reqs[r]
    was_active = q.status == ACTIVE
    gate_ok, room_ok, short1 = resume_plan(c, s, r)
    res_ok = o.and_(gate_ok, room_ok)
    live = o.or_(was_active, res_ok)
    short1 = o.ite(was_active, 0, short1)
    recalled = o.ite(was_active, 0, q.host_pages)
    need = o.blocks(q.capacity + 1 + q.draft_len) - o.blocks(q.capacity)
    fits, short2 = room(c, need, s.gpu_free + short1 - recalled, s.host_free - short1 + recalled,
                        room_evictable(c, s, r) - short1)
    ok = o.and_(live, fits)
    demoted = o.ite(live, short1, 0) + o.ite(ok, short2, 0)
    return was_active, live, ok, need, demoted


def _generation_demand(c: Ctx, s: State, r: int) -> Term:
    return _generation_plan(c, s, r)[4]


@ACTIONS.action(guard=_g_try_allocate_generation,
                params=(DEMOTE,), demand=_generation_demand, returns=True,
                atomic_on_false=True)
def try_allocate_generation(c: Ctx, s: State, r: int, demote: Sequence[Term]) -> Outcome:
    """Models TRT ``try_allocate_generation``: resume if needed, grow by 1 + draft_len, each
    making room by implicit eviction (``demote`` counts both).

    A refused resume changes nothing; a failed resize after a resume leaves the cache ACTIVE
    (semantics bug 7). The draft record is written on success only, or before the resize
    under ``draft_record_before_resize`` (the older version).
    """
    o, p = c.o, c.policy
    was_active, live, ok, need, _ = _generation_plan(c, s, r)
    marked = with_req(s, r, s.reqs[r]._replace(gen_tried=True))
    s0 = demote_pages(c, marked, demote)
    q0 = s0.reqs[r]
    recalled = o.ite(was_active, 0, q0.host_pages)
    s1 = with_req(s0, r, q0._replace(status=ACTIVE, never_resumed=o.and_(
        was_active, q0.never_resumed), host_pages=q0.host_pages - recalled))._replace(
        gpu_free=s0.gpu_free - recalled, host_free=s0.host_free + recalled)
    q1 = s1.reqs[r]
    new_cap = q1.capacity + 1 + q1.draft_len
    grown = with_req(s1, r, q1._replace(
        capacity=new_cap, draft_record=q1.draft_len, gen_grown=True,
        gen_outstanding=True))._replace(gpu_free=s1.gpu_free - need)
    failed = with_req(s1, r, q1._replace(
        draft_record=q1.draft_len if p.draft_record_before_resize else NONE))
    return Outcome(merge(o, ok, grown, merge(o, live, failed, marked)), ok)


def _g_suspend_request(c: Ctx, s: State, r: int) -> Term:
    q = s.reqs[r]
    o = c.o
    return o.and_(s.stage == SCHEDULE, q.has_cache, q.status == ACTIVE, o.not_(q.prepared),
                  o.not_(q.gen_tried))


@ACTIONS.action(guard=_g_suspend_request)
def suspend_request(c: Ctx, s: State, r: int) -> Outcome:
    """Models TRT ``suspend_request`` on a scheduler victim: SUSPENDED, nothing freed."""
    return Outcome(with_req(s, r, s.reqs[r]._replace(status=SUSPENDED)))


def _g_resume_request(c: Ctx, s: State, r: int) -> Term:
    q = s.reqs[r]
    o = c.o
    return o.and_(s.stage == SCHEDULE, q.has_cache, q.status == SUSPENDED, o.not_(q.prepared),
                  o.not_(q.gen_tried))


@ACTIONS.action(guard=_g_resume_request, params=(DEMOTE,),
                demand=resume_demand, returns=True, atomic_on_false=True)
def resume_request(c: Ctx, s: State, r: int, demote: Sequence[Term]) -> Outcome:
    """Models TRT ``resume_request`` on a suspended cache outside prepare/try_allocate (a
    scheduler bringing a victim back): the utilization gate, room on GPU by implicit
    eviction, its host pages back to GPU; a refusal changes nothing."""
    ok, s1 = resume(c, s, r, demote)
    return Outcome(s1, ok)


def _g_evict_to_host(c: Ctx, s: State, r: int) -> Term:
    q = s.reqs[r]
    o = c.o
    on_gpu = gpu_pages(o, q)
    return o.and_(c.policy.host_tier, s.stage == SCHEDULE, q.has_cache, q.status == SUSPENDED,
                  on_gpu > 0, s.host_free >= on_gpu)


@ACTIONS.action(guard=_g_evict_to_host)
def evict_to_host(c: Ctx, s: State, r: int) -> Outcome:
    """Demote all of a suspended cache's GPU pages to the host tier (the eviction an executor
    asks for under pool pressure; growth and resume also evict implicitly)."""
    q = s.reqs[r]
    pages = gpu_pages(c.o, q)
    return Outcome(with_req(s, r, q._replace(host_pages=q.host_pages + pages))._replace(
        gpu_free=s.gpu_free + pages, host_free=s.host_free - pages))


def _g_free_resources(c: Ctx, s: State, r: int) -> Term:
    q = s.reqs[r]
    return c.o.and_(s.stage == SCHEDULE, q.phase == GENERATION, q.has_cache,
                    c.o.not_(q.gen_tried))


@ACTIONS.action(guard=_g_free_resources)
def free_resources(c: Ctx, s: State, r: int) -> Outcome:
    """Models TRT ``free_resources`` for a finished request: close the cache (each page back
    to its tier), empty the slot."""
    q = s.reqs[r]
    return Outcome(with_req(s, r, Req())._replace(
        gpu_free=s.gpu_free + gpu_pages(c.o, q), host_free=s.host_free + q.host_pages))


def _g_others(c: Ctx, s: State, r: int, delta: Term, evictable: Term,
              host_delta: Term) -> Term:
    o = c.o
    return o.and_(c.abstract_rest, s.stage == SCHEDULE, s.rest_gpu + delta >= 0,
                  s.gpu_free - delta >= 0, evictable >= 0, evictable <= s.rest_gpu + delta,
                  s.rest_host + host_delta >= 0, s.host_free - host_delta >= 0,
                  True if c.policy.host_tier else host_delta == 0)


@ACTIONS.action(guard=_g_others, per_request=False, params=(
    Param("delta", lo=-2, hi=lambda k: 2), Param("evictable", lo=0, hi=lambda k: 2),
    Param("host_delta", lo=-2, hi=lambda k: 2)))
def others(c: Ctx, s: State, r: int, delta: Term, evictable: Term,
           host_delta: Term) -> Outcome:
    """Abstract mode only: requests outside the model take or release ``delta`` GPU pages
    and ``host_delta`` host pages; ``evictable`` of their GPU pages are suspended ones."""
    return Outcome(s._replace(rest_gpu=s.rest_gpu + delta, gpu_free=s.gpu_free - delta,
                              rest_evictable=evictable, rest_host=s.rest_host + host_delta,
                              host_free=s.host_free - host_delta))


def _g_others_evict(c: Ctx, s: State, r: int, pages: Term) -> Term:
    o, q = c.o, s.reqs[r]
    return o.and_(c.abstract_rest, s.stage == SCHEDULE, pages >= 1,
                  pages <= evictable_pages(o, q, c.policy.host_tier), pages <= s.host_free)


@ACTIONS.action(guard=_g_others_evict, params=(Param("pages", lo=1, hi=lambda k: 2),))
def others_evict(c: Ctx, s: State, r: int, pages: Term) -> Outcome:
    """Abstract mode only: a growth or resume of requests outside the model demotes
    ``pages`` of slot r's evictable GPU pages to the host tier (implicit eviction on their
    behalf; ``others`` then takes the freed pages)."""
    q = s.reqs[r]
    return Outcome(with_req(s, r, q._replace(host_pages=q.host_pages + pages))._replace(
        gpu_free=s.gpu_free + pages, host_free=s.host_free - pages))


# ---------------------------------------------------------------------------------------------
# The delay-batching decision and the SETTLE stage


def _g_decide(c: Ctx, s: State, r: int, wait: Term, can_queue: Term) -> Term:
    o, k = c.o, c.config
    if (s.stage == SCHEDULE) is False:  # concrete reading: skip the O(slots) part
        return False
    if k.attention_dp:
        may_wait: Term = True
    elif k.batch_waiting_enabled:
        may_wait = s.batch_wait_iters < k.batch_wait_timeout_iters
    else:
        may_wait = False
    batch_empty = o.not_(o.or_(*[o.or_(o.and_(counted(c, q), o.not_(wait)), q.gen_grown)
                                 for q in s.reqs]))
    may_skip = o.or_(k.attention_dp, c.abstract_rest, batch_empty)
    return o.and_(s.stage == SCHEDULE, o.or_(o.not_(wait), may_wait),
                  o.or_(can_queue, may_skip))


@ACTIONS.action(guard=_g_decide, per_request=False, params=(
    Param("wait", kind="bool"), Param("can_queue", kind="bool")))
def decide(c: Ctx, s: State, r: int, wait: Term, can_queue: Term) -> Outcome:
    """Delay batching (batch waiting or ADP balance defers every context request: D) and the
    ``can_queue`` decision; SCHEDULE -> SETTLE.

    Its input is the context requests :func:`counted` (the resized ones; the nominated ones
    under ``gate_before_resume``): with ``wait`` they are dropped, else kept. BUDGET-CONSISTENT
    is violated when it counts one that is not admitted: its resume and resize have not
    returned True and would not succeed on the pool as it is now.
    Under ``reserve_context`` the kept requests' reservations are committed to their caches
    when the batch is queued (phase 2); the others stay reserved until their revert.
    """
    o, k, p = c.o, c.config, c.policy
    counter = s.batch_wait_iters
    if k.batch_waiting_enabled and not k.attention_dp:
        counter = o.ite(wait, counter + 1, 0)
    reqs = []
    pending: list[Term] = []
    for r, q in enumerate(s.reqs):
        n = counted(c, q)
        if p.gate_before_resume:  # counted before admission: does it fit the pool right now?
            pending.append(o.and_(n, o.not_(q.resized), o.not_(_admit_plan(c, s, r)[1])))
        q1 = q._replace(dropped=o.and_(n, wait), kept=o.and_(n, o.not_(wait)))
        if p.reserve_context:
            commit = o.and_(q.resized, o.not_(wait), can_queue)
            q1 = merge(o, commit, q1._replace(
                capacity=o.max(q.capacity, context_target(c, q)), reserved=0), q1)
        reqs.append(q1)
    return Outcome(s._replace(reqs=tuple(reqs), stage=SETTLE, can_queue=can_queue, waited=wait,
                              batch_wait_iters=counter,
                              v_budget=o.or_(s.v_budget, *pending)))


def _g_revert_allocate_context(c: Ctx, s: State, r: int) -> Term:
    settle = s.stage == SETTLE
    return False if settle is False else c.o.and_(settle, ctx_revert_due(c, s, s.reqs[r]))


REVERT_ATOMIC_FIELDS = ("capacity", "history", "committed", "pos", "snapshot", "draft_record",
                        "status", "has_cache")
"""What a revert that raises must leave unchanged (INV-ATOMIC)."""


def refused_changes(c: Ctx, before: Req, after: Req, fields: tuple[str, ...]) -> Term:
    """Whether a refused call changed any of ``fields`` of its request (INV-ATOMIC)."""
    return c.o.or_(*[getattr(before, f) != getattr(after, f) for f in fields])


@ACTIONS.action(guard=_g_revert_allocate_context, returns=True)
def revert_allocate_context(c: Ctx, s: State, r: int) -> Outcome:
    """Models TRT ``revert_allocate_context``: shrink back to ``py_ctx_pre_resize_cap``.

    The snapshot is consumed. FREE branch (history > snapshot): the cache is dropped; under
    ``free_branch_rewinds`` the request is rewound to position 0 and the call returns False,
    otherwise (TRT as of May 2026) the position stays and the call returns nothing (modelled
    as True). SHRINK branch: capacity = snapshot, suspended iff the snapshot is > 0, returns
    True. Under SWA scratch reuse the shrink needs cap - max_rewind_len <= history; otherwise
    TRT's resize asserts (SWA-REWIND is violated) and the call raises: it changes nothing,
    unless ``revert_clears_before_resize`` consumed the snapshot before the resize (INV-ATOMIC
    is violated then).
    """
    o, p, q = c.o, c.policy, s.reqs[r]
    if p.reserve_context:
        return _release(c, s, r)
    pre = q.snapshot
    consumed = pre != NONE
    acts = o.and_(consumed, q.has_cache, q.status == ACTIVE, pre < q.capacity)
    free_branch = o.and_(acts, q.history > pre)
    shrink = o.and_(acts, o.not_(free_branch))
    base = q._replace(snapshot=NONE, ctx_reverted=True)
    freed_q = base._replace(has_cache=False, status=SUSPENDED, never_resumed=False,
                            host_pages=0, capacity=0, history=0, committed=0,
                            pos=0 if p.free_branch_rewinds else q.pos, draft_record=NONE)
    shrunk_q = base._replace(capacity=pre, status=o.ite(pre > 0, SUSPENDED, ACTIVE))
    released = o.ite(free_branch, o.blocks(q.capacity),
                     o.ite(shrink, o.blocks(q.capacity) - o.blocks(pre), 0))
    new_q = merge(o, free_branch, freed_q, merge(o, shrink, shrunk_q, base))
    swa_bad = o.and_(p.swa_scratch_reuse, shrink, q.phase == CONTEXT,
                     q.capacity - s.max_rewind_len > q.history)
    floor_bad = o.and_(shrink, o.or_(new_q.capacity != pre, pre < q.history))
    precap_bad = o.and_(shrink, (new_q.status == SUSPENDED) != (pre > 0))
    done = with_req(s, r, new_q)._replace(gpu_free=s.gpu_free + released)
    # Under SWA scratch reuse TRT's resize asserts: the call raises, after consuming the
    # snapshot when the revision clears it first.
    refused_q = q._replace(ctx_reverted=True, snapshot=(
        NONE if p.revert_clears_before_resize else q.snapshot))
    refused = with_req(s, r, refused_q)
    atomic_bad = o.and_(swa_bad, refused_changes(c, q, refused_q, REVERT_ATOMIC_FIELDS))
    s1 = merge(o, swa_bad, refused, done)._replace(
        v_stale_snapshot=o.or_(s.v_stale_snapshot, o.and_(consumed, o.not_(q.snap_fresh))),
        v_swa_rewind=o.or_(s.v_swa_rewind, swa_bad),
        v_revert_floor=o.or_(s.v_revert_floor, floor_bad),
        v_suspend_precap=o.or_(s.v_suspend_precap, precap_bad),
        v_atomic=o.or_(s.v_atomic, atomic_bad))
    return Outcome(s1, o.not_(free_branch) if p.free_branch_rewinds else True)


def _release(c: Ctx, s: State, r: int) -> Outcome:
    """``revert_allocate_context`` under ``reserve_context``: release the reservation of a
    dropped (or skipped) request; its cache is not resized, so nothing is rewound. The cache
    is suspended iff its capacity (its pre-resize capacity) is > 0, as PR 13805 does."""
    o, q = c.o, s.reqs[r]
    new_q = q._replace(reserved=0, ctx_reverted=True, status=o.ite(
        o.and_(q.has_cache, q.capacity > 0), SUSPENDED, q.status))
    return Outcome(with_req(s, r, new_q)._replace(gpu_free=s.gpu_free + q.reserved), True)


def _g_revert_allocate_generation(c: Ctx, s: State, r: int) -> Term:
    settle = s.stage == SETTLE
    return False if settle is False else c.o.and_(settle, gen_revert_due(c, s, s.reqs[r]))


@ACTIONS.action(guard=_g_revert_allocate_generation)
def revert_allocate_generation(c: Ctx, s: State, r: int) -> Outcome:
    """Models TRT ``revert_allocate_generation``: pop the draft record and shrink by
    1 + record; no record, an inactive cache or a negative target is a no-op. A target below
    history makes TRT raise ("shrink must succeed"): INV-LEN is violated and nothing changes,
    unless ``revert_clears_before_resize`` popped the record first (INV-ATOMIC then)."""
    o, p, q = c.o, c.policy, s.reqs[r]
    rec = q.draft_record
    target = q.capacity - 1 - rec
    acts = o.and_(rec != NONE, q.has_cache, q.status == ACTIVE, target >= 0)
    below_history = o.and_(acts, target < q.history)  # TRT raises: the shrink must succeed
    shrinks = o.and_(acts, o.not_(below_history))
    base = q._replace(draft_record=NONE, gen_reverted=True)
    shrunk = base._replace(capacity=target, gen_outstanding=False)
    refused = q._replace(gen_reverted=True, draft_record=(
        NONE if p.revert_clears_before_resize else q.draft_record))
    released = o.ite(shrinks, o.blocks(q.capacity) - o.blocks(target), 0)
    new_q = merge(o, below_history, refused, merge(o, shrinks, shrunk, base))
    s1 = with_req(s, r, new_q)._replace(
        gpu_free=s.gpu_free + released,
        v_len=o.or_(s.v_len, below_history),
        v_atomic=o.or_(s.v_atomic, o.and_(
            below_history, refused_changes(c, q, refused, REVERT_ATOMIC_FIELDS))),
        v_gen_once=o.or_(s.v_gen_once, o.and_(acts, o.not_(q.gen_outstanding))))
    return Outcome(s1)


def _g_forward(c: Ctx, s: State, r: int, accepted: Term) -> Term:
    o, q = c.o, s.reqs[r]
    local = o.and_(
        s.stage == SETTLE, s.can_queue, in_final_batch(c, q), o.not_(q.ran), accepted >= 0,
        o.implies(q.phase == GENERATION, accepted <= q.draft_len),
        o.implies(q.phase != GENERATION, accepted == 0))
    if local is False:  # concrete reading: skip the O(slots) part
        return False
    return o.and_(local, o.not_(reverts_pending(c, s)))


@ACTIONS.action(guard=_g_forward, params=(
    Param("accepted", lo=0, hi=lambda k: k.max_draft_len),))
def forward(c: Ctx, s: State, r: int, accepted: Term) -> Outcome:
    """The forward step plus ``update_context_resources`` (context: pos advances, history =
    pos) or ``update_resources`` (generation: trim the rejected drafts, history += 1 + accepted,
    the draft record popped under ``pop_draft_record_on_update``); committed = history under
    ``commit_on_forward`` (block reuse on), else it stays 0 (``stop_committing``)."""
    o, q = c.o, s.reqs[r]
    new_pos = q.pos + context_tokens(c, q)
    commit = c.policy.commit_on_forward
    ctx_q = q._replace(pos=new_pos, history=new_pos, committed=new_pos if commit else q.committed,
                       ran=True, phase=o.ite(new_pos == q.prompt_len, GENERATION, CONTEXT))
    rec = o.ite(q.draft_record == NONE, q.draft_len, q.draft_record)
    new_cap = q.capacity - o.max(rec - accepted, 0)
    new_hist = q.history + 1 + accepted
    gen_q = q._replace(
        capacity=new_cap, history=new_hist, committed=new_hist if commit else q.committed,
        draft_record=NONE if c.policy.pop_draft_record_on_update else q.draft_record,
        gen_outstanding=False, ran=True)
    is_ctx = q.phase == CONTEXT
    released = o.ite(is_ctx, 0, o.blocks(q.capacity) - o.blocks(new_cap))
    s1 = with_req(s, r, merge(o, is_ctx, ctx_q, gen_q))._replace(
        gpu_free=s.gpu_free + released,
        v_gen_once=o.or_(s.v_gen_once, o.and_(o.not_(is_ctx), o.not_(q.gen_outstanding))))
    return Outcome(s1)


def _g_end_iteration(c: Ctx, s: State, r: int) -> Term:
    o = c.o
    if (s.stage == SETTLE) is False:  # concrete reading: skip the O(slots) part
        return False
    unforwarded = o.or_(*[o.and_(in_final_batch(c, q), o.not_(q.ran)) for q in s.reqs])
    if c.policy.gate_before_resume:  # every survivor's admission has been tried
        unforwarded = o.or_(unforwarded, *[o.and_(q.kept, o.not_(q.resized),
                                                  o.not_(q.resize_failed)) for q in s.reqs])
    return o.and_(s.stage == SETTLE, o.not_(reverts_pending(c, s)),
                  o.not_(o.and_(s.can_queue, unforwarded)))


_MARKS_RESET = MappingProxyType({m: False for m in ITERATION_MARKS})
"""The per-iteration marks, cleared by ``end_iteration``."""


@ACTIONS.action(guard=_g_end_iteration, per_request=False)
def end_iteration(c: Ctx, s: State, r: int) -> Outcome:
    """Iteration end and next start: check NO-DEFERRED-HOLD, GEN-EXACTLY-ONCE and
    DECISION-IS-ADMISSION, reset the per-iteration marks, clear snapshots under
    ``clear_snapshot_at_iteration_start``."""
    o, p = c.o, c.policy
    hold_bad: list[Term] = []
    gen_bad: list[Term] = []
    decision_bad: list[Term] = []
    reqs = []
    for q in s.reqs:
        now = pinned(o, q, p.host_tier)
        hold_bad.append(o.and_(q.resized, o.not_(q.ran), now > q.pinned_start))
        gen_bad.append(q.gen_outstanding)
        decision_bad.append(o.and_(s.can_queue, q.kept, o.not_(q.ran)))
        reset = q._replace(
            **_MARKS_RESET, snapshot=NONE if p.clear_snapshot_at_iteration_start else q.snapshot,
            snap_fresh=False, gen_outstanding=False, pinned_start=now)
        reqs.append(reset)
    s1 = s._replace(
        reqs=tuple(reqs), stage=SCHEDULE, can_queue=True, waited=False,
        v_deferred_hold=o.or_(s.v_deferred_hold, *hold_bad),
        v_gen_once=o.or_(s.v_gen_once, *gen_bad),
        v_decision=o.or_(s.v_decision, *decision_bad))
    return Outcome(s1)
