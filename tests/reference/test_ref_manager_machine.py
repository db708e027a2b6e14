"""A hypothesis state machine over the manager API alone: integrity after every step, and
every raising call (and every refusal documented as atomic) leaves the full state unchanged."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

from budget import scaled
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kvspec.config import Config
from kvspec.errors import InvariantViolation, KVSpecError
from kvspec.policy import PRESETS
from kvspec.reference import CacheStatus, LlmRequest, ReferenceKVCacheManager, RequestState

SLOTS = 2
slots = st.integers(0, SLOTS - 1)


class ManagerMachine(RuleBasedStateMachine):
    """Drives ReferenceKVCacheManager with valid and invalid calls in any order."""

    mgr: ReferenceKVCacheManager

    def __init__(self) -> None:
        super().__init__()
        self.reqs: list[LlmRequest | None] = [None] * SLOTS

    @initialize(policy=st.sampled_from(sorted(PRESETS)), gpu=st.sampled_from([6, 8, 4, 3, 0, 1]),
                host=st.sampled_from([4, 2, 0]), tpb=st.integers(1, 3),
                util=st.sampled_from([Fraction(1), Fraction(1, 2), Fraction(3, 4)]),
                shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 4),
                                          st.integers(0, 2)), min_size=SLOTS, max_size=SLOTS))
    def setup(self, policy: str, gpu: int, host: int, tpb: int, util: Fraction,
              shapes: list[tuple[int, int, int]]) -> None:
        config = Config(tokens_per_block=tpb, num_gpu_pages=gpu, num_host_pages=host,
                        max_util_for_resume=util, max_rewind_len=2, num_requests=SLOTS)
        self.mgr = ReferenceKVCacheManager(config, PRESETS[policy])
        for r, (prompt, chunk, draft) in enumerate(shapes):
            self.arrive(r, prompt, chunk, draft)

    # ------------------------------------------------------------------ helpers
    def full_state(self) -> tuple[Any, ...]:
        reqs = tuple(None if q is None else (q.context_current_position, q.state,
                                             q.py_ctx_pre_resize_cap) for q in self.reqs)
        return self.mgr.snapshot_state(), reqs

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        before = self.full_state()
        try:
            return fn(*args)
        except InvariantViolation:
            assert self.full_state() == self.after_refusal(fn.__name__, args, before), \
                f"{fn.__name__} raised but changed more than the policy allows"
            return "raised"
        except KVSpecError:
            assert self.full_state() == before, f"{fn.__name__} raised but changed state"
            return "raised"

    def after_refusal(self, name: str, args: tuple[Any, ...],
                      before: tuple[Any, ...]) -> tuple[Any, ...]:
        """The state a raising revert leaves: unchanged, except that under
        revert_clears_before_resize the revert already consumed its snapshot / record."""
        if not self.mgr.policy.revert_clears_before_resize or name not in (
                "revert_allocate_context", "revert_allocate_generation"):
            return before
        rid = args[0].request_id
        snap, reqs = before
        if name == "revert_allocate_generation":
            snap = (*snap[:3], tuple(kv for kv in snap[3] if kv[0] != rid), *snap[4:])
        else:
            reqs = tuple(None if q is None else (q[0], q[1], None) if i == rid else q
                         for i, q in enumerate(reqs))
        return snap, reqs

    def req(self, r: int) -> LlmRequest:
        q = self.reqs[r]
        if q is None:        # a request the manager has never seen: misuse paths
            q = LlmRequest(request_id=r, prompt_len=3, context_chunk_size=2)
        return q

    def counters(self, rid: int) -> tuple[Any, ...]:
        m = self.mgr
        if not m.has_cache(rid):
            return (None, m.get_draft_record(rid), m.num_free_gpu_pages, m.num_free_host_pages)
        return (m.get_capacity(rid), m.get_history(rid), m.get_committed(rid),
                m.get_page_table(rid), m.get_draft_record(rid), m.num_free_gpu_pages,
                m.num_free_host_pages, m.get_host_pages(rid), m.get_page_tiers(rid))

    # ------------------------------------------------------------------ rules
    @rule(r=slots, prompt=st.integers(1, 6), chunk=st.integers(1, 4), draft=st.integers(0, 2))
    def finish_and_arrive(self, r: int, prompt: int, chunk: int, draft: int) -> None:
        """A slot whose cache is gone takes a new request."""
        self.finish(r)
        self.arrive(r, prompt, chunk, draft)

    def arrive(self, r: int, prompt: int, chunk: int, draft: int) -> None:
        if self.reqs[r] is None and not self.mgr.has_cache(r):
            self.reqs[r] = LlmRequest(request_id=r, prompt_len=prompt,
                                      context_chunk_size=chunk, draft_len=draft)

    @rule(r=slots)
    def prepare_context(self, r: int) -> None:
        self.call(self.mgr.prepare_context, self.req(r))

    @rule(r=slots, extra=st.integers(-1, 3), exact=st.booleans())
    def resize_context(self, r: int, extra: int, exact: bool) -> None:
        q = self.req(r)
        num = q.context_resize_tokens() if exact and q.is_context else extra
        before = self.counters(r)
        if self.call(self.mgr.resize_context, q, num) is False:
            assert self.counters(r) == before

    @rule(r=slots)
    def forward_context(self, r: int) -> None:
        q = self.reqs[r]
        if q is None or not q.is_context:
            return
        old = q.context_current_position
        q.context_current_position = old + q.num_context_tokens()
        if self.call(self.mgr.update_context_resources, [q]) == "raised":
            q.context_current_position = old
        elif q.context_current_position == q.prompt_len:
            q.state = RequestState.GENERATION_IN_PROGRESS

    @rule(r=slots, stale=st.none() | st.integers(0, 6))
    def set_snapshot(self, r: int, stale: int | None) -> None:
        if self.reqs[r] is not None:
            self.reqs[r].py_ctx_pre_resize_cap = stale     # type: ignore[union-attr]

    @rule(r=slots)
    def revert_allocate_context(self, r: int) -> None:
        self.call(self.mgr.revert_allocate_context, self.req(r))

    @rule(r=slots, op=st.sampled_from(["update_context_resources", "try_allocate_generation",
                                       "revert_allocate_generation", "suspend_request",
                                       "update_resources"]), accepted=st.integers(-1, 3))
    def any_call(self, r: int, op: str, accepted: int) -> None:
        """Any other operation on any slot, valid or not (misuse must raise, atomically)."""
        q = self.req(r)
        if op == "update_resources":
            self.call(self.mgr.update_resources, [q], [accepted])
        elif op == "try_allocate_generation":
            cap = self.mgr.get_capacity(r) if self.mgr.has_cache(r) else None
            if self.call(self.mgr.try_allocate_generation, q) is False:
                assert (self.mgr.get_capacity(r) if self.mgr.has_cache(r) else None) == cap
        elif op == "update_context_resources":
            self.call(self.mgr.update_context_resources, [q])
        else:
            self.call(getattr(self.mgr, op), q)

    @rule(r=slots)
    def resume_request(self, r: int) -> None:
        before = self.full_state()
        if self.call(self.mgr.resume_request, self.req(r)) is False:
            assert self.full_state() == before

    @rule(r=slots)
    def evict_to_host(self, r: int) -> None:
        before = self.full_state()
        if self.call(self.mgr.evict_to_host, self.req(r)) is False:
            assert self.full_state() == before

    @rule(r=slots)
    def free_resources(self, r: int) -> None:
        if self.call(self.mgr.free_resources, self.req(r)) is None and self.reqs[r] is not None:
            self.reqs[r] = None

    @rule(r=slots, chunks=st.integers(1, 4))
    def run_chunks(self, r: int, chunks: int) -> None:
        """The valid context path, up to ``chunks`` times: prepare, resize, forward."""
        for _ in range(chunks):
            q = self.reqs[r]
            if q is None or not q.is_context or self.call(self.mgr.prepare_context, q) is not True:
                return
            if self.call(self.mgr.resize_context, q, q.context_resize_tokens()) is not True:
                return
            self.forward_context(r)

    @rule(accepted=st.integers(0, 2), skip=st.booleans())
    def generation_step(self, accepted: int, skip: bool) -> None:
        """The valid generation path for every generating request: grow, then forward the
        grown ones together (or revert them, as on a can_queue skip)."""
        grown = []
        for q in self.reqs:
            if q is not None and q.is_generation and self.mgr.has_cache(q.request_id):
                if self.call(self.mgr.try_allocate_generation, q) is True:
                    grown.append(q)
        if skip:
            for q in grown:
                self.call(self.mgr.revert_allocate_generation, q)
        else:
            self.call(self.mgr.update_resources, grown,
                      [min(accepted, q.draft_len) for q in grown])

    @rule(r=slots)
    def suspend_and_evict(self, r: int) -> None:
        q = self.reqs[r]
        if q is not None and self.mgr.has_cache(r):
            if self.mgr.get_status(r) == CacheStatus.ACTIVE:
                self.call(self.mgr.suspend_request, q)
            self.evict_to_host(r)

    def finish(self, r: int) -> None:
        q = self.reqs[r]
        if q is not None and not self.mgr.has_cache(r):
            self.reqs[r] = None

    # ------------------------------------------------------------------ invariants
    @invariant()
    def integrity(self) -> None:
        if hasattr(self, "mgr"):
            self.mgr.check_integrity()
            for rid in self.mgr.request_ids():
                tiers = self.mgr.get_page_tiers(rid)
                assert len(tiers) == len(self.mgr.get_page_table(rid))
                assert sum(tiers) == self.mgr.get_host_pages(rid)
                if self.mgr.get_status(rid) == CacheStatus.ACTIVE:
                    assert self.mgr.get_host_pages(rid) == 0


ManagerMachine.TestCase.settings = settings(max_examples=scaled(250), stateful_step_count=40,
                                            deadline=None)
TestManagerMachine = ManagerMachine.TestCase
