"""Cache creation, resume (with the utilization gate) and eviction to the host tier, moving KV
page data between the GPU and host pools (TRT ``prepare_context``, ``resume``,
eviction of a suspended cache's GPU pages to the host tier as an explicit call)."""

from __future__ import annotations

import torch

from kvspec.errors import ProtocolError

from .core import ManagerCore
from .requests import ACTIVE, NO_RECORD, SUSPENDED, RequestLike


def prepare_context(m: ManagerCore, req: RequestLike) -> bool:
    """Creates the cache on the first chunk if missing, resumes it if SUSPENDED.

    A new cache is empty, SUSPENDED and never resumed. Returns whether the cache is ACTIVE
    afterwards (a refused resume leaves the new cache SUSPENDED). Cost: ~10 scalar tensor ops.
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
        c.on_host[rid] = False
        c.draft_record[rid] = NO_RECORD
    if int(c.status[rid].item()) == SUSPENDED:
        return resume_row(m, rid)
    return True


def resume_row(m: ManagerCore, rid: int) -> bool:
    """Resumes the SUSPENDED cache of ``rid`` (caller checked it exists and is SUSPENDED).

    Refused (False, nothing changed) when GPU utilization (G - free - evictable) / G exceeds
    ``max_util_for_resume`` (evictable = GPU pages of SUSPENDED caches when the host tier
    exists; utilization 0 when G == 0), or when the pages are on the host and fewer than that many
    GPU pages are free. Otherwise host pages are copied into freshly allocated GPU pages and
    released; status ACTIVE, never_resumed False.
    Cost: one masked reduction over all rows, one read of 3 int64, and for a cache on the host
    one page-table grow, one host gather and one H2D copy of its pages.
    """
    c = m.cache
    cfg = m.config
    if m.policy.host_tier:
        evictable = torch.where(c.has_cache & (c.status == SUSPENDED) & ~c.on_host,
                                m.gpu.count, 0).sum()
    else:
        evictable = torch.zeros((), dtype=torch.int64, device=m.device)
    on_host, evict_pages = m.transfer.to_host(
        torch.stack([c.on_host[rid].long(), evictable]))
    g = cfg.num_gpu_pages
    used = g - m.gpu.free - evict_pages
    gate = cfg.max_util_for_resume
    if g > 0 and used * gate.denominator > gate.numerator * g:
        return False
    if on_host:
        need = int(m.host.count[rid].item())
        if m.gpu.free < need:
            return False
        row = m.one(rid)
        host_row = torch.tensor([rid], dtype=torch.int64)
        m.gpu.grow(row, torch.full_like(row, need))
        m.kv.to_gpu(m.host.pages_of(host_row), m.gpu.pages_of(row))
        m.host.shrink(host_row, torch.zeros_like(host_row))
        c.on_host[rid] = False
    c.status[rid] = ACTIVE
    c.never_resumed[rid] = False
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
    """Moves a SUSPENDED cache's GPU pages to the host tier (data copied, GPU pages freed).

    Returns False (nothing changed) when fewer than blocks(capacity) host pages are free.
    Cost: one GPU gather + one D2H copy of the pages,
    ~25 tensor ops of pool bookkeeping.
    Raises ProtocolError (nothing changed): no host tier, unknown request, missing or ACTIVE
    cache, cache already on the host.
    """
    rid = m.ids([req])[0]
    if not m.policy.host_tier:
        raise ProtocolError(f"request {rid}: evict_to_host under policy {m.policy.name!r}, "
                            "which has no host tier (enable host_tier)")
    c = m.cache
    has, status, on_host, need = m.transfer.to_host(torch.stack([
        c.has_cache[rid].long(), c.status[rid], c.on_host[rid].long(), m.gpu.count[rid]]))
    if not has or status != SUSPENDED or on_host:
        raise ProtocolError(
            f"request {rid}: evict_to_host needs a SUSPENDED cache with its pages on the GPU "
            f"(has_cache={bool(has)}, status={status}, on_host={bool(on_host)})")
    if m.host.free < need:
        return False
    row = m.one(rid)
    host_row = torch.tensor([rid], dtype=torch.int64)
    gpu_pages = m.gpu.pages_of(row)
    m.host.grow(host_row, torch.full_like(host_row, need))
    m.kv.to_host(gpu_pages, m.host.pages_of(host_row))
    m.gpu.shrink(row, torch.zeros_like(row))
    c.on_host[rid] = True
    return True
