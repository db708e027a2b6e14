"""The invariants: named "always" properties, each with a "sometimes" witness.

Names are TensorRT-LLM-derived ids (``INV-LEN``) plus a sentence-like name
(``committed_le_history_le_capacity``). Properties that speak about a transition (a revert, a
failed action, an iteration end) read ghost flags the actions set, so every property is a
predicate over one state and z3 checks it by induction. Witnesses are predicates over a
transition (before, after); a model in which a witness is never reached is vacuous for that
property and the tests fail loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvspec.errors import InvalidArgument
from kvspec.policy import Policy

from .ops import Term
from .registry import Ctx
from .state import ACTIVE, CONTEXT, NONE, SETTLE, SUSPENDED, State, gpu_pages, host_held


@dataclass(frozen=True)
class Property:
    """An "always" property with its "sometimes" witness.

    ``check(c, s)`` must hold in every reachable state; ``witness(c, before, after)`` must hold
    on some reachable transition whenever ``applies(policy)``.
    """

    id: str
    name: str
    doc: str
    check: Callable[[Ctx, State], Term]
    witness_name: str
    witness: Callable[[Ctx, State, State], Term]
    applies: Callable[[Policy], bool] = lambda p: True


def _any(c: Ctx, s: State, f: Callable[[int], Term]) -> Term:
    return c.o.or_(*[f(r) for r in range(len(s.reqs))])


def _all(c: Ctx, s: State, f: Callable[[int], Term]) -> Term:
    return c.o.and_(*[f(r) for r in range(len(s.reqs))])


def _newly(c: Ctx, a: State, b: State, r: int, mark: str) -> Term:
    return c.o.and_(getattr(b.reqs[r], mark), c.o.not_(getattr(a.reqs[r], mark)))


def _len(c: Ctx, s: State) -> Term:
    o = c.o
    return o.and_(o.not_(s.v_len), _all(c, s, lambda r: o.implies(
        s.reqs[r].has_cache,
        o.and_(0 <= s.reqs[r].committed, s.reqs[r].committed <= s.reqs[r].history,
               s.reqs[r].history <= s.reqs[r].capacity))))


def _conserve(c: Ctx, s: State) -> Term:
    o = c.o
    used_gpu: Term = s.rest_gpu
    used_host: Term = s.rest_host
    for q in s.reqs:
        used_gpu = used_gpu + gpu_pages(o, q)
        used_host = used_host + host_held(o, q)
    return o.and_(s.gpu_free >= 0, s.host_free >= 0,
                  s.gpu_free + used_gpu == s.num_gpu_pages,
                  s.host_free + used_host == s.num_host_pages)


def _any_revert(p: Policy) -> bool:
    return p.revert_deferred_context or p.revert_context_on_skip or p.rollback_failed_resize


def _shrinks_context(p: Policy) -> bool:
    """Whether a revert can shrink a context cache: some revert on, growth in the cache
    (the two-phase reservation releases reserved pages and shrinks nothing)."""
    return _any_revert(p) and not p.reserve_context


def _flag(field: str) -> Callable[[Ctx, State], Term]:
    return lambda c, s: c.o.not_(getattr(s, field))


PROPERTIES: tuple[Property, ...] = (
    Property(
        "INV-LEN", "committed_le_history_le_capacity",
        "Per cache: 0 <= committed <= history <= capacity, and no shrink below history is "
        "attempted (pages held = ceil(capacity / B) is derived in the model and checked in "
        "implementations).",
        _len,
        "a cache holds capacity beyond its history",
        lambda c, a, b: _any(c, b, lambda r: c.o.and_(
            b.reqs[r].has_cache, b.reqs[r].capacity > b.reqs[r].history,
            b.reqs[r].history > 0))),
    Property(
        "INV-CONSERVE", "free_plus_held_equals_total",
        "Per tier: free pages + pages held by caches (+ pages of requests outside the model) "
        "== total, and free >= 0.",
        _conserve,
        "the GPU pool runs out",
        lambda c, a, b: c.o.and_(b.gpu_free == 0, _any(c, b, lambda r: b.reqs[r].capacity > 0))),
    Property(
        "INV-ATOMIC", "failed_action_changes_nothing",
        "prepare_context, resize_context, try_allocate_generation and resume_request returning "
        "False leave capacity, history, committed, pos and the draft record unchanged, and a "
        "revert that raises leaves its request unchanged (snapshot and draft record included).",
        _flag("v_atomic"),
        "an allocation fails",
        lambda c, a, b: _any(c, b, lambda r: c.o.or_(
            _newly(c, a, b, r, "resize_failed"),
            c.o.and_(_newly(c, a, b, r, "gen_tried"), c.o.not_(b.reqs[r].gen_grown))))),
    Property(
        "NO-STALE-SNAPSHOT", "revert_consumes_only_fresh_snapshot",
        "revert_allocate_context only consumes a py_ctx_pre_resize_cap written by a successful "
        "resize_context in the same iteration.",
        _flag("v_stale_snapshot"),
        "a revert consumes a snapshot",
        lambda c, a, b: _any(c, b, lambda r: c.o.and_(
            _newly(c, a, b, r, "ctx_reverted"), a.reqs[r].snapshot != NONE)),
        _shrinks_context),
    Property(
        "REVERT-FLOOR", "revert_lands_exactly_on_pre_cap",
        "A SHRINK revert lands exactly on the snapshot, never below it, never below history.",
        _flag("v_revert_floor"),
        "a revert shrinks a cache",
        lambda c, a, b: _any(c, b, lambda r: c.o.and_(
            _newly(c, a, b, r, "ctx_reverted"), b.reqs[r].has_cache,
            b.reqs[r].capacity < a.reqs[r].capacity)),
        _shrinks_context),
    Property(
        "SUSPEND-PRECAP", "revert_suspends_only_if_pre_cap_positive",
        "A SHRINK revert suspends the cache iff the snapshot is > 0.",
        _flag("v_suspend_precap"),
        "a revert suspends a cache",
        lambda c, a, b: _any(c, b, lambda r: c.o.and_(
            _newly(c, a, b, r, "ctx_reverted"), b.reqs[r].has_cache,
            a.reqs[r].status == ACTIVE, b.reqs[r].status == SUSPENDED)),
        _any_revert),
    Property(
        "GEN-EXACTLY-ONCE", "generation_growth_given_back_once",
        "Each generation growth is trimmed by one update_resources or reverted, exactly once, "
        "within its iteration.",
        _flag("v_gen_once"),
        "generation growth is reverted",
        lambda c, a, b: _any(c, b, lambda r: c.o.and_(
            _newly(c, a, b, r, "gen_reverted"), b.reqs[r].capacity < a.reqs[r].capacity)),
        lambda p: p.revert_generation_on_skip),
    Property(
        "SWA-REWIND", "shrink_stays_within_rewind_window",
        "Under SWA scratch reuse every shrink of a context-phase cache keeps "
        "capacity - max_rewind_len <= history.",
        _flag("v_swa_rewind"),
        "a context cache shrinks under scratch reuse",
        lambda c, a, b: _any(c, b, lambda r: c.o.and_(
            a.reqs[r].phase == CONTEXT, b.reqs[r].has_cache,
            b.reqs[r].capacity < a.reqs[r].capacity)),
        lambda p: p.swa_scratch_reuse and _shrinks_context(p)),
    Property(
        "NO-DEFERRED-HOLD", "deferred_request_pins_no_new_pages",
        "At iteration end a context request that resize_context grew but that did not run pins "
        "no more GPU pages (ACTIVE, or with no lower tier) than when the iteration started.",
        _flag("v_deferred_hold"),
        "a grown context request does not run",
        lambda c, a, b: c.o.and_(a.stage == SETTLE, b.stage != SETTLE, _any(
            c, a, lambda r: c.o.and_(a.reqs[r].resized, c.o.not_(a.reqs[r].ran)))),
        # under the gate only the queued survivors grow, and they run: vacuous by design
        lambda p: not p.gate_before_resume),
    Property(
        "RESUME-GATE", "resume_only_below_max_util",
        "resume succeeds only if GPU utilization <= max_util_for_resume at call time.",
        _flag("v_resume_gate"),
        "a resume is refused",
        lambda c, a, b: _any(c, b, lambda r: c.o.and_(
            _newly(c, a, b, r, "prepared"), b.reqs[r].has_cache,
            b.reqs[r].status == SUSPENDED))),
    Property(
        "DECISION-IS-ADMISSION", "kept_context_request_is_forwarded",
        "Every context request that delay batching keeps in an iteration whose batch is queued "
        "(can_queue) is forwarded in that iteration: no resume or resize failure after the "
        "decision takes it out.",
        _flag("v_decision"),
        "delay batching keeps a context request in a queued batch",
        lambda c, a, b: c.o.and_(a.stage != SETTLE, b.stage == SETTLE, b.can_queue, _any(
            c, b, lambda r: b.reqs[r].kept))),
    Property(
        "BUDGET-CONSISTENT", "decision_counts_only_admitted_requests",
        "Every context request the scheduler pass counts against the iteration's token and "
        "page budget, up to and including the delay-batching decision, is admitted when it is "
        "counted: its resume and resize returned True, or (a design that counts first) they "
        "would succeed on the pool as it is then. No budget decision counts a request that "
        "cannot run.",
        _flag("v_budget"),
        "the decision counts a context request",
        lambda c, a, b: c.o.and_(a.stage != SETTLE, b.stage == SETTLE, _any(
            c, b, lambda r: c.o.or_(b.reqs[r].kept, b.reqs[r].dropped)))),
)

PROPERTY_IDS: tuple[str, ...] = tuple(p.id for p in PROPERTIES)


def get_property(name: str) -> Property:
    """The property with id or sentence-name ``name`` (case-insensitive)."""
    key = name.strip().upper()
    for p in PROPERTIES:
        if key in (p.id, p.name.upper()):
            return p
    raise InvalidArgument(f"unknown invariant {name!r}; known: {', '.join(PROPERTY_IDS)}")
