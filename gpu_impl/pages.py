"""One tier's page pool: a persistent page table, per-row page counts, a free-page stack and an
owner map, all tensors on one device, with batched grow/shrink that ship no page ids.

The same class serves the GPU tier (tensors on the manager's device) and the host tier (CPU
tensors). Page 0 is the null page: never allocated, written into every table entry past a row's
count so that padded readers see a harmless page.
"""

from __future__ import annotations

import torch

from .requests import FIELD

NULL_PAGE = 0
FREE_OWNER = -1
NULL_OWNER = -2


def expand(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattens per-segment counts into (segment id, index within segment) per element.

    Args:
        k: int32 or int64 [n] non-negative counts.

    Returns:
        ``(seg, j, excl)``: int64 [sum k] segment of each element, int64 [sum k] index of the
        element inside its segment, int64 [n] exclusive prefix sum of ``k``.

    Cost: 5 tensor ops, independent of n and of sum k (a device sync on CUDA to size the output).
    """
    excl = torch.cumsum(k, 0) - k
    seg = torch.repeat_interleave(torch.arange(k.numel(), device=k.device), k)
    j = torch.arange(seg.numel(), device=k.device) - excl[seg]
    return seg, j, excl


class PagePool:
    """Pages ``1..num_pages`` of one tier and the table rows that own them.

    State:
        table: int32 [num_rows, width], entries ``[:count[row]]`` are the row's pages in order,
            the rest are :data:`NULL_PAGE`.
        count: int32 (:data:`~kvspec.gpu_impl.requests.FIELD`) [num_rows] pages per row in
            this tier.
        stack: int64 [num_pages] free pages; ``stack[:free]`` are free, the top is
            ``stack[free - 1]``. Pops take from the top, pushes go on top.
        owner: int64 [num_pages + 1] row owning each page, :data:`FREE_OWNER` when free,
            :data:`NULL_OWNER` for page 0.
        free: Python int mirror of the stack height (no device read needed to know it).

    Order guarantee: a batched grow pops pages for the rows in the given order, each row taking
    its pages one by one for increasing columns; a batched shrink pushes each row's released pages
    from its last column down, rows in the given order. Both equal the same single-row operations
    applied in that order, so batched and sequential runs produce identical tables and stacks.
    """

    def __init__(self, num_pages: int, num_rows: int, width: int, device: torch.device,
                 pin: bool = False) -> None:
        self.num_pages = num_pages
        self.num_rows = num_rows
        self.width = width
        self.device = device
        # Each tensor has one scratch slot past its public view (table row ``num_rows``, stack
        # slot ``num_pages``, owner slot ``num_pages + 1``): the fixed-shape row paths
        # (:meth:`grow_one`, :meth:`shrink_one`) send the writes of rows with nothing to do
        # there instead of compacting the batch. Scratch contents are garbage, never read.
        self.table_full = torch.zeros((num_rows + 1, width), dtype=torch.int32, device=device)
        self.table = self.table_full[:num_rows]
        self.table_flat = self.table_full.view(-1)
        self.count = torch.zeros(num_rows, dtype=FIELD, device=device)
        # Initial stack [G, G-1, ..., 1]: the first pops hand out pages 1, 2, 3, ...
        self.stack_full = torch.zeros(num_pages + 1, dtype=torch.int64, device=device)
        self.stack_full[:num_pages] = torch.arange(num_pages, 0, -1, dtype=torch.int64,
                                                   device=device)
        self.stack = self.stack_full[:num_pages]
        self.owner_full = torch.full((num_pages + 2,), FREE_OWNER, dtype=torch.int64,
                                     device=device)
        self.owner = self.owner_full[:num_pages + 1]
        self.owner[NULL_PAGE] = NULL_OWNER
        if pin:
            raise NotImplementedError("pinned page pools are not used")
        self.scratch_entry = num_rows * width  # flat index of the scratch table row
        self.free = num_pages

    def fit(self, need: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """Which requests a sequential all-or-nothing allocation in list order would satisfy.

        Request i succeeds iff it is eligible and ``need[i]`` <= pages still free after the
        successes before it (exactly the single operations applied in order). Computed in
        rounds of prefix sums: each round accepts every eligible request up to the first one whose
        prefix sum exceeds the free count, rejects that one and every later one needing more than
        what is left. Rounds: 1 when everything fits; otherwise at most 1 + the number of
        distinct free levels at which a rejection happens (< 1 + max need), never a function of
        the number of requests.

        Args:
            need: int [n] pages wanted per request (>= 0).
            eligible: bool [n] requests that may allocate at all.

        Returns:
            bool [n] successes. Cost: ~10 tensor ops and one device read per round; no mutation.
        """
        ok = torch.zeros_like(eligible)
        open_ = eligible & (need <= self.free)
        remaining = self.free
        idx = torch.arange(need.numel(), device=need.device)
        big = need.numel()
        while True:
            cum = torch.cumsum(torch.where(open_, need, 0), 0)
            over = open_ & (cum > remaining)
            first = int(torch.where(over, idx, big).min().item()) if big else big
            if first == big:
                return ok | open_
            before = open_ & (idx < first)
            ok |= before
            used = int(cum[first].item()) - int(need[first].item())
            remaining -= used
            open_ = open_ & (idx > first) & (need <= remaining)

    def grow(self, rows: torch.Tensor, new_count: torch.Tensor) -> int:
        """Appends ``new_count - count[rows]`` popped pages to each row (rows in order).

        Precondition (checked by the caller with :meth:`fit`): the sum of growths <= ``free``,
        new_count >= count and <= width, rows distinct.
        Cost: ~12 tensor ops for any number of rows/pages; ships nothing host->device.
        Returns the number of pages popped (reduces ``free`` by it).
        """
        old = self.count[rows]
        seg, j, excl = expand(new_count - old)
        total = seg.numel()
        if total:
            pos = self.free - 1 - excl[seg] - j
            pages = self.stack[pos]
            seg_rows = rows[seg]
            self.table[seg_rows, old[seg] + j] = pages.to(torch.int32)
            self.owner[pages] = seg_rows
        self.count[rows] = new_count.to(FIELD)
        self.free -= total
        return total

    def shrink(self, rows: torch.Tensor, new_count: torch.Tensor) -> int:
        """Releases each row's pages past ``new_count`` onto the stack (last column first).

        Precondition: new_count <= count[rows] and >= 0, rows distinct. Released table entries are
        reset to the null page and their owners to free. Cost: ~12 tensor ops; ships nothing.
        Returns the number of pages pushed (increases ``free`` by it).
        """
        old = self.count[rows]
        seg, j, excl = expand(old - new_count)
        total = seg.numel()
        if total:
            seg_rows = rows[seg]
            cols = old[seg] - 1 - j
            pages = self.table[seg_rows, cols].long()
            self.stack[self.free + excl[seg] + j] = pages
            self.table[seg_rows, cols] = NULL_PAGE
            self.owner[pages] = FREE_OWNER
        self.count[rows] = new_count.to(FIELD)
        self.free += total
        return total

    def grow_one(self, rows: torch.Tensor, old: torch.Tensor, need: torch.Tensor,
                 total: int) -> None:
        """:meth:`grow` for growths of at most one page per row, in fixed shape.

        Args: rows (distinct), ``old`` = count[rows], ``need`` in {0, 1}, ``total`` = sum need
        <= free. Does not write ``count``.
        Row i (need 1) takes the page at stack position ``free - cum[i]`` (``cum`` the
        inclusive cumsum of ``need``), which is what the sequential pops hand it, and adds it
        into its null entry ``table[row, old]`` and the page's owner (-1 + row + 1). Rows with
        need 0 add 0: into entry ``row * width + old`` (a null entry, the next row's first
        entry or the scratch row when the row is full: adding 0 is harmless anywhere) and into
        the null page's owner. No masks, no ``where``.
        Cost: 8 tensor ops of size len(rows), no data-dependent shapes, no sync: the choice
        for an accelerator, where a data-dependent shape costs a device sync.
        """
        cum = need.cumsum(0)
        pages = self.stack_full.index_select(0, torch.rsub(cum, self.free)) * need
        self.table_flat.index_add_(0, torch.add(old, rows, alpha=self.width),
                                   pages.to(torch.int32))
        self.owner_full.index_add_(0, pages, (rows + 1) * need)
        self.free -= total

    def grow_compact(self, rows: torch.Tensor, old: torch.Tensor, need: torch.Tensor,
                     total: int) -> None:
        """:meth:`grow_one` on only the rows that take a page (same arguments, same effect).

        The rows with need 1, in batch order, take the top ``total`` stack entries, the first
        one the top: what the sequential pops hand them.
        Cost: 8 tensor ops, one of size len(rows) (``nonzero``), the rest of size ``total``:
        the choice on the CPU, where the ops' cost grows with their size and a data-dependent
        shape costs no sync.
        """
        sel = need.nonzero().view(-1)
        grown = rows.index_select(0, sel)
        pages = self.stack[self.free - total:self.free].flip(0)
        self.table_flat.scatter_(0, torch.add(old.index_select(0, sel), grown,
                                              alpha=self.width), pages.to(torch.int32))
        self.owner.scatter_(0, pages, grown)
        self.free -= total

    def shrink_one(self, rows: torch.Tensor, new: torch.Tensor, rel: torch.Tensor,
                   total: int) -> None:
        """:meth:`shrink` for releases of at most one page per row, in fixed shape.

        Args: rows (distinct), ``new`` = the new count[rows], ``rel`` = old count - new in
        {0, 1}, ``total`` = sum rel. Row i (rel 1) pushes its last page (entry ``new``) at
        stack position ``free + cum[i] - 1`` (rows in order, as the sequential pushes). Rows
        with rel 0 read entry ``row * width + new`` (masked to 0), subtract 0 from it and from
        the null page's owner, and push into the scratch slot. Does not write ``count``.
        Cost: 11 tensor ops, no ``where``, no sync.
        """
        entry = torch.add(new, rows, alpha=self.width)
        pages = self.table_flat.index_select(0, entry).long() * rel
        self.table_flat.index_add_(0, entry, pages.to(torch.int32), alpha=-1)
        # stack slot: free + cum - 1 for rel 1, the scratch slot num_pages for rel 0
        slot = (rel.cumsum(0) + (self.free - 1 - self.num_pages)) * rel + self.num_pages
        self.stack_full.scatter_(0, slot, pages)
        self.owner_full.index_add_(0, pages, (rows + 1) * rel, alpha=-1)
        self.free += total

    def shrink_compact(self, rows: torch.Tensor, new: torch.Tensor, rel: torch.Tensor,
                       total: int) -> None:
        """:meth:`shrink_one` on only the rows that release a page (same arguments, same
        effect): their last pages, in batch order, go onto the stack at ``free, free + 1, ...``
        as the sequential pushes put them.
        Cost: 8 tensor ops, one of size len(rows) (``nonzero``), the rest of size ``total``.
        """
        sel = rel.nonzero().view(-1)
        entry = torch.add(new.index_select(0, sel), rows.index_select(0, sel),
                          alpha=self.width)
        pages = self.table_flat.index_select(0, entry).long()
        self.table_flat.index_fill_(0, entry, NULL_PAGE)
        self.stack[self.free:self.free + total] = pages
        self.owner.index_fill_(0, pages, FREE_OWNER)
        self.free += total

    def take_front(self, row: int, k: int, n: int) -> torch.Tensor:
        """Pops ``k`` pages and puts them in front of ``row``'s ``n`` pages (which shift right
        by k): column j < k gets the page the j-th pop hands out (the top first), as
        :meth:`grow` would. Precondition: k <= free, n + k <= width, n == count[row].
        Returns the popped pages (int64 [k]). Cost: ~7 tensor ops; ships nothing.
        """
        pages = self.stack[self.free - k:self.free].flip(0)
        if n:
            self.table[row, k:k + n] = self.table[row, :n].clone()
        self.table[row, :k] = pages.to(torch.int32)
        self.owner[pages] = row
        self.count[row] = n + k
        self.free -= k
        return pages

    def release_front(self, row: int, k: int, n: int) -> torch.Tensor:
        """Releases the first ``k`` of ``row``'s ``n`` pages (the rest shift left by k): they
        go onto the stack in column order (the last one on top); their entries past the new
        count become the null page. Precondition: k <= n == count[row]. Returns the released
        pages (int64 [k]). Cost: ~7 tensor ops; ships nothing.
        """
        pages = self.table[row, :k].long()
        if n > k:
            self.table[row, :n - k] = self.table[row, k:n].clone()
        self.table[row, n - k:n] = NULL_PAGE
        self.stack[self.free:self.free + k] = pages
        self.owner[pages] = FREE_OWNER
        self.count[row] = n - k
        self.free += k
        return pages

    def pages_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Every page of ``rows`` as int64 [sum count], row by row, columns ascending (4 ops)."""
        seg, j, _ = expand(self.count[rows])
        return self.table[rows[seg], j].long()

    def row(self, row: int) -> list[int]:
        """The page ids of one row (one device read of ``count`` entries)."""
        n = int(self.count[row].item())
        return [int(p) for p in self.table[row, :n].tolist()]

    def state(self) -> tuple[object, ...]:
        """A comparable copy of the whole pool: table, counts, free stack, owners."""
        return (tuple(map(tuple, self.table.tolist())), tuple(self.count.tolist()),
                tuple(self.stack[: self.free].tolist()), tuple(self.owner.tolist()), self.free)
