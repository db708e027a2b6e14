"""Page pools with real page ids: one per tier. A pool is only a free list; which cache holds
a page is recorded in the caches' page tables (``manager.py``), so allocation allocates no
Python objects and costs two list operations per call."""

from __future__ import annotations

from collections.abc import Sequence

from kvspec.errors import ProtocolError

NULL_PAGE = 0
"""GPU page id 0: the padding page page tables and kernels may point at; never handed out."""


class PagePool:
    """A free list of page ids ``1..num_pages`` of one tier (GPU or host).

    Structure: a Python list used as a LIFO stack, the most recently freed page on top, so a
    page freed by a shrink is the first reused (vLLM's order for un-hashed blocks). Costs:
    ``allocate_n`` is one slice and one slice deletion, ``free_n`` one ``extend``; both O(n) in
    C with no per-page Python work. Page id 0 is never in the list: on the GPU it is the null
    page, on the host it is simply unused, so ids match between tiers' page tables.

    Page states are free (in the list) or held (in exactly one cache's page table); the
    manager derives "evictable" (held by a SUSPENDED cache while a host tier exists).
    """

    __slots__ = ("_free", "name", "num_pages")

    def __init__(self, num_pages: int, name: str = "gpu") -> None:
        """Create a pool whose every page is free.

        Args:
            num_pages: Usable pages (>= 0); ids 1..num_pages.
            name: Tier name used in error messages.
        """
        self.name = name
        self.num_pages = num_pages
        # Top of the stack is the list's end; page 1 is handed out first.
        self._free: list[int] = list(range(num_pages, 0, -1))

    @property
    def num_free_pages(self) -> int:
        """Pages in the free list. O(1)."""
        return len(self._free)

    def allocate_n(self, n: int) -> list[int]:
        """Take ``n`` pages off the free list.

        Cost: O(n) in C. Effect: reduces ``num_free_pages`` by n. All-or-nothing.

        Args:
            n: Pages wanted (>= 0).

        Returns:
            The page ids, in the order they should be appended to a page table.

        Raises:
            ProtocolError: ``n`` is negative or exceeds ``num_free_pages`` (the caller must
                check first); nothing is taken.
        """
        free = self._free
        if n == 1 and free:                 # the decode-step common case
            return [free.pop()]
        if not 0 < n <= len(free):
            if n == 0:
                return []
            if n < 0:
                raise ProtocolError(
                    f"{self.name} pool: cannot allocate n={n} pages; n must be >= 0")
            raise ProtocolError(
                f"{self.name} pool: cannot allocate {n} pages, only {len(free)} free;"
                " check num_free_pages before allocating")
        pages = free[:-n - 1:-1]
        del free[-n:]
        return pages

    def free_n(self, pages: Sequence[int]) -> None:
        """Return ``pages`` to the free list (the last one becomes the next allocated).

        Cost: O(n) in C. Effect: increases ``num_free_pages`` by len(pages). The cheap guard
        below catches any double free that would overflow the pool; a double free of pages
        that keeps the count in range is caught by the manager's ``check_integrity``.

        Raises:
            ProtocolError: the pool would hold more than ``num_pages`` free pages (a double
                free); nothing is returned.
        """
        if len(self._free) + len(pages) > self.num_pages:
            raise ProtocolError(
                f"{self.name} pool: freeing {len(pages)} pages would give"
                f" {len(self._free) + len(pages)} free pages of {self.num_pages};"
                " a page was freed twice (free each page table once)")
        self._free.extend(pages)

    def get_free_pages(self) -> tuple[int, ...]:
        """The free list, bottom to top. O(free pages); mainly used for tests and integrity."""
        return tuple(self._free)
