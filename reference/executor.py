"""One PyExecutor iteration with the KV-cache-V2 scheduler (sections 2.5, 2.6 and 3 of the
semantics note) over reference managers, one per attention-DP rank. Requests arrive, are
scheduled under token/request budgets, may be deferred, reverted, forwarded and finish."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvspec.config import Config
from kvspec.errors import InvalidArgument, ProtocolError
from kvspec.policy import Policy

from .balance import AdpCounters, RankLoad, adp_balance, batch_wait
from .cache import CacheStatus
from .manager import ReferenceKVCacheManager
from .request import LlmRequest, RequestState


@dataclass(frozen=True)
class IterationResult:
    """What one rank did in one iteration (request ids, in scheduling order; ``evicted``:
    requests some of whose GPU pages the manager demoted to the host during the scheduler
    pass, in first-demotion order)."""

    iteration: int
    rank: int
    scheduled: tuple[int, ...]
    dropped: tuple[int, ...]
    reverted: tuple[int, ...]
    can_queue: bool
    forwarded: tuple[int, ...]
    finished: tuple[int, ...]
    waited: bool = False
    suspended: tuple[int, ...] = ()
    evicted: tuple[int, ...] = ()
    recompute_paused: tuple[int, ...] = ()
    failed_resize: tuple[int, ...] = ()
    accepted: tuple[tuple[int, int], ...] = ()


@dataclass
class _Pass:
    """One rank's scheduler output and per-iteration marks."""

    gen: list[LlmRequest] = field(default_factory=list)
    ctx: list[tuple[LlmRequest, int]] = field(default_factory=list)
    tried_gen: list[LlmRequest] = field(default_factory=list)
    failed_resize: list[LlmRequest] = field(default_factory=list)
    suspended: list[int] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)
    paused: list[int] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)

    def load(self) -> RankLoad:
        tokens = sum(n for _, n in self.ctx) + sum(1 + q.draft_len for q in self.gen)
        return RankLoad(len(self.ctx), len(self.gen), tokens, len(self.gen))


class _Rank:
    """One attention-DP rank: its manager, live requests (list order = priority) and queues."""

    __slots__ = ("adp", "batch_wait_iters", "finishing", "manager", "requests", "waiting")

    def __init__(self, manager: ReferenceKVCacheManager) -> None:
        self.manager = manager
        self.requests: list[LlmRequest] = []
        self.waiting: deque[LlmRequest] = deque()
        self.finishing: list[LlmRequest] = []
        self.batch_wait_iters = 0
        self.adp = AdpCounters()


class ReferenceExecutor:
    """A deterministic, in-process PyExecutor loop over ``num_ranks`` reference managers.

    Each :meth:`step` is one iteration on every rank: free the previous iteration's finished
    requests and admit arrivals (SCHEDULE), the V2 scheduler pass per rank, the delay-batching
    decision (ADP balance over all ranks when ``config.attention_dp``, else batch waiting) and
    ``can_queue``, then the reverts the policy requires and the forward with a seeded number
    of accepted draft tokens (SETTLE). Cost: O(live requests) manager calls per iteration.

    NOTE: victims are suspended *before* the one ``try_allocate_generation``/``resize_context``
    call of a request, until :meth:`ReferenceKVCacheManager.num_available_gpu_pages` covers
    its need (TRT retries after each suspension), so every request is tried at most once per
    iteration. The executor never demotes pages itself: the manager evicts suspended caches'
    GPU pages to the host implicitly when a growth or resume needs them (``evicted`` reports
    whose). Recompute-pause frees a started victim's cache with
    ``free_resources`` and rewinds it to position 0 (protocol: free, then a re-arrival); for a
    victim still in its context phase this is outside ``free_resources``'s protocol guard
    (GENERATION only), as in TRT.
    """

    def __init__(self, config: Config, policy: Policy, *, num_ranks: int = 1, seed: int = 0,
                 enable_recompute_pause: bool = True, adp_timeout_iters: int = 50,
                 adp_batching_wait_iters: int = 10, batch_growth: bool = True,
                 manager_factory: Callable[[Config, Policy], ReferenceKVCacheManager] | None
                 = None) -> None:
        """Create the ranks, each with an empty manager.

        ``manager_factory(config, policy)`` builds each rank's manager (default the reference
        manager); any object with the reference manager's methods works (kvspec.simulate
        passes the torch manager behind an id-to-slot adapter).

        Raises:
            InvalidArgument: ``num_ranks`` < 1, or ``num_ranks`` > 1 without attention DP.
        """
        if num_ranks < 1 or (num_ranks > 1 and not config.attention_dp):
            raise InvalidArgument(
                f"ReferenceExecutor: num_ranks={num_ranks} needs num_ranks >= 1, and"
                " config.attention_dp=True when num_ranks > 1")
        self.config = config
        self.policy = policy
        self.enable_recompute_pause = enable_recompute_pause
        self.adp_timeout_iters = adp_timeout_iters
        self.adp_batching_wait_iters = adp_batching_wait_iters
        self.batch_growth = batch_growth
        self._rng = random.Random(seed)
        make = ReferenceKVCacheManager if manager_factory is None else manager_factory
        self._ranks = [_Rank(make(config, policy)) for _ in range(num_ranks)]
        self._ids: set[int] = set()
        self.iteration = 0

    # ------------------------------------------------------------------------------------
    # arrivals and observation

    @property
    def managers(self) -> tuple[ReferenceKVCacheManager, ...]:
        """One manager per rank."""
        return tuple(r.manager for r in self._ranks)

    def live_requests(self, rank: int = 0) -> tuple[LlmRequest, ...]:
        """Requests admitted on ``rank`` and not finished, in priority order."""
        return tuple(self._ranks[rank].requests)

    def num_unfinished(self) -> int:
        """Requests queued, live or finished but not yet freed, over all ranks."""
        return sum(len(r.requests) + len(r.waiting) + len(r.finishing) for r in self._ranks)

    def add_request(self, req: LlmRequest, rank: int | None = None) -> int:
        """Queue a new request; it is admitted at the start of a later :meth:`step`.

        Args:
            req: A fresh CONTEXT_INIT request at position 0.
            rank: Target rank; default the rank with the fewest unfinished requests.

        Returns:
            The rank it was queued on.

        Raises:
            InvalidArgument: bad rank, or a chunk larger than ``max_num_tokens``.
            ProtocolError: a duplicate request id or a request that has already started.
        """
        if req.request_id in self._ids:
            raise ProtocolError(f"add_request: request id {req.request_id} is already queued or"
                                " live; use a new id")
        if req.state != RequestState.CONTEXT_INIT or req.context_current_position != 0:
            raise ProtocolError(f"add_request: request {req.request_id} has started; add new"
                                " requests at position 0 in CONTEXT_INIT")
        if req.context_chunk_size > self.config.max_num_tokens:
            raise InvalidArgument(
                f"add_request: request {req.request_id} context_chunk_size="
                f"{req.context_chunk_size} exceeds max_num_tokens={self.config.max_num_tokens};"
                " it could never be scheduled")
        if rank is None:
            rank = min(range(len(self._ranks)), key=lambda i: (
                len(self._ranks[i].requests) + len(self._ranks[i].waiting), i))
        if not 0 <= rank < len(self._ranks):
            raise InvalidArgument(f"add_request: rank={rank} is outside 0..{len(self._ranks) - 1}")
        self._ids.add(req.request_id)
        self._ranks[rank].waiting.append(req)
        return rank

    # ------------------------------------------------------------------------------------
    # reverts (the executor-level policy check)

    def revert_context(self, rank: int, req: LlmRequest, reason: str) -> bool | None:
        """Call ``revert_allocate_context`` when the policy requires it for ``reason``.

        Args:
            reason: ``"deferred"`` (revert_deferred_context), ``"skip"``
                (revert_context_on_skip) or ``"failed_resize"`` (rollback_failed_resize).

        Returns:
            The manager's result (False: the FREE branch dropped the cache; None from every
            branch without ``free_branch_rewinds``).

        Raises:
            ProtocolError: the policy does not revert for ``reason``; nothing changes.
        """
        switch = {"deferred": "revert_deferred_context", "skip": "revert_context_on_skip",
                  "failed_resize": "rollback_failed_resize"}.get(reason)
        if switch is None or not getattr(self.policy, switch):
            raise ProtocolError(
                f"revert_context: policy {self.policy.name!r} does not revert context growth"
                f" for reason {reason!r} (switch {switch or 'unknown'} is off); do not call it")
        return self._ranks[rank].manager.revert_allocate_context(req)

    def revert_generation(self, rank: int, req: LlmRequest) -> None:
        """Call ``revert_allocate_generation`` (can_queue skip) when the policy allows it.

        Raises:
            ProtocolError: ``revert_generation_on_skip`` is off; nothing changes.
        """
        if not self.policy.revert_generation_on_skip:
            raise ProtocolError(
                f"revert_generation: policy {self.policy.name!r} has revert_generation_on_skip"
                " off; generation growth is kept on a can_queue skip")
        self._ranks[rank].manager.revert_allocate_generation(req)

    # ------------------------------------------------------------------------------------
    # the iteration

    def step(self) -> tuple[IterationResult, ...]:
        """Run one iteration on every rank; returns one result per rank."""
        self.iteration += 1
        for rank in self._ranks:
            self._start(rank)
        passes = [self._schedule(rank) for rank in self._ranks]
        waits = self._decide(passes)
        sizes = [len(p.gen) + (0 if w else len(p.ctx)) for p, w in zip(passes, waits, strict=True)]
        if self.config.attention_dp:
            anyone = any(r.requests for r in self._ranks)
            padded = [s if s or r.requests or not anyone else 1   # ADP dummy request
                      for s, r in zip(sizes, self._ranks, strict=True)]
            can_queue = [all(padded)] * len(self._ranks)
        else:
            can_queue = [s > 0 for s in sizes]
        return tuple(self._settle(i, rank, p, w, q) for i, (rank, p, w, q) in enumerate(
            zip(self._ranks, passes, waits, can_queue, strict=True)))

    def run(self, max_iterations: int) -> list[tuple[IterationResult, ...]]:
        """Step until nothing is unfinished or ``max_iterations`` steps; returns the results."""
        out: list[tuple[IterationResult, ...]] = []
        while self.num_unfinished() and len(out) < max_iterations:
            out.append(self.step())
        return out

    def _start(self, rank: _Rank) -> None:
        """Iteration start: free last iteration's finished requests, admit arrivals."""
        for req in rank.finishing:
            rank.manager.free_resources(req)
            req.state = RequestState.GENERATION_COMPLETE
            self._ids.discard(req.request_id)
        rank.finishing.clear()
        while rank.waiting and len(rank.requests) < self.config.num_requests:
            rank.requests.append(rank.waiting.popleft())
        if self.policy.clear_snapshot_at_iteration_start:
            for req in rank.requests:
                req.py_ctx_pre_resize_cap = None

    def _schedule(self, rank: _Rank) -> _Pass:
        """Models ``KVCacheV2Scheduler.schedule_request``: generation first, then context."""
        mgr, cfg, p = rank.manager, self.config, _Pass()
        mgr.pop_demoted()                          # demotions outside this pass: not ours
        tokens_left, slots_left = cfg.max_num_tokens, cfg.max_batch_size
        reqs = rank.requests
        blocks = cfg.blocks
        grows: list[LlmRequest] = []       # growths from free pages: one batch call
        grow_pages = 0                     # the free pages they will take
        for i, req in enumerate(reqs):
            if slots_left == 0:
                break
            if req.state != RequestState.GENERATION_IN_PROGRESS or req.request_id in p.touched:
                continue
            cost = 1 + req.draft_len
            if cost > tokens_left:
                break
            rid = req.request_id
            need = mgr.generation_pages_needed(req)
            if (self.batch_growth and need <= mgr.num_free_gpu_pages - grow_pages
                    and mgr.get_status(rid) == CacheStatus.ACTIVE):
                grows.append(req)              # cannot fail, evicts nothing: deferred
                grow_pages += need
                p.touched.add(rid)
                p.tried_gen.append(req)
                p.gen.append(req)
                tokens_left -= cost
                slots_left -= 1
                continue
            self._grow_from_free(mgr, grows)
            grows, grow_pages = [], 0
            if need > 0 and mgr.num_available_gpu_pages(rid) < need and not self._make_room(
                    rank, p, req, need, reqs[i + 1:]):
                if mgr.get_status(rid) == CacheStatus.ACTIVE:   # self-eviction
                    mgr.suspend_request(req)
                    p.suspended.append(rid)
                p.touched.add(rid)
                break
            p.touched.add(rid)
            p.tried_gen.append(req)
            if not mgr.try_allocate_generation(req):
                break
            p.gen.append(req)
            tokens_left -= cost
            slots_left -= 1
        self._grow_from_free(mgr, grows)
        for i, req in enumerate(reqs):
            if slots_left == 0:
                break
            rid = req.request_id
            if req.state != RequestState.CONTEXT_INIT or rid in p.touched:
                continue
            n = req.num_context_tokens()
            if n > tokens_left:
                break
            p.touched.add(rid)
            if self.policy.gate_before_resume:
                # the rejected alternative: a candidate (cache created, no GPU work) charged
                # to the budget; resume + resize only if it survives the decision (_settle)
                mgr.prepare_context(req)
                p.ctx.append((req, n))
                tokens_left -= n
                slots_left -= 1
                continue
            need = 0
            if mgr.has_cache(rid):
                cap = mgr.get_capacity(rid)
                need = mgr.get_host_pages(rid)
            else:
                cap = 0
            need += blocks(max(cap, req.context_current_position + req.context_resize_tokens()))
            need -= blocks(cap)
            if mgr.num_available_gpu_pages(rid) < need:
                self._make_room(rank, p, req, need, reqs[i + 1:])
            if not mgr.prepare_context(req):
                continue
            if mgr.resize_context(req, req.context_resize_tokens()):
                p.ctx.append((req, n))
                tokens_left -= n
                slots_left -= 1
                continue
            p.failed_resize.append(req)
            if not self.policy.host_tier:
                break
        p.evicted.extend(mgr.pop_demoted())
        return p

    @staticmethod
    def _grow_from_free(mgr: ReferenceKVCacheManager, reqs: list[LlmRequest]) -> None:
        """``try_allocate_generation`` of ACTIVE caches whose growths, together, fit in the
        free GPU pages, as one ``try_allocate_generation_batch`` call when the manager has
        one (the torch manager: one vectorized call), else one call each in list order.

        Deferring them (to the end of the generation pass, or to the first request that
        does not join them) changes nothing the pass sees or does: each would have found its
        pages free, so none is refused or evicts, and the batch pops the same pages in the
        same order; every decision in between is about requests that take no page.
        Cost: the manager's calls.

        Raises:
            ProtocolError: the manager refused one of them (a manager bug: the pass has
                already counted them as scheduled).
        """
        if not reqs:
            return
        batch = getattr(mgr, "try_allocate_generation_batch", None)
        ok = batch(reqs) if batch is not None else [mgr.try_allocate_generation(q)
                                                    for q in reqs]
        refused = [q.request_id for q, good in zip(reqs, ok, strict=True) if not good]
        if refused:
            raise ProtocolError(
                f"try_allocate_generation refused requests {refused}, whose growths fit in the"
                " free GPU pages of an ACTIVE cache; the manager must grant them")

    def _make_room(self, rank: _Rank, p: _Pass, req: LlmRequest, need: int,
                   later: Sequence[LlmRequest]) -> bool:
        """Phase-1 eviction for ``req``: with a host tier suspend victims from the tail (their
        GPU pages become evictable; the manager demotes them when ``req`` needs them), then
        recompute-pause victims, until ``need`` pages are available to ``req``. Only requests
        after ``req`` in the list are victims (INV-EVICT-ORDER)."""
        mgr = rank.manager
        rid = req.request_id
        if mgr.num_available_gpu_pages(rid) >= need:
            return True
        if self.policy.host_tier:
            for victim in reversed(later):
                vid = victim.request_id
                if (vid in p.touched or not mgr.has_cache(vid)
                        or mgr.get_status(vid) != CacheStatus.ACTIVE
                        or (victim.is_context and victim.context_current_position == 0)):
                    continue
                mgr.suspend_request(victim)
                p.suspended.append(vid)
                p.touched.add(vid)
                if mgr.num_available_gpu_pages(rid) >= need:
                    return True
        if self.enable_recompute_pause:
            for victim in reversed(later):
                if self._pausable(mgr, p, victim):
                    self._recompute_pause(mgr, p, victim)
                    if mgr.num_available_gpu_pages(rid) >= need:
                        return True
        return False

    def _pausable(self, mgr: ReferenceKVCacheManager, p: _Pass, req: LlmRequest) -> bool:
        """A started victim not touched this pass whose cache holds GPU pages."""
        rid = req.request_id
        started = req.state == RequestState.GENERATION_IN_PROGRESS or (
            req.state == RequestState.CONTEXT_INIT and req.context_current_position > 0)
        return (started and rid not in p.touched and mgr.has_cache(rid)
                and self.config.blocks(mgr.get_capacity(rid)) > mgr.get_host_pages(rid))

    def _recompute_pause(self, mgr: ReferenceKVCacheManager, p: _Pass, req: LlmRequest) -> None:
        """Free a started victim's cache; it replays its prompt later (a re-arrival)."""
        mgr.free_resources(req)
        req.state = RequestState.CONTEXT_INIT
        req.context_current_position = 0
        req.py_ctx_pre_resize_cap = None
        p.paused.append(req.request_id)
        p.touched.add(req.request_id)

    def _decide(self, passes: list[_Pass]) -> list[bool]:
        """Delay batching: ADP balance over the all-gathered loads, else batch waiting."""
        cfg = self.config
        if cfg.attention_dp:
            gathered = [p.load() for p in passes]          # the simulated all-gather
            waits = []
            for rank in self._ranks:                       # every rank decides on its own
                wait, rank.adp = adp_balance(gathered, rank.adp, cfg.max_batch_size,
                                             self.adp_timeout_iters,
                                             self.adp_batching_wait_iters)
                waits.append(wait)
            return waits
        waits = []
        for rank, p in zip(self._ranks, passes, strict=True):
            load = p.load()
            wait = cfg.batch_waiting_enabled and batch_wait(
                sum(n for _, n in p.ctx), load.num_tokens - sum(n for _, n in p.ctx),
                bool(p.ctx), bool(p.gen), rank.batch_wait_iters, cfg.batch_wait_timeout_iters,
                cfg.batch_wait_max_tokens_ratio, cfg.max_num_tokens)
            if cfg.batch_waiting_enabled:
                rank.batch_wait_iters = rank.batch_wait_iters + 1 if wait else 0
            waits.append(wait)
        return waits

    def _settle(self, index: int, rank: _Rank, p: _Pass, wait: bool,
                can_queue: bool) -> IterationResult:
        """The policy's reverts, then (when can_queue) forward and resource updates."""
        mgr, pol = rank.manager, self.policy
        dropped = [q for q, _ in p.ctx] if wait else []
        reverted: list[int] = []
        if pol.revert_deferred_context:
            for q in dropped:
                self.revert_context(index, q, "deferred")
                reverted.append(q.request_id)
        if not can_queue:
            if pol.revert_context_on_skip and not wait:
                for q, _ in p.ctx:
                    self.revert_context(index, q, "skip")
                    reverted.append(q.request_id)
            if pol.revert_generation_on_skip:
                for q in p.tried_gen:
                    self.revert_generation(index, q)
                    reverted.append(q.request_id)
        if pol.rollback_failed_resize:
            for q in p.failed_resize:
                self.revert_context(index, q, "failed_resize")
                reverted.append(q.request_id)
        forwarded: list[int] = []
        finished: list[int] = []
        accepted: list[tuple[int, int]] = []
        if can_queue:
            final_ctx = [] if wait else p.ctx
            if pol.gate_before_resume:          # the survivors' resume + resize, after the
                admitted = []                   # decision: a failure takes them out of it
                for q, n in final_ctx:
                    if mgr.resize_context(q, q.context_resize_tokens()):
                        admitted.append((q, n))
                    else:
                        p.failed_resize.append(q)
                final_ctx = admitted
            if pol.reserve_context:             # phase 2: the queued batch's reservations
                for q, _ in final_ctx:
                    mgr.commit_context(q)
            for q, n in final_ctx:
                q.context_current_position += n
            mgr.update_context_resources([q for q, _ in final_ctx])
            for q, _ in final_ctx:
                forwarded.append(q.request_id)
                if q.context_current_position == q.prompt_len:
                    q.state = RequestState.GENERATION_IN_PROGRESS
                    if q.max_new_tokens == 0:   # the last chunk's token was its only one
                        finished.append(q.request_id)
                        rank.finishing.append(q)
            rng = self._rng
            draw = rng.random
            acc = [int(draw() * (q.draft_len + 1)) if q.draft_len else 0 for q in p.gen]
            mgr.update_resources(p.gen, acc)
            for q, a in zip(p.gen, acc, strict=True):
                forwarded.append(q.request_id)
                accepted.append((q.request_id, a))
                q.num_generated_tokens += 1 + a
                if q.num_generated_tokens >= q.max_new_tokens:
                    finished.append(q.request_id)
                    rank.finishing.append(q)
            if finished:
                done = set(finished)
                rank.requests = [q for q in rank.requests if q.request_id not in done]
        return IterationResult(
            iteration=self.iteration, rank=index,
            scheduled=tuple(q.request_id for q, _ in p.ctx) + tuple(q.request_id for q in p.gen),
            dropped=tuple(q.request_id for q in dropped), reverted=tuple(reverted),
            can_queue=can_queue, forwarded=tuple(forwarded), finished=tuple(finished),
            waited=wait, suspended=tuple(p.suspended), evicted=tuple(p.evicted),
            recompute_paused=tuple(p.paused),
            failed_resize=tuple(q.request_id for q in p.failed_resize), accepted=tuple(accepted))
