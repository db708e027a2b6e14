"""Structural checks of a reference manager: page conservation per tier and the per-cache
length invariants. O(total pages); used by tests after every step, never on the hot path."""

from __future__ import annotations

from collections.abc import Mapping

from kvspec.config import Config
from kvspec.errors import InvariantViolation

from .cache import CacheStatus, KVCache
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
                    caches: Mapping[int, KVCache], num_suspended_gpu_pages: int) -> None:
    """Raise :class:`InvariantViolation` unless the manager's structures are consistent.

    Checks: per tier, every page id is free or held by one cache, never twice and never both;
    page table length == ceil(capacity / B); committed <= history <= capacity; ACTIVE caches
    are on GPU; the suspended-on-GPU page counter matches the caches.
    """
    tpb = config.tokens_per_block
    suspended = 0
    for rid, c in caches.items():
        if len(c.pages) != -(-c.capacity // tpb):
            raise InvariantViolation(
                "INV-LEN", f"request {rid}: page table has {len(c.pages)} pages for capacity"
                f" {c.capacity} (tokens_per_block {tpb})")
        if not 0 <= c.committed <= c.history <= c.capacity:
            raise InvariantViolation(
                "INV-LEN", f"request {rid}: committed {c.committed} <= history {c.history} <="
                f" capacity {c.capacity} does not hold")
        if c.status == CacheStatus.ACTIVE and c.on_host:
            raise InvariantViolation("INV-LOCK", f"request {rid}: ACTIVE cache is on the host")
        if c.status == CacheStatus.SUSPENDED and not c.on_host:
            suspended += len(c.pages)
    _check_tier(gpu, {rid: c.pages for rid, c in caches.items() if not c.on_host})
    _check_tier(host, {rid: c.pages for rid, c in caches.items() if c.on_host})
    if suspended != num_suspended_gpu_pages:
        raise InvariantViolation(
            "INV-CONSERVE", f"suspended-on-GPU page counter {num_suspended_gpu_pages} !="
            f" {suspended} pages held by SUSPENDED caches on GPU")
