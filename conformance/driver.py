"""The executor side for one implementation: one request object per slot, each model action
translated into manager calls, and :func:`abstract` mapping the implementation's state into the
model's observable fields (plus the structural checks only an implementation can fail).

Implementations never import the model; this module is the only mapping between the two.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvspec.config import Config
from kvspec.errors import InvalidArgument, InvariantViolation, ProtocolError
from kvspec.policy import Policy
from kvspec.reference.request import LlmRequest, RequestState

from . import misuse as _misuse
from .misuse import MisuseFinding

# The model's encodings (kept here as plain ints: the driver never imports the model).
DONE, CONTEXT, GENERATION = 0, 1, 2
ACTIVE, SUSPENDED = 0, 1
NONE = -1

OBS_FIELDS: tuple[str, ...] = (
    "phase", "pos", "has_cache", "status", "never_resumed", "host_pages", "capacity", "history",
    "committed", "snapshot", "draft_record")
"""Per-slot observed fields, in :data:`SlotObs` order (the model's ``Req`` field names)."""
F = {name: i for i, name in enumerate(OBS_FIELDS)}

SlotObs = tuple[int, ...]
Observation = tuple[tuple[SlotObs, ...], int, int]
"""(per-slot observations, gpu_free, host_free)."""


@dataclass
class StepOutcome:
    """What one driver step did: the manager's return value (``bool(value)``, or None when it
    returned None or the call returns nothing), or the InvariantViolation it raised (state
    unchanged), plus ids of properties the driver detected from observations and what the
    misuse probes found (:mod:`kvspec.conformance.misuse`; step 0, the lockstep stamps it)."""

    result: bool | None = None
    raised: InvariantViolation | None = None
    detected: frozenset[str] = frozenset()
    misuse: tuple[MisuseFinding, ...] = ()


def _result(value: Any) -> bool | None:
    """A manager's return value as the model compares it: ``bool(value)``, but None stays None
    (a forgotten ``return`` must show as None, not as False)."""
    return None if value is None else bool(value)


def blocks(capacity: int, tokens_per_block: int) -> int:
    """ceil(capacity / tokens_per_block)."""
    return -(-capacity // tokens_per_block)


class Driver:
    """Plays the executor for one manager, slot by slot, in the model's action vocabulary.

    Cost: one or two manager calls per action plus one :func:`abstract` per step (O(slots)
    observation calls). Effect: mutates the manager and the slot request objects.

    Args:
        manager: an object implementing :class:`kvspec.conformance.adapter.KVManager`.
        config, policy: the model's configuration and policy (the manager got the same).
        probe_misuse: run the misuse probes of :mod:`kvspec.conformance.misuse` (after each
            ``free_resources``: a double free and a free of an unknown id; after each
            ``suspend_request``: a second suspend); each must raise :class:`ProtocolError`
            and change nothing, what else happened is in ``StepOutcome.misuse``.
        batch_forward: a ``forward`` step writes its KV but its update call waits; the
            lockstep sends the iteration's forwards as one batch (:meth:`flush_forwards`).
    """

    def __init__(self, manager: Any, config: Config, policy: Policy, *,
                 probe_misuse: bool = True, batch_forward: bool = False) -> None:
        self.manager = manager
        self.config = config
        self.policy = policy
        self.probe_misuse = probe_misuse
        # forwards waiting to be sent as one batch (slot, accepted), see flush_forwards
        self.batch_forward = batch_forward
        self.pending: list[tuple[int, int]] = []
        n = config.num_requests
        self.reqs: list[LlmRequest | None] = [None] * n
        # executor-side marks for the properties conformance checks itself; maintained by
        # kvspec.conformance.detect.observe_step (reset here when a slot is (re)filled)
        self.fresh = [False] * n          # snapshot written by a success this iteration
        self.gen_outstanding = [False] * n
        self.resized = [False] * n
        self.ran = [False] * n
        self.pinned_start = [0] * n
        # per slot, the (tier, page id) entries of its page table at the last per-step
        # structure check (kept-page oracle); None: no cache then
        self.tables: list[tuple[tuple[int, int], ...] | None] = [None] * n
        # content oracle (managers with write_tokens/read_tokens): per slot, the tag the
        # driver wrote at each token position it forwarded; a fresh nonce per write
        self.contents = all(callable(getattr(manager, f, None))
                            for f in ("write_tokens", "read_tokens"))
        self.tags: list[list[int]] = [[] for _ in range(n)]
        self._nonce = 0
        self._never_resumed = callable(getattr(manager, "is_never_resumed", None))
        # misuse probe "stale free after reuse": per freed slot (not refilled since), the
        # request object and the GPU page ids it held when freed
        self.freed: dict[int, tuple[LlmRequest, frozenset[int]]] = {}
        self._ops: dict[str, Callable[..., StepOutcome]] = {
            "arrive": self._arrive, "prepare_context": self._prepare_context,
            "resize_context": self._resize_context,
            "try_allocate_generation": self._try_allocate_generation,
            "suspend_request": self._suspend_request, "resume_request": self._resume_request,
            "evict_to_host": self._evict_to_host,
            "free_resources": self._free_resources, "decide": self._decide,
            "revert_allocate_context": self._revert_allocate_context,
            "revert_allocate_generation": self._revert_allocate_generation,
            "forward": self._forward, "end_iteration": self._end_iteration,
        }

    # ---- dispatch ------------------------------------------------------------------------

    def apply(self, name: str, r: int, args: Mapping[str, Any]) -> StepOutcome:
        """Perform model action ``name`` on the implementation.

        Returns the manager's result; an :class:`InvariantViolation` is caught into
        ``StepOutcome.raised`` (the driver's own fields are rolled back). Any other exception
        propagates (the lockstep reports it as a divergence).

        Raises:
            InvalidArgument: ``name`` is not an action the driver knows.
        """
        op = self._ops.get(name)
        if op is None:
            raise InvalidArgument(
                f"driver: action {name!r} has no translation; known: {', '.join(self._ops)}")
        try:
            return op(r, **args)
        except InvariantViolation as exc:
            return StepOutcome(raised=exc)

    def _req(self, r: int) -> LlmRequest:
        req = self.reqs[r]
        if req is None:
            raise ProtocolError(f"driver: slot {r} has no request; the model's guard should"
                                " have prevented this action")
        return req

    # ---- SCHEDULE stage ------------------------------------------------------------------

    def _arrive(self, r: int, prompt_len: int, chunk_size: int, draft_len: int) -> StepOutcome:
        self.reqs[r] = LlmRequest(request_id=r, prompt_len=prompt_len,
                                  context_chunk_size=chunk_size, draft_len=draft_len)
        self.freed.pop(r, None)  # the id is live again: a free of it is no longer stale
        self._reset_slot(r)
        return StepOutcome()

    def _reset_slot(self, r: int) -> None:
        self.fresh[r] = self.gen_outstanding[r] = self.resized[r] = self.ran[r] = False
        self.pinned_start[r] = 0
        self.tags[r] = []

    def _prepare_context(self, r: int) -> StepOutcome:
        return self._grown(r, self.manager.prepare_context(self._req(r)))

    def _resize_context(self, r: int) -> StepOutcome:
        req = self._req(r)
        return self._grown(r, self.manager.resize_context(req, req.context_resize_tokens()))

    def _try_allocate_generation(self, r: int) -> StepOutcome:
        return self._grown(r, self.manager.try_allocate_generation(self._req(r)))

    def _grown(self, r: int, value: Any) -> StepOutcome:
        """The outcome of a call that may take GPU pages for slot ``r``; when a freed slot's
        old pages are now in ``r``'s table, the stale-free probe runs (once per free)."""
        if not (self.probe_misuse and self.freed and value):
            return StepOutcome(result=_result(value))
        table = frozenset(self._gpu_pages(r))
        found: list[MisuseFinding] = []
        for q, (old, pages) in list(self.freed.items()):
            if pages & table:
                del self.freed[q]
                found.extend(_misuse.after_reuse(self, old, r))
        return StepOutcome(result=_result(value), misuse=tuple(found))

    def _gpu_pages(self, r: int) -> list[int]:
        """Slot ``r``'s GPU page ids (every entry without ``get_page_tiers``)."""
        m = self.manager
        if not m.has_cache(r):
            return []
        table = m.get_page_table(r)
        tiers = getattr(m, "get_page_tiers", None)
        if not callable(tiers):
            return list(table)
        return [p for p, t in zip(table, tiers(r)) if t == 0]

    def _suspend_request(self, r: int) -> StepOutcome:
        req = self._req(r)
        self.manager.suspend_request(req)
        return StepOutcome(misuse=_misuse.after_suspend(self, req) if self.probe_misuse else ())

    def _resume_request(self, r: int) -> StepOutcome:
        return self._grown(r, self.manager.resume_request(self._req(r)))

    def _evict_to_host(self, r: int) -> StepOutcome:
        ok = self.manager.evict_to_host(self._req(r))
        # The model only evicts when the host has room: a False return is a divergence.
        return StepOutcome(result=None if ok is None or ok else False)

    def _free_resources(self, r: int) -> StepOutcome:
        req = self._req(r)
        held = frozenset(self._gpu_pages(r)) if self.probe_misuse else frozenset()
        self.manager.free_resources(req)
        if held:
            self.freed[r] = (req, held)
        req.state = RequestState.GENERATION_COMPLETE
        self.reqs[r] = None
        self._reset_slot(r)
        return StepOutcome(misuse=_misuse.after_free(self, req) if self.probe_misuse else ())

    def fingerprint(self) -> object:
        """A comparable value of the manager state: ``snapshot_state()`` when offered, else
        the observation plus page tables."""
        snap = getattr(self.manager, "snapshot_state", None)
        if callable(snap):
            return snap()
        tables = tuple(tuple(self.manager.get_page_table(r)) if self.manager.has_cache(r)
                       else () for r in range(self.config.num_requests))
        return abstract(self), tables

    # ---- decision and SETTLE stage ------------------------------------------------------

    def _decide(self, r: int, wait: bool, can_queue: bool) -> StepOutcome:
        # executor bookkeeping, except phase 2 of the two-phase reservation (reserve_context):
        # the queued batch's reservations are committed (a request without one is left alone)
        if self.policy.reserve_context and can_queue and not wait:
            for req in self.reqs:
                if req is not None and req.state == RequestState.CONTEXT_INIT:
                    self.manager.commit_context(req)
        return StepOutcome()

    def _revert_allocate_context(self, r: int) -> StepOutcome:
        value = self.manager.revert_allocate_context(self._req(r))
        if value is None and not self.policy.free_branch_rewinds:
            value = True  # that revision returns nothing in every branch: no signal
        return StepOutcome(result=_result(value))

    def _revert_allocate_generation(self, r: int) -> StepOutcome:
        self.manager.revert_allocate_generation(self._req(r))
        return StepOutcome()

    def _write_tags(self, r: int, start: int, n: int) -> None:
        """As the forward pass writes KV: a fresh tag into each of tokens [start, start + n)
        of slot ``r``, through the manager (content oracle; see :func:`structure`)."""
        tags = [(self._nonce + i) % (1 << 24) for i in range(1, n + 1)]
        self._nonce += n
        self.manager.write_tokens(r, start, tags)
        self.tags[r] = self.tags[r][:start] + tags

    def _forward(self, r: int, accepted: int) -> StepOutcome:
        """The forward pass writes slot ``r``'s KV (content tags); with ``batch_forward``
        the update calls wait in :attr:`pending` for :meth:`flush_forwards`."""
        req = self._req(r)
        if self.contents:
            if req.state == RequestState.CONTEXT_INIT:
                self._write_tags(r, req.context_current_position, req.num_context_tokens())
            else:
                self._write_tags(r, int(self.manager.get_history(r)), 1 + accepted)
        if self.batch_forward:
            self.pending.append((r, accepted))
        else:
            self._update([(r, accepted)])
        return StepOutcome()

    def flush_forwards(self, seed: str) -> list[tuple[int, int]]:
        """Issue the pending forwards as one batch, as an executor does: one
        ``update_context_resources`` call with every context request and one
        ``update_resources`` call with every generation request and its own accepted count,
        each list in an order shuffled by ``seed`` (reproducible). Returns the (slot,
        accepted) pairs in the order sent. A call that raises rolls back the driver's request
        positions and propagates (the lockstep reports it)."""
        batch, self.pending = self.pending, []
        random.Random(seed).shuffle(batch)
        self._update(batch)
        return batch

    def _update(self, batch: Sequence[tuple[int, int]]) -> None:
        ctx = [self._req(r) for r, _ in batch
               if self._req(r).state == RequestState.CONTEXT_INIT]
        gen = [(self._req(r), a) for r, a in batch
               if self._req(r).state != RequestState.CONTEXT_INIT]
        old = [req.context_current_position for req in ctx]
        for req in ctx:
            req.context_current_position += req.num_context_tokens()
        try:
            if ctx:
                self.manager.update_context_resources(ctx)
        except BaseException:
            for req, pos in zip(ctx, old):
                req.context_current_position = pos
            raise
        for req in ctx:
            if req.context_current_position == req.prompt_len:
                req.state = RequestState.GENERATION_IN_PROGRESS
        if gen:
            self.manager.update_resources([q for q, _ in gen], [a for _, a in gen])

    def _end_iteration(self, r: int) -> StepOutcome:
        if self.policy.clear_snapshot_at_iteration_start:
            for req in self.reqs:
                if req is not None:
                    req.py_ctx_pre_resize_cap = None
        return StepOutcome()


def pinned(q: SlotObs, config: Config, policy: Policy) -> int:
    """GPU pages a slot pins: an ACTIVE cache's, or any suspended one's GPU pages without a
    host tier."""
    if not q[F["has_cache"]]:
        return 0
    if policy.host_tier and q[F["status"]] != ACTIVE:
        return 0
    return blocks(q[F["capacity"]], config.tokens_per_block) - q[F["host_pages"]]


def abstract(driver: Driver) -> Observation:
    """Map the implementation's state to the model's observable fields.

    Per slot (:data:`OBS_FIELDS`): phase/pos/snapshot from the driver's request object, the
    cache fields from the manager (only asked when ``has_cache``; the empty values otherwise),
    ``never_resumed`` as -2 ("not observed") when the manager lacks ``is_never_resumed``.
    Cost: about ten manager calls per slot.
    """
    m = driver.manager
    slots = []
    for r, req in enumerate(driver.reqs):
        if req is None:
            phase, pos, snap = DONE, 0, NONE
        else:
            phase = CONTEXT if req.state == RequestState.CONTEXT_INIT else GENERATION
            pos = req.context_current_position
            snap = NONE if req.py_ctx_pre_resize_cap is None else req.py_ctx_pre_resize_cap
        if m.has_cache(r):
            never = int(bool(m.is_never_resumed(r))) if driver._never_resumed else -2
            cache = (1, int(m.get_status(r)), never, int(m.get_host_pages(r)),
                     int(m.get_capacity(r)), int(m.get_history(r)), int(m.get_committed(r)))
        else:
            cache = (0, SUSPENDED, 0 if driver._never_resumed else -2, 0, 0, 0, 0)
        rec = m.get_draft_record(r)
        slots.append((phase, pos, *cache, snap, NONE if rec is None else int(rec)))
    return tuple(slots), int(m.num_free_gpu_pages), int(m.num_free_host_pages)


def structure(driver: Driver, *, per_step: bool = False) -> list[str]:
    """Structural checks only an implementation can fail; messages of the failures.

    Per tier: page ids within 1..pages, no id in two page tables or twice in one, no page both
    free and held (with ``free_page_ids``), free + held == total; per cache: table length ==
    ceil(capacity / B), 0 <= committed <= history <= capacity, 0 <= host pages <= table
    length, ACTIVE caches wholly on GPU, and (with ``get_page_tiers``) one tier per entry
    agreeing with the host page count; plus the manager's own ``check_integrity`` when
    offered. A cache partly on the host of a manager without ``get_page_tiers`` counts its
    pages per tier but its ids are not checked.

    ``per_step`` (called after every step) adds two oracles. Kept pages: a page-table entry
    that stays in its tier between two consecutive steps keeps its page id (after a growth
    the old table is a prefix of the new, after a shrink the new is a prefix of the old), so a
    manager that releases the wrong pages (counts and ids still consistent) is caught.
    Contents, for a manager offering ``write_tokens``/``read_tokens``: every token below a
    cache's history reads back, through its page table and from whichever tier holds it, the
    tag the driver wrote when it was forwarded; this covers what kept pages cannot see
    (demotion, recall, resume). Cost: O(pages), plus one read of every live token with
    contents.
    """
    m, k = driver.manager, driver.config
    out: list[str] = []
    totals = (k.num_gpu_pages, k.num_host_pages if driver.policy.host_tier else 0)
    held: tuple[dict[int, int], dict[int, int]] = ({}, {})
    unattributed = [0, 0]  # pages of partly demoted caches whose ids are not attributed
    tiers_fn = getattr(m, "get_page_tiers", None)
    tables: list[tuple[tuple[int, int], ...] | None] = [None] * k.num_requests
    for r in range(k.num_requests):
        if not m.has_cache(r):
            continue
        cap, hist, com = m.get_capacity(r), m.get_history(r), m.get_committed(r)
        host = int(m.get_host_pages(r))
        table = list(m.get_page_table(r))
        if len(table) != blocks(cap, k.tokens_per_block):
            out.append(f"slot {r}: page table has {len(table)} pages for capacity {cap}"
                       f" (expected ceil({cap}/{k.tokens_per_block}) ="
                       f" {blocks(cap, k.tokens_per_block)})")
        if not 0 <= com <= hist <= cap:
            out.append(f"slot {r}: committed {com} <= history {hist} <= capacity {cap} fails")
        if not 0 <= host <= len(table):
            out.append(f"slot {r}: {host} host pages for a page table of {len(table)}")
            continue
        if host and int(m.get_status(r)) == ACTIVE:
            out.append(f"slot {r}: ACTIVE cache has {host} page(s) on the host tier")
        if callable(tiers_fn):
            tiers = [int(t) for t in tiers_fn(r)]
            if len(tiers) != len(table) or sum(1 for t in tiers if t == 1) != host or any(
                    t not in (0, 1) for t in tiers):
                out.append(f"slot {r}: page tiers {tiers} do not match a table of"
                           f" {len(table)} with {host} host page(s)")
                continue
        elif host in (0, len(table)):
            tiers = [1 if host else 0] * len(table)
        else:
            unattributed[0] += len(table) - host
            unattributed[1] += host
            continue
        tables[r] = tuple(zip(tiers, table))
        for page, tier in zip(table, tiers):
            if not 1 <= page <= totals[tier]:
                out.append(f"slot {r}: {'host' if tier else 'GPU'} page id {page} outside"
                           f" 1..{totals[tier]}")
            elif page in held[tier]:
                out.append(f"{'host' if tier else 'GPU'} page {page} held by slot {r} and by"
                           f" slot {held[tier][page]}")
            held[tier][page] = r
    reserved_fn = getattr(m, "get_reserved_pages", None)  # reserve_context: held, no table
    if callable(reserved_fn):
        for r in range(k.num_requests):
            for page in reserved_fn(r):
                if page in held[0] or not 1 <= page <= totals[0]:
                    out.append(f"slot {r}: reserved GPU page {page} out of range or held twice")
                held[0][page] = r
    if per_step:
        out.extend(_moved_pages(driver.tables, tables))
        driver.tables = tables
        if driver.contents:
            out.extend(_lost_contents(driver))
    frees = (int(m.num_free_gpu_pages), int(m.num_free_host_pages))
    ids_fn = getattr(m, "free_page_ids", None)
    free_ids = ids_fn() if callable(ids_fn) else None
    for tier, name in ((0, "GPU"), (1, "host")):
        n_held = len(held[tier]) + unattributed[tier]
        if frees[tier] + n_held != totals[tier]:
            out.append(f"{name} tier: {frees[tier]} free + {n_held} held !="
                       f" {totals[tier]} pages (conservation)")
        if free_ids is None:
            continue
        ids = list(free_ids[tier])
        if len(ids) != frees[tier]:
            out.append(f"{name} tier: {len(ids)} free page ids but num_free = {frees[tier]}")
        if len(set(ids)) != len(ids):
            out.append(f"{name} tier: a page id is free twice: {sorted(ids)}")
        both = sorted(set(ids) & set(held[tier]))
        if both:
            out.append(f"{name} tier: pages {both} are both free and held by slot"
                       f" {held[tier][both[0]]}")
    check = getattr(m, "check_integrity", None)
    if callable(check):
        try:
            check()
        except (InvariantViolation, ProtocolError) as exc:
            out.append(f"check_integrity: {exc}")
    return out


def _moved_pages(before: list[tuple[tuple[int, int], ...] | None],
                 after: list[tuple[tuple[int, int], ...] | None]) -> list[str]:
    """Kept-page oracle: entries that stayed in their tier but changed page id."""
    out = []
    for r, (old, new) in enumerate(zip(before, after)):
        if old is None or new is None:
            continue
        for i, ((t0, p0), (t1, p1)) in enumerate(zip(old, new)):
            if t0 == t1 and p0 != p1:
                tier = "host" if t0 else "GPU"
                out.append(f"slot {r}: page-table entry {i} (tokens of block {i}) changed from"
                           f" {tier} page {p0} to {tier} page {p1} without moving tier; a kept"
                           " block must keep its page (a shrink releases the tail, a growth"
                           " appends)")
                break
    return out


def _lost_contents(driver: Driver) -> list[str]:
    """Content oracle: each live cache's tokens below its history hold the driver's tags."""
    m, out = driver.manager, []
    for r in range(driver.config.num_requests):
        if not m.has_cache(r):
            driver.tags[r] = []
            continue
        want = driver.tags[r][:int(m.get_history(r))]
        got = list(m.read_tokens(r, len(want)))
        if got != want:
            i = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), len(got))
            block = i // driver.config.tokens_per_block
            out.append(f"slot {r}: token {i} (block {block}) reads"
                       f" {got[i] if i < len(got) else 'nothing'} through the page table;"
                       f" the forward wrote {want[i]} (its KV was lost or moved)")
    return out
