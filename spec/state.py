"""The model's state: one record per request slot plus the pool, the iteration stage and ghosts.

Counters that implementations store (pages per request, used pages) are derived here from
capacities (:func:`gpu_pages`, :func:`pinned`); the free counts are stored so that INV-CONSERVE
checks every action's page accounting. ``None`` (no snapshot, no draft record) is encoded as
:data:`NONE` = -1 so that z3 needs no option type. Fields marked *ghost* exist only to state
invariants (history variables); implementations are never asked for them.

Importing this module replaces ``_replace`` on :class:`Req` and :class:`State` (class
attributes, for every importer) with a faster one built by :func:`_replacer`: the same result
type, values and ``ValueError`` for an unknown field name as the namedtuple method, at about
half the cost (``tests/spec/test_walker_speed.py`` checks the equality).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .ops import Ops, Term

NONE = -1
"""Encodes ``None`` for ``py_ctx_pre_resize_cap`` and ``draft_record``."""

# phase
DONE, CONTEXT, GENERATION = 0, 1, 2
PHASE_NAMES = {DONE: "DONE", CONTEXT: "CONTEXT", GENERATION: "GENERATION"}
# cache status
ACTIVE, SUSPENDED = 0, 1
STATUS_NAMES = {ACTIVE: "ACTIVE", SUSPENDED: "SUSPENDED"}
# iteration stage
SCHEDULE, SETTLE = 0, 1
STAGE_NAMES = {SCHEDULE: "SCHEDULE", SETTLE: "SETTLE"}


class Req(NamedTuple):
    """One request slot (executor-side LlmRequest fields plus its manager-side ``_KVCache``)."""

    phase: Term = DONE
    prompt_len: Term = 0
    chunk_size: Term = 0
    draft_len: Term = 0
    pos: Term = 0  # context_current_position
    has_cache: Term = False
    status: Term = SUSPENDED
    never_resumed: Term = False
    host_pages: Term = 0  # pages of this cache on the host tier (0..blocks(capacity))
    capacity: Term = 0
    history: Term = 0
    committed: Term = 0
    snapshot: Term = NONE  # py_ctx_pre_resize_cap
    draft_record: Term = NONE  # _allocated_draft_lens[rid]
    reserved: Term = 0  # GPU pages reserved for the next chunk, not yet in the page table
    # per-iteration marks (the executor's sets S_ctx_sched, D, S_gen, ...)
    prepared: Term = False
    resized: Term = False
    resize_failed: Term = False
    gen_tried: Term = False
    gen_grown: Term = False
    dropped: Term = False
    ctx_reverted: Term = False
    gen_reverted: Term = False
    ran: Term = False
    kept: Term = False  # delay batching kept it (it was in the decision's input, no wait)
    # ghosts
    snap_fresh: Term = False  # the snapshot was written by a success in this iteration
    gen_outstanding: Term = False  # generation growth neither trimmed nor reverted yet
    pinned_start: Term = 0  # pinned GPU pages when the iteration started


class State(NamedTuple):
    """The whole model state. ``num_gpu_pages``, ``num_host_pages`` and ``max_rewind_len`` are
    constants carried in the state so that z3 treats them as arbitrary values."""

    reqs: tuple[Req, ...]
    stage: Term = SCHEDULE
    can_queue: Term = True
    waited: Term = False
    batch_wait_iters: Term = 0
    gpu_free: Term = 0
    host_free: Term = 0
    rest_gpu: Term = 0  # pages held by requests outside the model (abstract mode only)
    rest_evictable: Term = 0  # of which evictable (abstract mode only)
    rest_host: Term = 0  # host pages held by requests outside the model (abstract mode only)
    num_gpu_pages: Term = 0
    num_host_pages: Term = 0
    max_rewind_len: Term = 0
    # ghost violation flags (sticky)
    v_len: Term = False  # a shrink below history was attempted (refused)
    v_atomic: Term = False
    v_stale_snapshot: Term = False
    v_revert_floor: Term = False
    v_suspend_precap: Term = False
    v_gen_once: Term = False
    v_swa_rewind: Term = False
    v_deferred_hold: Term = False
    v_resume_gate: Term = False
    v_decision: Term = False  # a kept context request of a queued batch did not run
    v_budget: Term = False  # a decision counted a request whose admission was not known


REQ_BOOL_FIELDS = frozenset(
    name for name, default in Req._field_defaults.items() if isinstance(default, bool))
STATE_BOOL_FIELDS = frozenset(
    name for name, default in State._field_defaults.items() if isinstance(default, bool))
GHOST_REQ_FIELDS = ("snap_fresh", "gen_outstanding", "pinned_start")
ITERATION_MARKS = ("prepared", "resized", "resize_failed", "gen_tried", "gen_grown", "dropped",
                   "ctx_reverted", "gen_reverted", "ran", "kept")


def _replacer(cls: type) -> Any:
    """A ``_replace`` for the record class ``cls`` with the namedtuple one's result and
    errors, at about half its cost: every guard, effect and merge builds records with it
    (the generic one pops every field name from the keywords, through two Python frames)."""
    position = {name: i for i, name in enumerate(cls._fields)}  # type: ignore[attr-defined]
    new = tuple.__new__

    def _replace(self: Any, /, **changes: Any) -> Any:
        values = list(self)
        try:
            for name, value in changes.items():
                values[position[name]] = value
        except KeyError:
            raise ValueError(
                f"Got unexpected field names: {[n for n in changes if n not in position]!r}"
            ) from None
        return new(type(self), values)

    return _replace


Req._replace = _replacer(Req)  # type: ignore[method-assign]
State._replace = _replacer(State)  # type: ignore[method-assign]


def merge(o: Ops, cond: Term, a: Any, b: Any) -> Any:
    """``a`` if ``cond`` else ``b``, field by field for records (concrete: picks one whole)."""
    if isinstance(cond, bool):
        return a if cond else b
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        return type(a)(*(merge(o, cond, x, y) for x, y in zip(a, b)))
    if isinstance(a, tuple):
        return tuple(merge(o, cond, x, y) for x, y in zip(a, b))
    if a is b:
        return a
    return o.ite(cond, a, b)


def with_req(s: State, r: int, q: Req) -> State:
    """``s`` with request slot ``r`` replaced by ``q``."""
    reqs = list(s.reqs)
    reqs[r] = q
    return s._replace(reqs=tuple(reqs))


def gpu_pages(o: Ops, q: Req) -> Term:
    """GPU pages held by the cache of ``q``: its pages not on the host tier, plus the pages
    reserved for it (two-phase reservation, ``reserve_context``)."""
    return o.ite(q.has_cache, o.blocks(q.capacity) - q.host_pages + q.reserved, 0)


def host_held(o: Ops, q: Req) -> Term:
    """Host-tier pages held by the cache of ``q``."""
    return o.ite(q.has_cache, q.host_pages, 0)


def pinned(o: Ops, q: Req, host_tier: bool) -> Term:
    """GPU pages ``q`` pins: those of an ACTIVE cache, and those no lower tier can take."""
    holds = q.status == ACTIVE if host_tier else True
    return o.ite(o.and_(q.has_cache, holds), o.blocks(q.capacity) - q.host_pages + q.reserved,
                 0)


def evictable_pages(o: Ops, q: Req, host_tier: bool) -> Term:
    """GPU pages of ``q`` that eviction may demote: those of a SUSPENDED cache (HELD, not
    locked) when a host tier exists (TRT ``StorageManager.is_evictable``)."""
    if not host_tier:
        return 0
    return o.ite(o.and_(q.has_cache, q.status == SUSPENDED), o.blocks(q.capacity) - q.host_pages,
                 0)


def evictable(o: Ops, s: State, host_tier: bool) -> Term:
    """GPU pages that eviction could free: every suspended cache's GPU pages (tracked slots
    only; callers add ``rest_evictable``)."""
    total: Term = 0
    for q in s.reqs:
        total = total + evictable_pages(o, q, host_tier)
    return total


def initial_state(num_requests: int, num_gpu_pages: Term, num_host_pages: Term,
                  max_rewind_len: Term, host_tier: bool) -> State:
    """All slots empty, every page free, first iteration in its SCHEDULE stage."""
    return State(
        reqs=tuple(Req() for _ in range(num_requests)),
        gpu_free=num_gpu_pages,
        host_free=num_host_pages if host_tier else 0,
        num_gpu_pages=num_gpu_pages,
        num_host_pages=num_host_pages if host_tier else 0,
        max_rewind_len=max_rewind_len,
    )
