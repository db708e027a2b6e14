"""Implicit eviction: how growth and resume make room on the GPU tier (docs/fidelity.md).

TensorRT-LLM's storage manager takes new GPU slots for a growth (``_KVCache.resize``) or a
recall (``batched_lock_to_gpu`` in ``_KVCache.resume``) from the free slots first, then demotes
exactly the shortfall of *evictable* pages to the next tier: GPU pages of SUSPENDED caches
(HELD, not locked) when a host tier exists; the cache being grown or resumed is excluded. It
fails, changing nothing, when free + evictable is short or the host tier cannot take the
demoted pages (HELD pages are never evicted from the last tier).

*Which* pages are demoted is the implementation's choice (an eviction controller's order).
The model leaves it free: every action that may evict takes a ``demote`` argument, one page
count per request slot (plus one for the requests outside the model in the proofs'
abstraction), and admits exactly the vectors that the rules allow: each count within that
slot's evictable pages, the sum equal to the shortfall. z3 keeps the vector symbolic, so a
proof covers every victim choice; generators enumerate the admissible vectors
(:func:`victim_choices`); the lockstep passes the vector the implementation chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .ops import Term
from .state import State, evictable_pages, with_req

if TYPE_CHECKING:
    from .registry import Ctx


def victim_slots(c: Ctx, s: State) -> int:
    """Length of a ``demote`` vector: one entry per slot, plus the rest in the abstraction."""
    return len(s.reqs) + (1 if c.abstract_rest else 0)


def victim_caps(c: Ctx, s: State, r: int) -> list[Term]:
    """Per entry of a ``demote`` vector, the pages that may be demoted to make room for slot
    ``r``: the evictable GPU pages of every other slot (``r``'s own are excluded, as TRT
    excludes the pages it is locking), then the rest's evictable pages."""
    o, host = c.o, c.policy.host_tier
    caps: list[Term] = [0 if j == r else evictable_pages(o, q, host)
                        for j, q in enumerate(s.reqs)]
    if c.abstract_rest:
        caps.append(s.rest_evictable if host else 0)
    return caps


def room(c: Ctx, need: Term, gpu_free: Term, host_free: Term, evictable: Term
         ) -> tuple[Term, Term]:
    """(fits, shortfall) of taking ``need`` GPU pages: shortfall = max(need - free, 0) pages
    must be demoted; it fits iff that many are evictable and the host has free slots for
    them (``StorageManager._prepare_free_slots``). Pure arithmetic on counts."""
    shortfall = c.o.max(need - gpu_free, 0)
    return c.o.and_(shortfall <= evictable, shortfall <= host_free), shortfall


def victims_fit(c: Ctx, s: State, r: int, demote: Sequence[Term], total: Term) -> Term:
    """Whether ``demote`` is a choice the rules allow when ``total`` pages must be demoted to
    make room for slot ``r``: every count within its slot's evictable pages, summing to
    ``total``."""
    o = c.o
    caps = victim_caps(c, s, r)
    if len(demote) != len(caps):
        return False
    bounds = [o.and_(d >= 0, d <= cap) for d, cap in zip(demote, caps)]
    total_given: Term = 0
    for d in demote:
        total_given = total_given + d
    return o.and_(*bounds, total_given == total)


def demote(c: Ctx, s: State, counts: Sequence[Term]) -> State:
    """``s`` after moving ``counts[j]`` GPU pages of slot ``j`` (and ``counts[-1]`` of the
    rest, in the abstraction) to the host tier: the caches keep their capacity, their GPU
    pages become host pages, the free counts move the other way. The caller admitted
    ``counts`` with :func:`victims_fit`."""
    total: Term = 0
    for j, q in enumerate(s.reqs):
        if isinstance(counts[j], int) and counts[j] == 0:
            continue
        s = with_req(s, j, q._replace(host_pages=q.host_pages + counts[j]))
        total = total + counts[j]
    if c.abstract_rest:
        d = counts[len(s.reqs)]
        s = s._replace(rest_gpu=s.rest_gpu - d, rest_evictable=s.rest_evictable - d,
                       rest_host=s.rest_host + d)
        total = total + d
    return s._replace(gpu_free=s.gpu_free + total, host_free=s.host_free - total)


MAX_VICTIM_CHOICES = 16
"""Generators enumerate every admissible ``demote`` vector up to this many, else a fixed
sample of greedy choices (every slot order's greedy fill, and the spread one)."""


def victim_choices(caps: Sequence[int], total: int) -> list[tuple[int, ...]]:
    """Admissible ``demote`` vectors for concrete ``caps`` and ``total`` (empty when none):
    all of them when there are at most :data:`MAX_VICTIM_CHOICES`, else a deterministic
    sample (greedy fills in rotated slot orders, then one page at a time round-robin).
    Cost: O(choices x slots)."""
    if total < 0 or total > sum(caps):
        return []
    out: list[tuple[int, ...]] = []

    def fill(j: int, left: int, prefix: tuple[int, ...]) -> bool:
        if j == len(caps):
            if left == 0:
                out.append(prefix)
            return len(out) <= MAX_VICTIM_CHOICES
        rest_cap = sum(caps[j + 1:])
        for d in range(max(0, left - rest_cap), min(caps[j], left) + 1):
            if not fill(j + 1, left - d, prefix + (d,)):
                return False
        return True

    if fill(0, total, ()):
        return out
    sample: list[tuple[int, ...]] = []
    n = len(caps)
    for start in range(n):
        v, left = [0] * n, total
        for j in [(start + i) % n for i in range(n)]:
            v[j] = min(caps[j], left)
            left -= v[j]
        sample.append(tuple(v))
    v, left = [0] * n, total
    while left:
        for j in range(n):
            if left and v[j] < caps[j]:
                v[j] += 1
                left -= 1
    sample.append(tuple(v))
    return list(dict.fromkeys(sample))
