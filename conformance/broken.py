"""Deliberately broken managers: the reference with one behaviour changed, the kind of slip a
real implementer makes. Kept for the test suite and for ``kvspec catalogue``, whose rows the
conformance checkers must detect (``kvspec check --impl kvspec.conformance.broken:NAME``).

Each class changes one method of :class:`~kvspec.conformance.impls.CheckedReference`; each
factory ``name(config, policy)`` builds one. :data:`BROKEN` lists the factories by name.
"""

from __future__ import annotations

from typing import Any

from kvspec.config import Config
from kvspec.errors import ProtocolError
from kvspec.policy import Policy
from kvspec.reference.cache import CacheStatus

from .adapter import Factory
from .impls import CheckedReference


class SilentDoubleFree(CheckedReference):
    """Accepts free_resources on a request that has no cache (a double free, an unknown id)
    silently: misuse warnings, a divergence only with ``strict``."""

    def free_resources(self, req: Any) -> None:
        if not self.has_cache(req.request_id):
            return
        super().free_resources(req)


class _RemembersFrees(CheckedReference):
    """Records, per freed request, the GPU page ids it held; a second ``free_resources`` of
    a freed request goes to :meth:`_free_again` (each broken free below defines it), of a
    request never seen to the reference (``ProtocolError``)."""

    def __init__(self, config: Config, policy: Policy) -> None:
        super().__init__(config, policy)
        self._freed: dict[int, list[int]] = {}

    def free_resources(self, req: Any) -> None:
        rid = req.request_id
        if self.has_cache(rid):
            tiers = self.get_page_tiers(rid)
            self._freed[rid] = [p for p, t in zip(self.get_page_table(rid), tiers) if t == 0]
            super().free_resources(req)
        elif rid not in self._freed:
            super().free_resources(req)  # ProtocolError: a request never seen
        else:
            self._free_again(rid)

    def _free_again(self, rid: int) -> None:
        raise NotImplementedError


class CorruptingDoubleFree(_RemembersFrees):
    """A second free_resources of a request returns its GPU pages to the pool again (the free
    counts go wrong): a divergence always. ``then_raise``: raise ProtocolError afterwards,
    which does not make it right."""

    then_raise = False

    def _free_again(self, rid: int) -> None:
        # past the pool's guard (free_n refuses an overflowing free): the same pages again
        self._gpu._free.extend(self._freed.pop(rid))
        if self.then_raise:
            raise ProtocolError(f"free_resources: request {rid} has no KV cache")


class ShrinkBelowSnapshot(CheckedReference):
    """A SHRINK revert lands one token below the snapshot ``py_ctx_pre_resize_cap``."""

    def revert_allocate_context(self, req: Any) -> bool:
        pre = req.py_ctx_pre_resize_cap
        rid = req.request_id
        shrink = (pre is not None and pre > 0 and self.has_cache(rid)
                  and self.get_status(rid) == 0 and pre < self.get_capacity(rid)
                  and self.get_history(rid) <= pre)
        ok = super().revert_allocate_context(req)
        if shrink and ok and pre is not None:
            cache = self._caches[rid]
            self._num_suspended_gpu_pages -= len(cache.pages)  # suspended by the shrink
            self._set_capacity(cache, pre - 1)
            self._num_suspended_gpu_pages += len(cache.pages)
        return ok


class KeepsStaleSnapshot(CheckedReference):
    """Ignores ``clear_snapshot_on_failure``: a failed resize leaves the old snapshot."""

    def resize_context(self, req: Any, num_tokens: int) -> bool:
        pre = req.py_ctx_pre_resize_cap
        ok = super().resize_context(req, num_tokens)
        if not ok:
            req.py_ctx_pre_resize_cap = pre
        return ok


class SwaAssertSkipped(CheckedReference):
    """Under SWA scratch reuse the SHRINK revert skips TRT's assertion (capacity -
    max_rewind_len <= history) and shrinks anyway: visible only under presets with
    ``swa_scratch_reuse`` (not under pr13805-reviewed)."""

    def revert_allocate_context(self, req: Any) -> bool | None:
        policy = self.policy
        setattr(self, "policy", policy.replace(swa_scratch_reuse=False))  # noqa: B010
        try:
            return super().revert_allocate_context(req)
        finally:
            setattr(self, "policy", policy)  # noqa: B010


class SnapshotWithoutGrowth(CheckedReference):
    """``resize_context`` writes the snapshot even when the resize did not grow (a deferred
    growth kept, then resized again): only presets that keep a growth past its iteration
    take that path."""

    def resize_context(self, req: Any, num_tokens: int) -> bool:
        old = self.get_capacity(req.request_id) if self.has_cache(req.request_id) else 0
        ok = super().resize_context(req, num_tokens)
        if ok:
            req.py_ctx_pre_resize_cap = old
        return ok


class OneTokenGenerationFastPath(CheckedReference):
    """With tokens_per_block == 1 an ACTIVE cache's generation growth takes 1 + draft pages
    straight from the pool, without making room or checking the free count: a full pool
    raises instead of evicting or refusing."""

    def try_allocate_generation(self, req: Any) -> bool:
        rid = req.request_id
        if self._tpb != 1 or not self.has_cache(rid) or self.get_status(rid) != 0:
            return super().try_allocate_generation(req)
        cache = self._caches[rid]
        d = req.draft_len
        self._allocated_draft_lens.pop(rid, None)
        cache.pages += self._gpu.allocate_n(1 + d)
        cache.capacity += 1 + d
        self._allocated_draft_lens[rid] = d
        return True


class RecallNeedsSlack(CheckedReference):
    """Recalling a suspended cache's host pages refuses when the other suspended caches'
    GPU pages cover the shortfall exactly (``>=`` for ``>``): pool pressure with the host
    tier and two or more requests, when free + evictable pages are just enough."""

    def _make_room(self, n: int, exclude: Any) -> bool:
        short = n - self._gpu.num_free_pages
        if short > 0 and exclude.num_host and exclude.status is CacheStatus.SUSPENDED:
            others = self._num_suspended_gpu_pages - exclude.num_gpu
            if short == others:
                return False
        return super()._make_room(n, exclude)


class ResumeGateAtLimit(CheckedReference):
    """The resume gate refuses at exactly ``max_util_for_resume`` (``>=`` for ``>``)."""

    def _resume(self, rid: int, cache: Any) -> bool:
        g = self._gpu.num_pages
        used = g - self._gpu.num_free_pages - self.num_evictable_gpu_pages
        if g > 0 and used * self._util_den == self._util_num * g:
            return False
        return super()._resume(rid, cache)


class ReleasesTheHead(CheckedReference):
    """On a shrink, frees the first blocks' pages and keeps the tail's (the same number)."""

    def _set_capacity(self, cache: Any, capacity: int) -> None:
        keep = self._blocks(capacity)
        if keep < len(cache.pages):
            released = cache.pages[:len(cache.pages) - keep]
            del cache.pages[:len(cache.pages) - keep]
            self._gpu.free_n(released)
            cache.capacity = capacity
            return
        super()._set_capacity(cache, capacity)

class StaleFreeAfterReuse(_RemembersFrees):
    """A second ``free_resources`` of a freed request is silent while its old pages are still
    free, but once another request took some of them, returns those pages to the pool again
    (a stale free after reuse: vLLM V7/V9, SGLang S1's aliasing). The pages are then free and
    held at once."""

    def _free_again(self, rid: int) -> None:
        free = set(self._gpu.get_free_pages())
        reused = [p for p in self._freed[rid] if p not in free]
        if reused:
            del self._freed[rid]
            self._gpu._free.extend(reused)


class AcceptedInRequestOrder(CheckedReference):
    """``update_resources`` pairs the accepted counts with the requests sorted by id, not
    with the list's order: right when the executor happens to send requests in id order (or
    one at a time), wrong for any other batch."""

    def update_resources(self, reqs: Any, accepted: Any) -> None:
        by_id = sorted(reqs, key=lambda q: q.request_id)
        super().update_resources(by_id, list(accepted))


class FirstContextOnly(CheckedReference):
    """``update_context_resources`` updates only the first request of the batch (a loop
    that returns early): invisible when each request is sent alone."""

    def update_context_resources(self, reqs: Any) -> None:
        super().update_context_resources(list(reqs)[:1])


BROKEN: dict[str, Factory] = {
    "silent_double_free": SilentDoubleFree,
    "corrupting_double_free": CorruptingDoubleFree,
    "stale_free_after_reuse": StaleFreeAfterReuse,
    "shrink_below_snapshot": ShrinkBelowSnapshot,
    "keeps_stale_snapshot": KeepsStaleSnapshot,
    "releases_the_head": ReleasesTheHead,
    "swa_assert_skipped": SwaAssertSkipped,
    "snapshot_without_growth": SnapshotWithoutGrowth,
    "one_token_generation_fast_path": OneTokenGenerationFastPath,
    "recall_needs_slack": RecallNeedsSlack,
    "resume_gate_at_limit": ResumeGateAtLimit,
    "accepted_in_request_order": AcceptedInRequestOrder,
    "first_context_only": FirstContextOnly,
}
"""The broken managers by factory name (each class is its own factory: ``cls(config,
policy)``); ``--impl kvspec.conformance.broken:NAME`` resolves them."""

silent_double_free = SilentDoubleFree
corrupting_double_free = CorruptingDoubleFree
stale_free_after_reuse = StaleFreeAfterReuse
shrink_below_snapshot = ShrinkBelowSnapshot
keeps_stale_snapshot = KeepsStaleSnapshot
releases_the_head = ReleasesTheHead
swa_assert_skipped = SwaAssertSkipped
snapshot_without_growth = SnapshotWithoutGrowth
one_token_generation_fast_path = OneTokenGenerationFastPath
recall_needs_slack = RecallNeedsSlack
resume_gate_at_limit = ResumeGateAtLimit
accepted_in_request_order = AcceptedInRequestOrder
first_context_only = FirstContextOnly
