"""The per-request cache record (TensorRT-LLM ``_KVCache``), reduced to what the protocol sees:
capacity, history, committed tokens, status, and one page table of real page ids, each entry
resident on the GPU or on the host tier."""

from __future__ import annotations

import enum

GPU_TIER = 0
"""``get_page_tiers`` value of a page table entry holding a GPU page id."""
HOST_TIER = 1
"""``get_page_tiers`` value of a page table entry holding a host page id."""


class CacheStatus(enum.IntEnum):
    """``_KVCache`` status; values match the protocol's observation (0 ACTIVE, 1 SUSPENDED)."""

    ACTIVE = 0
    SUSPENDED = 1


class PageState(enum.IntEnum):
    """What a GPU page is used for right now (derived, not stored per page)."""

    FREE = 0
    HELD = 1
    EVICTABLE = 2


class KVCache:
    """One request's KV cache: the token counters and the page table.

    ``pages[i]`` is a page id of the tier ``tiers[i]`` (:data:`GPU_TIER` or :data:`HOST_TIER`);
    ``tiers`` is None when every entry is a GPU page (always so for an ACTIVE cache, and the
    common case, so the hot path never touches it) and ``num_host`` counts the host entries.
    ``len(pages) == ceil(capacity / tokens_per_block)`` always holds, and
    ``committed <= history <= capacity``. Only the manager mutates a ``KVCache``.
    """

    __slots__ = ("capacity", "committed", "history", "never_resumed", "num_host", "pages",
                 "status", "tiers")

    def __init__(self) -> None:
        """A new cache: empty, SUSPENDED and never resumed (as TRT creates it)."""
        self.capacity = 0
        self.history = 0
        self.committed = 0
        self.status = CacheStatus.SUSPENDED
        self.never_resumed = True
        self.num_host = 0
        self.pages: list[int] = []
        self.tiers: list[int] | None = None

    @property
    def num_gpu(self) -> int:
        """Entries holding a GPU page. O(1)."""
        return len(self.pages) - self.num_host

    def page_tiers(self) -> tuple[int, ...]:
        """The tier of every page table entry (0 GPU, 1 host). O(pages)."""
        if self.tiers is None:
            return (GPU_TIER,) * len(self.pages)
        return tuple(self.tiers)

    def as_tuple(self) -> tuple[object, ...]:
        """A comparable value of every field (used by snapshots and tests)."""
        return (self.capacity, self.history, self.committed, int(self.status),
                self.never_resumed, self.num_host, tuple(self.pages), self.page_tiers())

    def __repr__(self) -> str:
        return (f"KVCache(capacity={self.capacity}, history={self.history},"
                f" committed={self.committed}, status={self.status.name},"
                f" never_resumed={self.never_resumed}, num_host={self.num_host},"
                f" pages={self.pages}, tiers={self.tiers})")
