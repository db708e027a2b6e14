"""Structural checks of a reference manager: page conservation per tier (each page table
entry in its own tier), the per-cache length invariants and the per-page tiers. O(total
pages); used by tests after every step, never on the hot path."""

from __future__ import annotations

from collections.abc import Mapping

from kvspec.config import Config
from kvspec.errors import InvariantViolation

from .cache import GPU_TIER, HOST_TIER, CacheStatus, KVCache
from .pool import PagePool


def _check_tier(pool: PagePool, held: Mapping[int, list[int]]) -> None:
    """Every page 1..N is exactly one of free / held by exactly one cache."""
    free = pool.get_free_pages()
    owner: dict[int, object] = {}
    for page in free:
        if not 1 <= page <= pool.num_pages:
            raise InvariantViolation(
                "INV-CONSERVE", f"{pool.name} free list holds page id {page} outside"
                f" 1..{pool.num_pages}")
        if page in owner:
            raise InvariantViolation(
                "INV-CONSERVE", f"{pool.name} page {page} is in the free list twice")
        owner[page] = "free"
    for rid, pages in held.items():
        for page in pages:
            if not 1 <= page <= pool.num_pages:
                raise InvariantViolation(
                    "INV-CONSERVE", f"request {rid} holds {pool.name} page id {page} outside"
                    f" 1..{pool.num_pages}")
            if page in owner:
                raise InvariantViolation(
                    "INV-CONSERVE", f"{pool.name} page {page} is held by request {rid} and is"
                    f" also {owner[page]}")
            owner[page] = f"held by request {rid}"
    if len(owner) != pool.num_pages:
        missing = sorted(set(range(1, pool.num_pages + 1)) - set(owner))
        raise InvariantViolation(
            "INV-CONSERVE", f"{pool.name} pages {missing[:8]} are neither free nor held (leak)")


def check_integrity(config: Config, gpu: PagePool, host: PagePool,
                    caches: Mapping[int, KVCache], num_suspended_gpu_pages: int,
                    suspended: Mapping[int, KVCache] | None = None) -> None:
    """Raise :class:`InvariantViolation` unless the manager's structures are consistent.

    Checks: per tier, every page id is free or held by one cache entry of that tier, never
    twice and never both; page table length == ceil(capacity / B); the per-entry tiers agree
    with the host page count (``tiers`` None exactly when no entry is on the host); committed
    <= history <= capacity; ACTIVE caches have every page on GPU; the suspended-on-GPU page
    counter matches the caches; ``suspended`` (when given) holds exactly the SUSPENDED caches.
    """
    tpb = config.tokens_per_block
    suspended_gpu = 0
    held: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})
    for rid, c in caches.items():
        if len(c.pages) != -(-c.capacity // tpb):
            raise InvariantViolation(
                "INV-LEN", f"request {rid}: page table has {len(c.pages)} pages for capacity"
                f" {c.capacity} (tokens_per_block {tpb})")
        if not 0 <= c.committed <= c.history <= c.capacity:
            raise InvariantViolation(
                "INV-LEN", f"request {rid}: committed {c.committed} <= history {c.history} <="
                f" capacity {c.capacity} does not hold")
        tiers = c.tiers
        if tiers is None:
            if c.num_host != 0:
                raise InvariantViolation(
                    "INV-TIER", f"request {rid}: {c.num_host} host pages but no per-page tiers")
            held[GPU_TIER][rid] = c.pages
        else:
            if (len(tiers) != len(c.pages) or any(t not in (GPU_TIER, HOST_TIER) for t in tiers)
                    or tiers.count(HOST_TIER) != c.num_host or c.num_host == 0):
                raise InvariantViolation(
                    "INV-TIER", f"request {rid}: per-page tiers {tiers} disagree with"
                    f" {len(c.pages)} pages of which {c.num_host} on the host")
            for tier in (GPU_TIER, HOST_TIER):
                held[tier][rid] = [p for p, t in zip(c.pages, tiers, strict=True) if t == tier]
        if c.status == CacheStatus.ACTIVE and c.num_host:
            raise InvariantViolation(
                "INV-LOCK", f"request {rid}: ACTIVE cache has {c.num_host} pages on the host")
        if c.status == CacheStatus.SUSPENDED:
            suspended_gpu += c.num_gpu
    _check_tier(gpu, held[GPU_TIER])
    _check_tier(host, held[HOST_TIER])
    if suspended_gpu != num_suspended_gpu_pages:
        raise InvariantViolation(
            "INV-CONSERVE", f"suspended-on-GPU page counter {num_suspended_gpu_pages} !="
            f" {suspended_gpu} GPU pages held by SUSPENDED caches")
    if suspended is not None:
        want = {rid for rid, c in caches.items() if c.status == CacheStatus.SUSPENDED}
        if set(suspended) != want or any(suspended[r] is not caches[r] for r in suspended):
            raise InvariantViolation(
                "INV-CONSERVE", f"suspension order {list(suspended)} does not list exactly"
                f" the SUSPENDED caches {sorted(want)}")
