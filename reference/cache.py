"""The per-request cache record (TensorRT-LLM ``_KVCache``), reduced to what the protocol sees:
capacity, history, committed tokens, status, and one page table of real page ids."""

from __future__ import annotations

import enum


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

    ``pages`` lists the page ids of the tier the cache lives in (GPU, or host when
    ``on_host``); ``len(pages) == ceil(capacity / tokens_per_block)`` always holds, and
    ``committed <= history <= capacity``. Only the manager mutates a ``KVCache``.
    """

    __slots__ = ("capacity", "committed", "history", "never_resumed", "on_host", "pages",
                 "status")

    def __init__(self) -> None:
        """A new cache: empty, SUSPENDED and never resumed (as TRT creates it)."""
        self.capacity = 0
        self.history = 0
        self.committed = 0
        self.status = CacheStatus.SUSPENDED
        self.never_resumed = True
        self.on_host = False
        self.pages: list[int] = []

    def as_tuple(self) -> tuple[int, int, int, int, bool, bool, tuple[int, ...]]:
        """A comparable value of every field (used by snapshots and tests)."""
        return (self.capacity, self.history, self.committed, int(self.status),
                self.never_resumed, self.on_host, tuple(self.pages))

    def __repr__(self) -> str:
        return (f"KVCache(capacity={self.capacity}, history={self.history},"
                f" committed={self.committed}, status={self.status.name},"
                f" never_resumed={self.never_resumed}, on_host={self.on_host},"
                f" pages={self.pages})")
