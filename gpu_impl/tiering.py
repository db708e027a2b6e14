"""Cache creation, resume (with the utilization gate), implicit eviction and eviction to the
host tier, moving KV page data between the GPU and host pools (TRT ``prepare_context``,
``resume``, the eviction controller's demotion of suspended caches' GPU pages).

Per-page residency: a row's logical page table is its host pages followed by its GPU pages
(``host.table[row, :host.count[row]]`` then ``gpu.table[row, :gpu.count[row]]``). An ACTIVE
cache has every page on the GPU; a SUSPENDED one may have some pages on each tier.

Victim choice of implicit eviction (:func:`make_room`): the most recently suspended cache
first (largest ``suspended_at``), each from the front of its GPU pages (its lowest logical
entries on the GPU) towards the end, so the host entries stay a prefix. (The CPU reference
takes the least recently suspended cache first, from the end of its page table: both choices
keep the protocol, and conformance sees them differ.)
"""

from __future__ import annotations

import torch

from kvspec.errors import ProtocolError

from .core import ManagerCore
from .requests import ACTIVE, NO_RECORD, SUSPENDED, RequestLike


def prepare_context(m: ManagerCore, req: RequestLike) -> bool:
    """Creates the cache on the first chunk if missing, resumes it if SUSPENDED.

    A new cache is empty, SUSPENDED (stamped as the most recently suspended) and never
    resumed. Returns whether the cache is ACTIVE afterwards (a refused resume leaves the new
    cache SUSPENDED). Cost: ~10 scalar tensor ops, plus :func:`resume_row`'s.
    Raises ProtocolError (nothing changed): unknown request, later chunk without a cache.
    """
    rid = m.ids([req])[0]
    c = m.cache
    if not bool(c.has_cache[rid].item()):
        if req.context_current_position != 0:
            raise ProtocolError(
                f"request {rid}: prepare_context of a later chunk (pos="
                f"{req.context_current_position}) without a cache; was it freed?")
        c.has_cache[rid] = True
        c.capacity[rid] = c.history[rid] = c.committed[rid] = 0
        c.status[rid] = SUSPENDED
        c.never_resumed[rid] = True
        c.draft_record[rid] = NO_RECORD
        m.stamp(m.one(rid))
    if m.policy.gate_before_resume:
        return True  # a candidate: resumed after the decision, if it survives (design.admit)
    if int(c.status[rid].item()) == SUSPENDED:
        return resume_row(m, rid)
    return True


def evictable_pages(m: ManagerCore) -> int:
    """GPU pages of SUSPENDED caches when the host tier exists, else 0 (one masked
    reduction and one read)."""
    if not m.policy.host_tier:
        return 0
    c = m.cache
    return m.transfer.scalar(torch.where(c.has_cache & (c.status == SUSPENDED),
                                         m.gpu.count, 0).sum())


def make_room(m: ManagerCore, n: int, exclude: int | None) -> bool:
    """Makes ``n`` GPU pages free, demoting SUSPENDED caches' GPU pages to the host if needed.

    shortfall = max(0, n - free GPU pages). Succeeds iff shortfall == 0, or the host tier
    exists, shortfall <= evictable GPU pages of caches other than row ``exclude`` and
    shortfall <= free host pages; then exactly ``shortfall`` pages are demoted (contents
    copied GPU -> host, GPU pages freed, host pages taken): the most recently suspended
    cache first, each from the front of its GPU pages. Otherwise nothing changes.
    Cost: nothing without a shortfall; else ~8 tensor ops and 3 reads to pick the victims,
    then :func:`demote` per victim.
    """
    short = n - m.gpu.free
    if short <= 0:
        return True
    if not m.policy.host_tier or short > m.host.free:
        return False
    c = m.cache
    cand = c.has_cache & (c.status == SUSPENDED) & (m.gpu.count > 0)
    if exclude is not None:
        cand[exclude] = False
    if m.transfer.scalar(torch.where(cand, m.gpu.count, 0).sum()) < short:
        return False
    idx = cand.nonzero().view(-1)
    victims = idx[torch.argsort(c.suspended_at[idx], descending=True)]
    rows = m.transfer.to_host(victims)
    gpu_counts = m.transfer.to_host(m.gpu.count[victims])
    host_counts = m.host.count[victims.cpu()].tolist()
    for row, g, h in zip(rows, gpu_counts, host_counts, strict=True):
        take = min(g, short)
        demote(m, row, take, g, h)
        short -= take
        if short == 0:
            break
    return True


def demote(m: ManagerCore, row: int, k: int, g: int, h: int) -> None:
    """Moves the first ``k`` of ``row``'s ``g`` GPU pages to fresh host pages appended after
    its ``h`` host pages (the data copied through the staging buffer), then releases the GPU
    pages (:meth:`PagePool.release_front`). The caller checked the host has ``k`` free pages.
    Cost: a host-pool grow, one gather + D2H copy of k pages, ~7 ops of GPU bookkeeping.
    """
    host_row = torch.tensor([row], dtype=torch.int64, device="cpu")
    gpu_pages = m.gpu.table[row, :k].long()
    m.host.grow(host_row, torch.full_like(host_row, h + k))
    m.kv.to_host(gpu_pages, m.host.table[row, h:h + k].long())
    m.gpu.release_front(row, k, g)


def recall(m: ManagerCore, row: int, h: int, g: int) -> None:
    """Moves ``row``'s ``h`` host pages back into fresh GPU pages in front of its ``g`` GPU
    pages (:meth:`PagePool.take_front`; data copied through the staging buffer), then frees
    the host pages. The caller made room. Cost: ~7 ops, one H2D copy, a host-pool shrink."""
    gpu_pages = m.gpu.take_front(row, h, g)
    host_row = torch.tensor([row], dtype=torch.int64, device="cpu")
    m.kv.to_gpu(m.host.table[row, :h].long(), gpu_pages)
    m.host.shrink(host_row, torch.zeros_like(host_row))


def growth_plan(m: ManagerCore, rows: torch.Tensor, need: torch.Tensor,
                eligible: torch.Tensor, frees_on_failure: torch.Tensor | None
                ) -> torch.Tensor | None:
    """Which of the ACTIVE ``rows`` (list order, each all-or-nothing) a growth of ``need``
    GPU pages each gives, as the single calls in that order would; or None when the batch
    must be split into single rows.

    One row: eligible and (the pages are free or :func:`make_room` demotes the shortfall,
    which it does here). Several rows: the sequential first fit on the free pages
    (:meth:`PagePool.fit`), exact unless a failure might be rescued by eviction or might
    make pages evictable for a later row; then None (host tier on with free host pages, a
    row fails, and evictable pages exist or a failing row in ``frees_on_failure`` has pages
    that its failure suspends).
    Cost: 1-2 reads for one row; the fit rounds, plus one reduction when a row fails.
    """
    if rows.numel() == 1:
        elig, n = m.transfer.to_host(torch.stack([eligible[0].long(), need[0].long()]))
        good = bool(elig) and (n <= m.gpu.free or make_room(m, n, int(rows[0].item())))
        return torch.full((1,), good, dtype=torch.bool, device=m.device)
    ok = m.gpu.fit(need, eligible)
    if not m.policy.host_tier or m.host.free == 0 or bool(ok.all().item()):
        return ok
    if evictable_pages(m) > 0:
        return None
    if frees_on_failure is not None and bool((~ok & frees_on_failure).any().item()):
        return None
    return ok


def resume_row(m: ManagerCore, rid: int) -> bool:
    """Resumes the SUSPENDED cache of ``rid`` (caller checked it exists and is SUSPENDED).

    Refused (False, nothing changed) when GPU utilization (G - free - evictable) / G exceeds
    ``max_util_for_resume`` (evictable = GPU pages of SUSPENDED caches, this one included,
    when the host tier exists; utilization 0 when G == 0), or when its host pages do not fit:
    room for them is made with :func:`make_room` excluding this cache (TRT's
    ``batched_lock_to_gpu``), so victims are demoted before this cache's host pages are
    released. Otherwise its host pages are copied into fresh GPU pages and released; status
    ACTIVE, never_resumed False.
    Cost: one masked reduction over all rows and one read, plus, with host pages, the
    eviction and one H2D copy of the pages.
    """
    c = m.cache
    cfg = m.config
    g = cfg.num_gpu_pages
    used = g - m.gpu.free - evictable_pages(m)
    gate = cfg.max_util_for_resume
    if g > 0 and used * gate.denominator > gate.numerator * g:
        return False
    h = int(m.host.count[rid].item())
    if h:
        if not make_room(m, h, rid):
            return False
        recall(m, rid, h, int(m.gpu.count[rid].item()))
    c.status[rid] = ACTIVE
    c.never_resumed[rid] = False
    c.suspended_at[rid] = 0
    return True


def resume_request(m: ManagerCore, req: RequestLike) -> bool:
    """TRT ``resume_request``: the gated resume (:func:`resume_row`) of a SUSPENDED cache.

    Raises ProtocolError for an unknown request, a missing or an ACTIVE cache.
    """
    rid = m.ids([req])[0]
    if not bool(m.cache.has_cache[rid].item()):
        raise ProtocolError(f"request {rid}: resume_request without a cache")
    if int(m.cache.status[rid].item()) == ACTIVE:
        raise ProtocolError(f"request {rid}: resume_request of an ACTIVE cache")
    return resume_row(m, rid)


def evict_to_host(m: ManagerCore, req: RequestLike) -> bool:
    """Moves every GPU page of a SUSPENDED cache to the host tier (data copied, GPU pages
    freed); the cache may already have some pages on the host.

    Returns False (nothing changed) when fewer host pages are free than it has GPU pages.
    Cost: one read of 3 values, :func:`demote` of every GPU page.
    Raises ProtocolError (nothing changed): no host tier, unknown request, missing or ACTIVE
    cache, a cache without GPU pages (empty, or already all on the host).
    """
    rid = m.ids([req])[0]
    if not m.policy.host_tier:
        raise ProtocolError(f"request {rid}: evict_to_host under policy {m.policy.name!r}, "
                            "which has no host tier (enable host_tier)")
    c = m.cache
    has, status, g = m.transfer.to_host(torch.stack([
        c.has_cache[rid].long(), c.status[rid].long(), m.gpu.count[rid].long()]))
    if not has or status != SUSPENDED or g == 0:
        raise ProtocolError(
            f"request {rid}: evict_to_host needs a SUSPENDED cache with pages on the GPU "
            f"(has_cache={bool(has)}, status={status}, GPU pages={g})")
    if m.host.free < g:
        return False
    demote(m, rid, g, g, int(m.host.count[rid].item()))
    return True
