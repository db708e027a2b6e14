"""Structural checks of the torch manager (conservation, lengths, tiers) and its comparable
snapshot. Vectorized: a fixed number of tensor ops per check, whatever the sizes."""

from __future__ import annotations

import torch

from kvspec.errors import InvariantViolation

from .core import ManagerCore
from .pages import FREE_OWNER, NULL_OWNER, NULL_PAGE, PagePool
from .requests import NO_RECORD, SUSPENDED


def check_pool(pool: PagePool, tier: str) -> None:
    """Every page 1..P is exactly once either free or in one row's first ``count`` entries;
    entries past a count are the null page; the owner map agrees with the table.

    Raises InvariantViolation("INV-CONSERVE") otherwise. Cost: ~20 tensor ops.
    """
    def fail(msg: str) -> None:
        raise InvariantViolation("INV-CONSERVE", f"{tier} pool: {msg}")

    cols = torch.arange(pool.width, device=pool.table.device)
    live = cols.unsqueeze(0) < pool.count.unsqueeze(1)
    if bool((pool.count > pool.width).any()):
        fail("a page count exceeds the table width")
    if bool((pool.table[~live] != NULL_PAGE).any()):
        fail("a table entry past its row's count is not the null page")
    owned = pool.table[live].long()
    free = pool.stack[: pool.free].long()
    every = torch.cat([owned, free])
    if every.numel() and (bool((every < 1).any()) or bool((every > pool.num_pages).any())):
        fail("a page id outside 1..num_pages is owned or free")
    seen = torch.bincount(every, minlength=pool.num_pages + 1)
    if bool((seen[1:] != 1).any()):
        lost = (seen[1:] == 0).nonzero().flatten()[:5].add(1).tolist()
        dup = (seen[1:] > 1).nonzero().flatten()[:5].add(1).tolist()
        fail(f"pages lost {lost} or held twice {dup}")
    row_of = live.nonzero()[:, 0]
    if bool((pool.owner[owned] != row_of.to(torch.int32)).any()):
        fail("owner map disagrees with the table")
    if bool((pool.owner[free] != FREE_OWNER).any()) or int(pool.owner[0]) != NULL_OWNER:
        fail("owner map marks a free page as owned or the null page as usable")


def check_integrity(m: ManagerCore, extra: torch.Tensor | None = None) -> None:
    """All structural invariants of the manager (raises InvariantViolation naming the first).

    INV-CONSERVE per tier (:func:`check_pool`); INV-LEN: committed <= history <= capacity and
    GPU pages + host pages == blocks(capacity) for every cache, empty values for empty slots;
    INV-TIER: an ACTIVE cache has no host page and stamp 0; SUSPENDED caches carry distinct
    positive suspension stamps, none above the manager's clock; committed is 0 without
    ``commit_on_forward``. ``extra``: per row, GPU pages held past blocks(capacity) (the
    reserved tail under ``reserve_context``).
    """
    check_pool(m.gpu, "GPU")
    check_pool(m.host, "host")
    c = m.cache
    has = c.has_cache
    gcount, hcount = m.gpu.count, m.host.count.to(m.device)
    if bool((has & ~((0 <= c.committed) & (c.committed <= c.history)
                     & (c.history <= c.capacity))).any()):
        raise InvariantViolation("INV-LEN", "a cache breaks 0 <= committed <= history <= cap")
    held = gcount + hcount if extra is None else gcount + hcount - extra
    if bool((has & (held != m.blocks(c.capacity))).any()):
        raise InvariantViolation("INV-LEN", "a cache holds a page count != blocks(capacity)")
    if bool((has & (c.status != SUSPENDED) & (hcount != 0)).any()):
        raise InvariantViolation("INV-TIER", "an ACTIVE cache has pages on the host tier")
    if bool((has & (c.status != SUSPENDED) & (c.suspended_at != 0)).any()):
        raise InvariantViolation("INV-TIER", "an ACTIVE cache carries a suspension stamp")
    stamps = c.suspended_at[has & (c.status == SUSPENDED)]
    if stamps.numel() and (bool((stamps < 1).any()) or int(stamps.max()) > m.clock
                           or torch.unique(stamps).numel() != stamps.numel()):
        raise InvariantViolation("INV-TIER", "suspension stamps are not distinct in 1..clock")
    if not m.policy.commit_on_forward and bool((c.committed != 0).any()):
        raise InvariantViolation("INV-LEN", "committed tokens without commit_on_forward")
    empty = ~has & ((c.capacity != 0) | (c.history != 0) | (c.committed != 0) | (gcount != 0)
                    | (hcount != 0) | (c.draft_record != NO_RECORD) | (c.suspended_at != 0))
    if bool(empty.any()):
        raise InvariantViolation("INV-LEN", "an empty slot holds pages or counters")


def snapshot_state(m: ManagerCore) -> tuple[object, ...]:
    """A deep, comparable copy of the whole bookkeeping state: cache fields (suspension stamps
    included), both pools (tables, counts, free stacks in order, owner maps). KV data is not
    included (see ``read_kv``)."""
    return (m.cache.state(), m.gpu.state(), m.host.state())
