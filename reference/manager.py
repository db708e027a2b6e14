"""The CPU reference KV cache manager: TensorRT-LLM ``KVCacheManagerV2``'s per-request
capacity protocol (docs/protocol.md) over real page ids. Every operation validates its
arguments before it mutates anything, so a raising call leaves the manager as it was."""

from __future__ import annotations

from collections.abc import Sequence

from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvariantViolation, ProtocolError
from kvspec.policy import Policy

from .cache import GPU_TIER, HOST_TIER, CacheStatus, KVCache, PageState
from .integrity import check_integrity
from .pool import PagePool
from .request import LlmRequest, RequestState

ACTIVE = CacheStatus.ACTIVE
SUSPENDED = CacheStatus.SUSPENDED
_CONTEXT = RequestState.CONTEXT_INIT
_GENERATION = RequestState.GENERATION_IN_PROGRESS

StateSnapshot = tuple[object, ...]


class ReferenceKVCacheManager:
    """Per-request KV capacity over a GPU page pool and an optional host tier.

    State: ``request_id -> KVCache`` (``kv_cache_map`` in TRT), the draft record
    ``_allocated_draft_lens``, two :class:`PagePool` free lists and the SUSPENDED caches in
    suspension order (least recently suspended first). The number of GPU pages held by
    SUSPENDED caches is kept as a counter, so the resume gate is O(1).

    Each page table entry is on the GPU or on the host tier. With a host tier, the GPU pages of
    SUSPENDED caches are evictable: an operation that needs more GPU pages than are free (a
    growth, the recall of a resume) demotes exactly the shortfall to the host first (implicit
    eviction, :meth:`_make_room`). Victims (:meth:`_select_victims`): the least recently
    suspended cache first (an LRU by suspension order), each from the end of its page table
    towards the front.

    Policy switches read here: ``clear_snapshot_on_failure``, ``swa_scratch_reuse``,
    ``host_tier``, ``draft_record_before_resize``, ``revert_clears_before_resize``,
    ``pop_draft_record_on_update``, ``free_branch_rewinds``, ``commit_on_forward``,
    ``gate_before_resume`` (prepare only creates; resize_context resumes and grows, all or
    nothing) and ``reserve_context`` (two-phase reservation: resize_context reserves GPU pages
    outside the page table, :meth:`commit_context` appends them, revert_allocate_context
    releases them; docs/design-space.md); the executor reads the others.

    NOTE: per-iteration guards of the protocol (prepared/resized/tried this iteration) belong
    to the caller (the executor or the conformance driver); the manager enforces only what
    TRT's manager asserts plus the misuse listed in docs/reference.md.
    """

    def __init__(self, config: Config, policy: Policy) -> None:
        """Create a manager with every page free.

        Args:
            config: Sizes (``tokens_per_block``, ``num_gpu_pages``, ``num_host_pages``,
                ``max_util_for_resume``, ``max_rewind_len``).
            policy: Protocol switches.
        """
        self.config = config
        self.policy = policy
        self._tpb = config.tokens_per_block
        self._gpu = PagePool(config.num_gpu_pages, "gpu")
        # No host tier: an empty host pool (the model's host_free is 0 then).
        self._host = PagePool(config.num_host_pages if policy.host_tier else 0, "host")
        self._caches: dict[int, KVCache] = {}
        self._allocated_draft_lens: dict[int, int] = {}
        # SUSPENDED caches, least recently suspended first (dicts keep insertion order)
        self._suspended: dict[int, KVCache] = {}
        self._num_suspended_gpu_pages = 0
        # requests whose pages were demoted since the last pop_demoted() (bounded by the ids)
        self._demoted: dict[int, None] = {}
        # two-phase reservations (reserve_context): request id -> (target capacity, GPU pages
        # taken from the pool but not in the page table)
        self._reservations: dict[int, tuple[int, list[int]]] = {}
        self._util_num = config.max_util_for_resume.numerator
        self._util_den = config.max_util_for_resume.denominator

    # ------------------------------------------------------------------------------------
    # helpers

    def _blocks(self, capacity: int) -> int:
        return -(-capacity // self._tpb)

    def _cache(self, req: LlmRequest, action: str) -> KVCache:
        cache = self._caches.get(req.request_id)
        if cache is None:
            raise ProtocolError(
                f"{action}: request {req.request_id} has no KV cache (never prepared, freed,"
                " or dropped by a FREE revert); call prepare_context on its first chunk first")
        return cache

    def _require_state(self, req: LlmRequest, state: RequestState, action: str) -> None:
        if req.state != state:
            raise ProtocolError(
                f"{action}: request {req.request_id} is in state {req.state.name}; it needs"
                f" {state.name}")

    def _suspend(self, rid: int, cache: KVCache) -> None:
        """ACTIVE -> SUSPENDED: the most recently suspended cache; its GPU pages evictable."""
        cache.status = SUSPENDED
        self._suspended[rid] = cache
        self._num_suspended_gpu_pages += len(cache.pages)   # an ACTIVE cache is all on GPU

    def _resume(self, rid: int, cache: KVCache) -> bool:
        """``_KVCache.resume``: the utilization gate, room for the cache's host pages
        (evicting other suspended caches' pages), then its host pages back to GPU.
        All-or-nothing: a refusal changes nothing."""
        g = self._gpu.num_pages
        # evictable still includes this cache's own GPU pages: it is SUSPENDED at gate time
        used = g - self._gpu.num_free_pages - self.num_evictable_gpu_pages
        if g > 0 and used * self._util_den > self._util_num * g:
            return False
        own_gpu = cache.num_gpu
        if cache.num_host:
            # TRT batched_lock_to_gpu: the cache's own pages are not eviction victims
            if not self._make_room(cache.num_host, cache):
                return False
            self._recall(cache)
        del self._suspended[rid]
        self._num_suspended_gpu_pages -= own_gpu
        cache.status = ACTIVE
        cache.never_resumed = False
        return True

    def _make_room(self, n: int, exclude: KVCache) -> bool:
        """Make ``n`` GPU pages free, demoting other SUSPENDED caches' GPU pages if needed.

        shortfall = max(0, n - free GPU pages). Succeeds iff the host tier exists (or the
        shortfall is 0), shortfall <= evictable GPU pages of caches other than ``exclude`` and
        shortfall <= free host pages; then exactly ``shortfall`` pages are demoted (victims by
        :meth:`_select_victims`). On failure nothing changes. Cost: O(1) without a shortfall,
        else O(suspended caches + pages demoted).
        """
        short = n - self._gpu.num_free_pages
        if short <= 0:
            return True
        if not self.policy.host_tier or short > self._host.num_free_pages:
            return False
        others = self._num_suspended_gpu_pages
        if exclude.status is SUSPENDED:
            others -= exclude.num_gpu
        if short > others:
            return False
        for rid, cache, entries in self._select_victims(short, exclude):
            self._demote(rid, cache, entries)
        return True

    def _select_victims(self, n: int,
                        exclude: KVCache) -> list[tuple[int, KVCache, list[int]]]:
        """The ``n`` GPU pages implicit eviction demotes: (request id, cache, page table
        indices) per victim, in demotion order.

        Choice: the least recently suspended cache first (LRU by suspension order; a new
        cache counts as suspended when created), each cache's GPU entries from the end of its
        page table towards the front; ``exclude`` is never a victim. The caller checked that
        enough evictable pages exist. Subclasses may override it (any choice of ``n`` GPU
        entries of SUSPENDED caches other than ``exclude`` keeps the protocol).
        Cost: O(suspended caches + n).
        """
        out: list[tuple[int, KVCache, list[int]]] = []
        left = n
        for rid, cache in self._suspended.items():
            if cache is exclude or cache.num_gpu == 0:
                continue
            tiers = cache.tiers
            last = len(cache.pages) - 1
            if tiers is None:
                entries = list(range(last, max(last - left, -1), -1))
            else:
                entries = [i for i in range(last, -1, -1) if tiers[i] == GPU_TIER][:left]
            out.append((rid, cache, entries))
            left -= len(entries)
            if left == 0:
                break
        return out

    def _demote(self, rid: int, cache: KVCache, entries: list[int]) -> None:
        """Demote the GPU pages at ``entries`` of a SUSPENDED cache to fresh host pages (the
        data would be copied GPU -> host); the GPU pages are freed in ``entries`` order. The
        caller checked the host has room. O(len(entries)), O(pages) on a first demotion."""
        k = len(entries)
        host_pages = self._host.allocate_n(k)
        pages = cache.pages
        if cache.tiers is None:
            cache.tiers = [GPU_TIER] * len(pages)
        tiers = cache.tiers
        freed = []
        for i, h in zip(entries, host_pages, strict=True):
            freed.append(pages[i])
            pages[i] = h
            tiers[i] = HOST_TIER
        self._gpu.free_n(freed)
        cache.num_host += k
        self._num_suspended_gpu_pages -= k
        self._demoted[rid] = None

    def _recall(self, cache: KVCache) -> None:
        """Every host page of ``cache`` back to a fresh GPU page (data copied host -> GPU),
        then the host pages freed. The caller made room. O(pages)."""
        pages = cache.pages
        tiers = cache.tiers
        assert tiers is not None
        fresh = iter(self._gpu.allocate_n(cache.num_host))
        freed = []
        for i, t in enumerate(tiers):
            if t == HOST_TIER:
                freed.append(pages[i])
                pages[i] = next(fresh)
        self._host.free_n(freed)
        cache.tiers = None
        cache.num_host = 0

    def _set_capacity(self, cache: KVCache, capacity: int) -> None:
        """Grow or shrink an ACTIVE cache's page table; the caller checked the free pages."""
        pages = cache.pages
        keep = self._blocks(capacity)
        if keep > len(pages):
            pages.extend(self._gpu.allocate_n(keep - len(pages)))
        elif keep < len(pages):
            released = pages[keep:]
            del pages[keep:]
            self._gpu.free_n(released)
        cache.capacity = capacity

    def _release(self, rid: int, cache: KVCache) -> None:
        """Close ``cache``: each page goes back to its own tier; the draft record is
        forgotten."""
        tiers = cache.tiers
        if tiers is None:
            self._gpu.free_n(cache.pages)
        else:
            pairs = list(zip(cache.pages, tiers, strict=True))
            self._gpu.free_n([p for p, t in pairs if t == GPU_TIER])
            self._host.free_n([p for p, t in pairs if t == HOST_TIER])
        if cache.status == SUSPENDED:
            self._num_suspended_gpu_pages -= cache.num_gpu
            del self._suspended[rid]
        cache.pages = []
        cache.tiers = None
        cache.num_host = 0
        del self._caches[rid]
        self._allocated_draft_lens.pop(rid, None)

    # ------------------------------------------------------------------------------------
    # context phase

    def prepare_context(self, req: LlmRequest) -> bool:
        """Models TRT ``prepare_context``: create the cache on a first chunk, resume it.

        Cost: O(1), plus O(pages) when host pages are recalled. Effect: a first chunk without
        a cache gets an empty SUSPENDED, never-resumed cache (kept even when the resume is
        refused); a SUSPENDED cache is resumed when the gate allows and its host pages (if
        any) fit on the GPU, evicting other suspended caches' pages (:meth:`_make_room`).

        Returns:
            Whether the cache is ACTIVE afterwards.

        Raises:
            ProtocolError: ``req`` is not in CONTEXT_INIT, or a later chunk has no cache.
        """
        self._require_state(req, RequestState.CONTEXT_INIT, "prepare_context")
        cache = self._caches.get(req.request_id)
        if cache is None:
            if req.context_current_position != 0:
                raise ProtocolError(
                    f"prepare_context: request {req.request_id} is at position"
                    f" {req.context_current_position} but has no KV cache; only a first"
                    " chunk (position 0) creates one")
            cache = self._caches[req.request_id] = KVCache()
            self._suspended[req.request_id] = cache        # born SUSPENDED, with no pages
        if self.policy.gate_before_resume:
            return True                     # a candidate: resumed only if it survives
        if cache.status == SUSPENDED:
            self._resume(req.request_id, cache)
        return cache.status == ACTIVE

    def _admit_fits(self, cache: KVCache, need: int) -> bool:
        """Whether a resume of ``cache`` (when SUSPENDED) and then ``need`` more GPU pages
        both succeed, computed on the counts without changing anything (the resume gate,
        room for its host pages, room for the growth after the recall). O(1)."""
        free, host_free = self._gpu.num_free_pages, self._host.num_free_pages
        others = self._num_suspended_gpu_pages
        if cache.status is SUSPENDED:
            g = self._gpu.num_pages
            used = g - free - self.num_evictable_gpu_pages
            if g > 0 and used * self._util_den > self._util_num * g:
                return False
            others -= cache.num_gpu
            h = cache.num_host
            short = max(0, h - free)
            if short and (not self.policy.host_tier or short > host_free or short > others):
                return False
            free, host_free, others = free + short - h, host_free - short + h, others - short
        short = max(0, need - free)
        return short == 0 or (self.policy.host_tier and short <= host_free and short <= others)

    def _admit(self, req: LlmRequest, cache: KVCache, new: int) -> bool:
        """``resize_context`` under ``gate_before_resume``: resume a survivor of the decision
        (if SUSPENDED) and grow it to ``new``; all or nothing."""
        old = cache.capacity
        need = self._blocks(new) - len(cache.pages)
        if not self._admit_fits(cache, need):
            return False
        if cache.status is SUSPENDED:
            resumed = self._resume(req.request_id, cache)
            assert resumed, "admission checked the resume"
        if need > self._gpu.num_free_pages:
            made = self._make_room(need, cache)
            assert made, "admission checked the room"
        self._set_capacity(cache, new)
        req.py_ctx_pre_resize_cap = old if new > old else None
        return True

    def resize_context(self, req: LlmRequest, num_tokens: int) -> bool:
        """Models TRT ``resize_context``: grow to max(capacity, pos + num_tokens).

        Cost: O(new pages). Effect on success: capacity grows by blocks(new) - blocks(old)
        pages, taken from the free GPU pages after demoting the shortfall from suspended caches
        (:meth:`_make_room`); ``req.py_ctx_pre_resize_cap`` = old capacity if it grew else
        None. On failure (not enough free plus evictable GPU pages, or host room for the
        shortfall) nothing is allocated or demoted; a first chunk's cache is suspended and,
        under ``clear_snapshot_on_failure``, the snapshot is cleared.

        Args:
            req: A CONTEXT_INIT request with an ACTIVE cache.
            num_tokens: Tokens of this chunk, plus the draft length on the last chunk.

        Returns:
            Whether the capacity now covers the target.

        Raises:
            InvalidArgument: ``num_tokens`` is negative or not an int.
            ProtocolError: wrong request state, no cache, or a SUSPENDED cache.
        """
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
            raise InvalidArgument(
                f"resize_context: num_tokens={num_tokens!r} for request {req.request_id} must"
                " be an integer >= 0 (the chunk length, plus the draft length on the last"
                " chunk)")
        self._require_state(req, RequestState.CONTEXT_INIT, "resize_context")
        cache = self._cache(req, "resize_context")
        if self.policy.gate_before_resume:
            return self._admit(req, cache, max(cache.capacity,
                                               req.context_current_position + num_tokens))
        if cache.status != ACTIVE:
            raise ProtocolError(
                f"resize_context: request {req.request_id}'s cache is SUSPENDED; call"
                " prepare_context (which resumes it) and resize only when it returns True")
        held = self._reservations.get(req.request_id)
        if held is not None:
            return self._grow_reservation(req, cache, held, num_tokens)
        old = cache.capacity
        new = max(old, req.context_current_position + num_tokens)
        need = self._blocks(new) - len(cache.pages)
        if need > self._gpu.num_free_pages and not self._make_room(need, cache):
            if req.context_current_position == 0:
                self._suspend(req.request_id, cache)
            if self.policy.clear_snapshot_on_failure:
                req.py_ctx_pre_resize_cap = None
            return False
        if self.policy.reserve_context:     # phase 1: out of the pool, not into the cache
            self._reservations[req.request_id] = (new, self._gpu.allocate_n(need))
            return True
        self._set_capacity(cache, new)
        req.py_ctx_pre_resize_cap = old if new > old else None
        return True

    def _grow_reservation(self, req: LlmRequest, cache: KVCache,
                          held: tuple[int, list[int]], num_tokens: int) -> bool:
        """``resize_context`` of a request that already holds a reservation: grow it to the
        larger target (idempotent, like resize_context); a growth that does not fit changes
        nothing (the reservation is kept, no first-chunk suspend)."""
        target, pages = held
        new = max(target, req.context_current_position + num_tokens)
        need = self._blocks(new) - len(cache.pages) - len(pages)
        if need > 0:
            if need > self._gpu.num_free_pages and not self._make_room(need, cache):
                return False
            pages = pages + self._gpu.allocate_n(need)
        self._reservations[req.request_id] = (new, pages)
        return True

    def commit_context(self, req: LlmRequest) -> None:
        """Phase 2 of the two-phase reservation (``reserve_context``): the reserved pages join
        the end of the cache's page table and the capacity becomes the reserved target. The
        executor calls it for every context request of a queued batch before the forward; a
        request without a reservation is left as it is. O(reserved pages).

        Raises:
            ProtocolError: the policy has no reservations, or the cache is not ACTIVE.
        """
        if not self.policy.reserve_context:
            raise ProtocolError(
                f"commit_context: policy {self.policy.name!r} has reserve_context off;"
                " resize_context grows the cache itself")
        entry = self._reservations.get(req.request_id)
        if entry is None:
            return
        cache = self._cache(req, "commit_context")
        if cache.status != ACTIVE:
            raise ProtocolError(
                f"commit_context: request {req.request_id}'s cache is SUSPENDED; a"
                " reservation is committed only for a request in the queued batch")
        del self._reservations[req.request_id]
        target, pages = entry
        cache.pages.extend(pages)
        cache.capacity = max(cache.capacity, target)

    def _refuse_reserved(self, reqs: Sequence[LlmRequest], what: str) -> None:
        """ProtocolError (nothing changed) when one of ``reqs`` holds a reservation: a
        generation operation or a suspension applies only to a request whose context growth
        was committed or released."""
        if not self._reservations:
            return
        held = [q.request_id for q in reqs if q.request_id in self._reservations]
        if held:
            raise ProtocolError(
                f"{what}: request(s) {held[:5]} hold a reservation; commit it"
                " (commit_context) or release it (revert_allocate_context) first")

    def get_reserved_pages(self, rid: int) -> tuple[int, ...]:
        """GPU page ids reserved for request ``rid`` and not yet committed (empty if none)."""
        entry = self._reservations.get(rid)
        return () if entry is None else tuple(entry[1])

    def _release_reservation(self, req: LlmRequest) -> bool:
        """``revert_allocate_context`` under ``reserve_context``: the reserved pages go back
        to the pool; the cache was never resized, so nothing is rewound (no SWA assertion can
        fire); an ACTIVE cache is suspended iff its capacity is > 0, as PR 13805 does."""
        entry = self._reservations.pop(req.request_id, None)
        if entry is not None:
            self._gpu.free_n(entry[1])
        cache = self._caches.get(req.request_id)
        if cache is not None and cache.status == ACTIVE and cache.capacity > 0:
            self._suspend(req.request_id, cache)
        return True

    def revert_allocate_context(self, req: LlmRequest) -> bool | None:
        """Models TRT ``revert_allocate_context``: give back this iteration's context growth.

        Reads and clears ``req.py_ctx_pre_resize_cap`` (pre). No snapshot, no ACTIVE cache or
        pre >= capacity: nothing else happens. FREE branch (history > pre): the cache is
        closed and, under ``free_branch_rewinds``, the request rewound to position 0. SHRINK
        branch: capacity = pre (pages past blocks(pre) freed), history unchanged, then
        suspended iff pre > 0.

        Returns:
            With ``free_branch_rewinds`` (PR 14849's revision): False exactly in the FREE
            branch, else True. Without it (TRT's revision that returns nothing): None from
            every branch.

        Raises:
            InvariantViolation: ``SWA-REWIND``: under ``swa_scratch_reuse`` a SHRINK of a
                CONTEXT_INIT request's cache with capacity - max_rewind_len > history (TRT's
                assertion). Raised before the snapshot is consumed, except under
                ``revert_clears_before_resize``, where the snapshot is already None (the
                only change).
        """
        if self.policy.reserve_context:
            return self._release_reservation(req)
        pre = req.py_ctx_pre_resize_cap
        clears_first = self.policy.revert_clears_before_resize
        if clears_first:
            req.py_ctx_pre_resize_cap = None
        done: bool | None = True if self.policy.free_branch_rewinds else None
        cache = self._caches.get(req.request_id)
        if pre is None or cache is None or cache.status != ACTIVE or pre >= cache.capacity:
            req.py_ctx_pre_resize_cap = None
            return done
        if cache.history > pre:
            req.py_ctx_pre_resize_cap = None
            self._release(req.request_id, cache)
            if done is None:
                return None
            req.context_current_position = 0
            return False
        if (self.policy.swa_scratch_reuse and req.state == RequestState.CONTEXT_INIT
                and cache.capacity - self.config.max_rewind_len > cache.history):
            raise InvariantViolation(
                "SWA-REWIND",
                f"revert_allocate_context: shrinking request {req.request_id}'s cache from"
                f" capacity {cache.capacity} to {pre} with history {cache.history} needs"
                f" capacity - max_rewind_len ({self.config.max_rewind_len}) <= history under"
                " SWA scratch reuse; do not revert context growth with scratch reuse on"
                " (PR 14849) or disable swa_scratch_reuse")
        req.py_ctx_pre_resize_cap = None
        self._set_capacity(cache, pre)
        if pre > 0:
            self._suspend(req.request_id, cache)
        return done

    def update_context_resources(self, reqs: Sequence[LlmRequest]) -> None:
        """Models TRT ``_update_v2_context_resources``: history = committed = position
        (committed stays as it is, 0, without ``commit_on_forward``: block reuse off).

        The caller advanced ``context_current_position`` by the forwarded chunk first.
        Cost: O(len(reqs)). All-or-nothing over the batch.

        Raises:
            ProtocolError: a request has no cache or a SUSPENDED one.
            InvariantViolation: ``INV-LEN``: a position below the history or above the
                capacity.
        """
        caches = []
        for req in reqs:
            cache = self._cache(req, "update_context_resources")
            pos = req.context_current_position
            if cache.status != ACTIVE:
                raise ProtocolError(
                    f"update_context_resources: request {req.request_id}'s cache is SUSPENDED;"
                    " only forwarded (resized, ACTIVE) requests are updated")
            if not cache.history <= pos <= cache.capacity:
                raise InvariantViolation(
                    "INV-LEN",
                    f"update_context_resources: request {req.request_id} position {pos} is"
                    f" outside [history {cache.history}, capacity {cache.capacity}]; advance"
                    " the position by the resized chunk only")
            caches.append((cache, pos))
        if self.policy.commit_on_forward:
            for cache, pos in caches:
                cache.history = cache.committed = pos
        else:
            for cache, pos in caches:
                cache.history = pos

    # ------------------------------------------------------------------------------------
    # generation phase

    def try_allocate_generation(self, req: LlmRequest) -> bool:
        """Models TRT ``try_allocate_generation``: resume if needed, grow by 1 + draft_len.

        Cost: O(new pages). A refused resume changes nothing. Otherwise the old draft record
        is dropped (and, under ``draft_record_before_resize``, draft_len recorded); the growth
        needs blocks(new) - blocks(old) GPU pages, free or demoted from suspended caches
        (:meth:`_make_room`); on success capacity grows and the record is draft_len. A failed
        grow changes nothing more; after a resume the cache stays ACTIVE (and pages demoted
        for the resume stay demoted).

        Returns:
            Whether the capacity grew.

        Raises:
            ProtocolError: ``req`` is not generating or has no cache.
        """
        self._refuse_reserved([req], "try_allocate_generation")
        if req.state is not _GENERATION:
            self._require_state(req, _GENERATION, "try_allocate_generation")
        rid = req.request_id
        cache = self._caches.get(rid)
        if cache is None:
            cache = self._cache(req, "try_allocate_generation")
        if cache.status is SUSPENDED and not self._resume(rid, cache):
            return False
        d = req.draft_len
        drafts = self._allocated_draft_lens
        if self.policy.draft_record_before_resize:
            drafts[rid] = d
        else:
            drafts.pop(rid, None)
        new = cache.capacity + 1 + d
        pages = cache.pages
        grow = -(-new // self._tpb) - len(pages)
        if grow > 0:
            if grow > self._gpu.num_free_pages and not self._make_room(grow, cache):
                return False
            pages += self._gpu.allocate_n(grow)
        cache.capacity = new
        drafts[rid] = d
        return True

    def generation_pages_needed(self, req: LlmRequest) -> int:
        """GPU pages ``try_allocate_generation(req)`` would need now: the growth, plus the
        recall of the cache's host pages. O(1); for schedulers deciding on eviction (compare
        with :meth:`num_available_gpu_pages`).

        Raises:
            ProtocolError: no cache.
        """
        cache = self._caches.get(req.request_id)
        if cache is None:
            cache = self._cache(req, "generation_pages_needed")
        grow = -(-(cache.capacity + 1 + req.draft_len) // self._tpb) - len(cache.pages)
        return grow + cache.num_host

    def revert_allocate_generation(self, req: LlmRequest) -> None:
        """Models TRT ``revert_allocate_generation``: shrink by 1 + the popped draft record.

        No record, no ACTIVE cache or a negative target: only the record is popped.

        Raises:
            InvariantViolation: ``INV-LEN``: the target is below the history (TRT's
                "shrink must succeed" RuntimeError); nothing is popped, except under
                ``revert_clears_before_resize``, where the record is already popped (the only
                change).
        """
        self._refuse_reserved([req], "revert_allocate_generation")
        rid = req.request_id
        if self.policy.revert_clears_before_resize:
            rec = self._allocated_draft_lens.pop(rid, None)
        else:
            rec = self._allocated_draft_lens.get(rid)
        cache = self._caches.get(rid)
        if rec is None or cache is None or cache.status != ACTIVE:
            self._allocated_draft_lens.pop(rid, None)
            return
        target = cache.capacity - 1 - rec
        if target < 0:
            self._allocated_draft_lens.pop(rid, None)
            return
        if target < cache.history:
            raise InvariantViolation(
                "INV-LEN",
                f"revert_allocate_generation: request {rid}'s capacity {cache.capacity} minus"
                f" 1 + draft record {rec} is {target}, below history {cache.history}; the"
                " record does not match a growth (record it only on success)")
        self._allocated_draft_lens.pop(rid, None)
        self._set_capacity(cache, target)

    def update_resources(self, reqs: Sequence[LlmRequest], accepted: Sequence[int]) -> None:
        """Models TRT ``update_resources`` for forwarded generation requests.

        Per request: rewind = max(record - accepted, 0) (no record: draft_len); capacity -=
        rewind; history += 1 + accepted; committed = history under ``commit_on_forward``
        (else unchanged: 0); the record popped under ``pop_draft_record_on_update`` (else kept
        until the next try_allocate_generation, a revert or the free). Cost:
        O(len(reqs) + freed pages). All-or-nothing over the batch.

        Raises:
            InvalidArgument: lengths differ, a request repeats, or accepted is outside
                [0, draft_len].
            ProtocolError: a request is not generating, has no cache or a SUSPENDED one.
            InvariantViolation: ``INV-LEN``: the trimmed capacity would be below the history.
        """
        self._refuse_reserved(reqs, "update_resources")
        if len(reqs) != len(accepted):
            raise InvalidArgument(
                f"update_resources: {len(reqs)} requests but {len(accepted)} accepted counts;"
                " pass one count per request")
        plan = []
        seen: set[int] = set()
        caches = self._caches
        drafts = self._allocated_draft_lens
        for req, acc in zip(reqs, accepted, strict=True):
            rid = req.request_id
            if rid in seen:
                raise InvalidArgument(f"update_resources: request {rid} is listed twice")
            seen.add(rid)
            if type(acc) is not int or not 0 <= acc <= req.draft_len:
                raise InvalidArgument(
                    f"update_resources: accepted={acc!r} for request {rid} must be an integer"
                    f" in [0, draft_len={req.draft_len}]")
            if req.state is not _GENERATION:
                self._require_state(req, _GENERATION, "update_resources")
            cache = caches.get(rid)
            if cache is None:
                cache = self._cache(req, "update_resources")
            if cache.status is not ACTIVE:
                raise ProtocolError(
                    f"update_resources: request {rid}'s cache is SUSPENDED; only forwarded"
                    " requests are updated")
            rec = drafts.get(rid, req.draft_len)
            new_cap = cache.capacity - (rec - acc if rec > acc else 0)
            new_hist = cache.history + 1 + acc
            if new_hist > new_cap:
                raise InvariantViolation(
                    "INV-LEN",
                    f"update_resources: request {rid} would have history {new_hist} above"
                    f" capacity {new_cap}; grow it with try_allocate_generation first")
            plan.append((rid, cache, new_cap, new_hist))
        tpb = self._tpb
        commit = self.policy.commit_on_forward
        pop = self.policy.pop_draft_record_on_update
        for rid, cache, new_cap, new_hist in plan:
            if new_cap != cache.capacity:
                if -(-new_cap // tpb) != len(cache.pages):
                    self._set_capacity(cache, new_cap)
                cache.capacity = new_cap
            cache.history = new_hist
            if commit:
                cache.committed = new_hist
            if pop:
                drafts.pop(rid, None)

    # ------------------------------------------------------------------------------------
    # victims, tiers, end of life

    def suspend_request(self, req: LlmRequest) -> None:
        """Models TRT ``suspend_request`` on a scheduler victim: SUSPENDED, nothing freed.

        With a host tier the cache's GPU pages become evictable. O(1).

        Raises:
            ProtocolError: no cache, or the cache is already SUSPENDED.
        """
        self._refuse_reserved([req], "suspend_request")
        cache = self._cache(req, "suspend_request")
        if cache.status != ACTIVE:
            raise ProtocolError(
                f"suspend_request: request {req.request_id}'s cache is already SUSPENDED;"
                " suspend only ACTIVE victims")
        self._suspend(req.request_id, cache)

    def resume_request(self, req: LlmRequest) -> bool:
        """Models TRT ``resume_request``: the gated resume of a SUSPENDED cache.

        Returns:
            Whether the cache is ACTIVE now; a refusal changes nothing.

        Raises:
            ProtocolError: no cache, or the cache is ACTIVE.
        """
        cache = self._cache(req, "resume_request")
        if cache.status != SUSPENDED:
            raise ProtocolError(
                f"resume_request: request {req.request_id}'s cache is already ACTIVE")
        return self._resume(req.request_id, cache)

    def evict_to_host(self, req: LlmRequest) -> bool:
        """Demote every GPU page of a SUSPENDED cache to the host tier (copy, then free on GPU).

        The cache may already have some pages on the host; entries are demoted from the end
        of the page table towards the front. Cost: O(pages). Effect: ``num_free_gpu_pages``
        grows and ``num_free_host_pages`` drops by the cache's GPU page count; those entries
        now list host page ids (``get_page_tiers`` 1).

        Returns:
            False (nothing changed) when the host tier lacks that many free pages.

        Raises:
            ProtocolError: no host tier, no cache, an ACTIVE cache, or a cache without GPU
                pages (empty, or already all on the host).
        """
        if not self.policy.host_tier:
            raise ProtocolError(
                f"evict_to_host: policy {self.policy.name!r} has no host tier; suspended"
                " caches stay on GPU (enable host_tier)")
        cache = self._cache(req, "evict_to_host")
        if cache.status != SUSPENDED:
            raise ProtocolError(
                f"evict_to_host: request {req.request_id}'s cache is ACTIVE; suspend it first")
        n = cache.num_gpu
        if n == 0:
            raise ProtocolError(
                f"evict_to_host: request {req.request_id}'s cache has no GPU pages"
                f" ({len(cache.pages)} pages, all on the host); nothing to evict")
        if self._host.num_free_pages < n:
            return False
        tiers = cache.tiers
        last = len(cache.pages) - 1
        entries = list(range(last, -1, -1)) if tiers is None else [
            i for i in range(last, -1, -1) if tiers[i] == GPU_TIER]
        self._demote(req.request_id, cache, entries)
        return True

    def free_resources(self, req: LlmRequest) -> None:
        """Models TRT ``free_resources``: close the cache and forget the draft record.

        Pages return to the tier they are in. O(pages). ``req.state`` is the caller's to
        change (finished requests become GENERATION_COMPLETE; a recompute-paused victim is
        rewound by the executor).

        Raises:
            ProtocolError: no cache (a double free).
        """
        cache = self._cache(req, "free_resources")
        entry = self._reservations.pop(req.request_id, None)
        if entry is not None:
            self._gpu.free_n(entry[1])
        self._release(req.request_id, cache)

    # ------------------------------------------------------------------------------------
    # observations

    def _get(self, rid: int) -> KVCache:
        cache = self._caches.get(rid)
        if cache is None:
            raise ProtocolError(f"request {rid!r} has no KV cache; check has_cache first")
        return cache

    def has_cache(self, rid: int) -> bool:
        """Whether request ``rid`` holds a cache."""
        return rid in self._caches

    def get_capacity(self, rid: int) -> int:
        """Capacity in tokens. Raises ProtocolError when there is no cache."""
        return self._get(rid).capacity

    def get_history(self, rid: int) -> int:
        """History length in tokens. Raises ProtocolError when there is no cache."""
        return self._get(rid).history

    def get_committed(self, rid: int) -> int:
        """Committed tokens. Raises ProtocolError when there is no cache."""
        return self._get(rid).committed

    def get_status(self, rid: int) -> CacheStatus:
        """ACTIVE or SUSPENDED. Raises ProtocolError when there is no cache."""
        return self._get(rid).status

    def is_never_resumed(self, rid: int) -> bool:
        """Whether the cache was never resumed. Raises ProtocolError when there is no cache."""
        return self._get(rid).never_resumed

    def get_host_pages(self, rid: int) -> int:
        """How many of the cache's pages are on the host tier. O(1). Raises ProtocolError
        when there is no cache."""
        return self._get(rid).num_host

    def get_page_table(self, rid: int) -> tuple[int, ...]:
        """Page ids, len == ceil(capacity / tokens_per_block); each entry's tier is in
        :meth:`get_page_tiers`. Raises ProtocolError when there is no cache."""
        return tuple(self._get(rid).pages)

    def get_page_tiers(self, rid: int) -> tuple[int, ...]:
        """Parallel to :meth:`get_page_table`: 0 where the entry is a GPU page id, 1 where it
        is a host page id. O(pages). Raises ProtocolError when there is no cache."""
        return self._get(rid).page_tiers()

    def get_draft_record(self, rid: int) -> int | None:
        """``_allocated_draft_lens[rid]``, or None."""
        return self._allocated_draft_lens.get(rid)

    def request_ids(self) -> tuple[int, ...]:
        """Ids of the requests holding a cache, sorted."""
        return tuple(sorted(self._caches))

    @property
    def num_free_gpu_pages(self) -> int:
        """Free GPU pages (page 0 excluded). O(1)."""
        return self._gpu.num_free_pages

    @property
    def num_free_host_pages(self) -> int:
        """Free host-tier pages. O(1)."""
        return self._host.num_free_pages

    @property
    def num_evictable_gpu_pages(self) -> int:
        """GPU pages of SUSPENDED caches when a host tier exists, else 0. O(1)."""
        return self._num_suspended_gpu_pages if self.policy.host_tier else 0

    def num_available_gpu_pages(self, exclude: int | None = None) -> int:
        """The most GPU pages one growth or recall for request ``exclude`` can get now: the
        free pages plus min(evictable GPU pages of caches other than ``exclude``, free host
        pages) (implicit eviction, :meth:`_make_room`). O(1); for schedulers."""
        free = self._gpu.num_free_pages
        if not self.policy.host_tier:
            return free
        others = self._num_suspended_gpu_pages
        cache = None if exclude is None else self._caches.get(exclude)
        if cache is not None and cache.status is SUSPENDED:
            others -= cache.num_gpu
        return free + min(others, self._host.num_free_pages)

    def pop_demoted(self) -> tuple[int, ...]:
        """Ids of the requests that had pages demoted to the host (implicit eviction or
        :meth:`evict_to_host`) since the last call, in first-demotion order; forgets them.
        O(their number); not part of the protocol state (executors report it)."""
        out = tuple(self._demoted)
        self._demoted.clear()
        return out

    def get_page_state(self, page_id: int) -> PageState:
        """State of GPU page ``page_id`` (1..G). O(held pages); for tests and debugging."""
        if not 1 <= page_id <= self._gpu.num_pages:
            raise InvalidArgument(
                f"get_page_state: page_id={page_id} is outside 1..{self._gpu.num_pages}")
        for cache in self._caches.values():
            tiers = cache.tiers
            held = page_id in cache.pages if tiers is None else any(
                p == page_id and t == GPU_TIER for p, t in zip(cache.pages, tiers, strict=True))
            if held:
                evictable = cache.status == SUSPENDED and self.policy.host_tier
                return PageState.EVICTABLE if evictable else PageState.HELD
        return PageState.FREE

    def check_integrity(self) -> None:
        """Verify every structural invariant; see :func:`integrity.check_integrity`."""
        caches: dict[int, KVCache] = dict(self._caches)
        for rid, (_, pages) in self._reservations.items():  # reserved pages are held too
            if rid not in self._caches:
                raise InvariantViolation(
                    "INV-CONSERVE", f"request {rid} holds a reservation without a cache")
            held = KVCache()
            held.status, held.pages = ACTIVE, list(pages)
            held.capacity = len(pages) * self._tpb
            caches[-1 - rid] = held
        check_integrity(self.config, self._gpu, self._host, caches,
                        self._num_suspended_gpu_pages, self._suspended)

    def snapshot_state(self) -> StateSnapshot:
        """A deep, comparable value of the whole manager state (free lists in order)."""
        return (
            self._gpu.get_free_pages(),
            self._host.get_free_pages(),
            tuple((rid, c.as_tuple()) for rid, c in sorted(self._caches.items())),
            tuple(sorted(self._allocated_draft_lens.items())),
            self._num_suspended_gpu_pages,
            tuple(self._suspended),
            tuple((rid, t, tuple(p)) for rid, (t, p) in sorted(self._reservations.items())),
        )
