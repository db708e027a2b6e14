"""Implicit eviction end to end: the model admits every victim choice the rules allow, the
lockstep follows the one each implementation made (the reference and the torch manager choose
differently), and a choice the rules forbid is a divergence."""

from __future__ import annotations

from typing import Any

import pytest
from sample_traces import EVICTION_CONFIG, EVICTION_PROLOGUE

from kvspec.config import Config
from kvspec.conformance import impls
from kvspec.conformance.lockstep import Lockstep
from kvspec.conformance.replay import replay_on_impl
from kvspec.policy import get_policy
from kvspec.spec.model import Model
from kvspec.spec.state import ACTIVE
from kvspec.spec.trace import Step, Trace, with_digests

CONFIG = EVICTION_CONFIG
POLICY = get_policy("pr14849")
PROLOGUE = [(st.action, st.r, dict(st.args)) for st in EVICTION_PROLOGUE]


def _run(factory: Any) -> Lockstep:
    lock = Lockstep(factory, CONFIG, POLICY, impl_name="test")
    assert lock.initial_divergence() is None
    for name, r, args in PROLOGUE:
        assert lock.step(name, r, args) is None, (name, r)
    return lock


def test_model_admits_every_split_and_nothing_else() -> None:
    m = Model(CONFIG, POLICY)
    s = m.initial()
    for name, r, args in PROLOGUE:
        s = m.step(s, name, r, **args).state
    a = m.action("resize_context")
    admitted = sorted(x["demote"] for x in m.arguments(s, a, 2))
    assert admitted == [(0, 2, 0), (1, 1, 0), (2, 0, 0)]
    for bad in [(0, 0, 0), (1, 0, 0), (3, 0, 0), (2, 1, 0), (0, 0, 2), (-1, 3, 0)]:
        assert not m.enabled(s, "resize_context", 2, demote=bad), bad
    with pytest.raises(Exception, match="victims are a choice"):
        m.step(s, "resize_context", 2)  # ambiguous: the caller must choose
    out = m.step(s, "resize_context", 2, demote=(1, 1, 0))
    t = out.state
    assert out.result is True
    assert [q.host_pages for q in t.reqs] == [1, 1, 0]
    assert (t.gpu_free, t.host_free) == (0, 2)
    assert t.reqs[2].capacity == 2 and t.reqs[2].status == ACTIVE


def test_growth_fails_atomically_when_the_host_cannot_take_the_victims() -> None:
    m = Model(CONFIG.replace(num_host_pages=1), POLICY)
    s = m.initial()
    for name, r, args in PROLOGUE:
        s = m.step(s, name, r, **args).state
    out = m.step(s, "resize_context", 2, demote=(0, 0, 0))
    assert out.result is False
    t = out.state
    assert [q.host_pages for q in t.reqs] == [0, 0, 0]
    assert (t.gpu_free, t.host_free) == (s.gpu_free, s.host_free)
    assert not t.v_atomic


@pytest.mark.parametrize("impl", ["reference", "gpu"])
def test_lockstep_follows_the_implementations_victims(impl: str) -> None:
    lock = _run(getattr(impls, impl))
    assert lock.step("resize_context", 2, {}) is None
    chosen = lock.steps[-1].args["demote"]
    assert sum(chosen) == 2 and chosen[2] == 0
    # r0's resume recalls what it lost, demoting the same number of r1's pages (r2 is
    # ACTIVE, r0's own are excluded): the partial residencies add up on r1
    assert lock.step("resume_request", 0, {}) is None
    assert lock.steps[-1].result is True
    assert lock.steps[-1].args["demote"] == (0, chosen[0], 0)
    assert [q.host_pages for q in lock.state.reqs] == [0, chosen[0] + chosen[1], 0]
    assert lock.final_check() is None


def test_reference_and_torch_choose_different_victims() -> None:
    ref, gpu = _run(impls.reference), _run(impls.gpu)
    assert ref.step("resize_context", 2, {}) is None
    assert gpu.step("resize_context", 2, {}) is None
    assert ref.steps[-1].args["demote"] != gpu.steps[-1].args["demote"]


class _Wrapped:
    """A manager wrapping the reference, overriding some calls."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _NoImplicitEviction(_Wrapped):
    """A manager that refuses growth when free GPU pages are short (kvspec's old model)."""

    def resize_context(self, req: Any, num_tokens: int) -> bool:
        cap = self._inner.get_capacity(req.request_id)
        want = max(cap, req.context_current_position + num_tokens)
        need = -(-want // CONFIG.tokens_per_block) - -(-cap // CONFIG.tokens_per_block)
        if need > self._inner.num_free_gpu_pages:
            return False
        return bool(self._inner.resize_context(req, num_tokens))


def test_a_manager_without_implicit_eviction_diverges_on_the_result_only() -> None:
    lock = _run(lambda k, p: _NoImplicitEviction(impls.reference(k, p)))
    div = lock.step("resize_context", 2, {})
    assert div is not None
    text = div.render()
    assert "result: expected True, actual False" in text
    assert "victims" not in text  # a refusal chose no victims: the result says it all


class _OverDemotes(_Wrapped):
    """A manager whose growth first demotes every suspended cache (more than it needs)."""

    reqs: tuple[Any, ...] = ()

    def resize_context(self, req: Any, num_tokens: int) -> bool:
        for other in self.reqs:
            if other is not req and self._inner.has_cache(other.request_id) \
                    and int(self._inner.get_status(other.request_id)) == 1:
                self._inner.evict_to_host(other)
        return bool(self._inner.resize_context(req, num_tokens))


def test_a_victim_choice_the_rules_forbid_is_a_victims_divergence() -> None:
    made: list[_OverDemotes] = []

    def make(k: Config, p: Any) -> _OverDemotes:
        made.append(_OverDemotes(impls.reference(k, p)))
        return made[-1]

    lock = _run(make)
    made[0].reqs = tuple(q for q in lock.driver.reqs if q is not None)
    div = lock.step("resize_context", 2, {})
    assert div is not None
    text = div.render()
    assert "victims: expected demote one of [0, 2, 0], [1, 1, 0], [2, 0, 0]" in text
    assert "actual demote [2, 2, 0] (read from host pages)" in text


class _RaisesOnGrowth(_Wrapped):
    def resize_context(self, req: Any, num_tokens: int) -> bool:
        if req.request_id == 2:  # the growth that must evict
            raise RuntimeError("allocator exploded")
        return bool(self._inner.resize_context(req, num_tokens))


def test_a_manager_that_raises_on_an_evicting_step_is_reported_not_a_crash() -> None:
    lock = _run(lambda k, p: _RaisesOnGrowth(impls.reference(k, p)))
    div = lock.step("resize_context", 2, {})
    assert div is not None
    assert "RuntimeError: allocator exploded" in div.render()
    assert lock.steps[-1].args["demote"] in [(0, 2, 0), (1, 1, 0), (2, 0, 0)]


def test_replay_requires_the_traces_victims() -> None:
    """A trace records one admissible choice; replaying it on a manager that chooses
    another is a victims divergence, not a model refusal of a later step."""
    steps = tuple(EVICTION_PROLOGUE) + (
        Step("resize_context", 2, {"demote": (0, 2, 0)}), Step("evict_to_host", 0))
    trace = with_digests(Trace(POLICY, CONFIG, steps, source="hand"))
    res = replay_on_impl(trace, impls.reference)  # the reference demotes r0's pages first
    assert res.divergence is not None
    text = res.divergence.render()
    assert "victims: expected demote [0, 2, 0] (the trace's choice)" in text
    assert "actual demote [2, 0, 0] (read from host pages" in text


REFUSED_REVERT: list[tuple[str, int, dict[str, Any]]] = [
    ("arrive", 0, dict(prompt_len=1, chunk_size=1, draft_len=1)),
    ("prepare_context", 0, {}), ("resize_context", 0, {}),
    ("decide", 0, dict(wait=True, can_queue=False)),
    ("revert_allocate_context", 0, {}),
]


@pytest.mark.parametrize("impl", ["reference", "gpu"])
@pytest.mark.parametrize("policy,expected", [
    ("trtllm-2026-05", {"SWA-REWIND", "INV-ATOMIC"}),  # snapshot consumed, then it raises
    ("pr13805", {"SWA-REWIND"}),  # the refusal changes nothing
])
def test_a_refused_revert_is_atomic_only_in_the_reviewed_order(
        impl: str, policy: str, expected: set[str]) -> None:
    config = Config(max_prompt_len=1, max_draft_len=1, max_rewind_len=0)
    lock = Lockstep(getattr(impls, impl), config, get_policy(policy), impl_name=impl)
    for name, r, args in REFUSED_REVERT:
        assert lock.step(name, r, args) is None, (name, lock.violated)
    assert set(lock.last_model_violations) == expected
    assert set(lock.last_impl_violations) == expected
    snapshot = lock.state.reqs[0].snapshot
    assert (snapshot == -1) is (policy == "trtllm-2026-05")


TIGHT = Config(num_gpu_pages=2, num_host_pages=1, num_requests=2, tokens_per_block=1,
               max_prompt_len=2, max_draft_len=0, max_rewind_len=0)
"""A pool where growth evicts and a refused revert is reached early under trtllm-2026-05:
a BFS of the model reaches a state violating INV-ATOMIC at depth 5 and a cache partly on the
host (implicit partial demotion) at depth 9."""


@pytest.mark.parametrize("impl,depth", [("reference", 9), ("gpu", 6)])
def test_exhaustive_small_scope_of_the_may_2026_revision(impl: str, depth: int) -> None:
    from kvspec.conformance.exhaustive import explore

    res = explore(getattr(impls, impl), get_policy("trtllm-2026-05"), TIGHT, max_depth=depth)
    assert res.ok, res.render()
    assert res.bounded and f"depth {depth}" in res.bounded_reason
    assert res.states > (4000 if depth == 9 else 700)


def test_the_tight_pool_reaches_partial_residency_and_a_refused_revert() -> None:
    """What the exhaustive test above covers, checked on the model by the same BFS depth."""
    m = Model(TIGHT, get_policy("trtllm-2026-05"))
    frontier, seen = [m.initial()], set()
    partial_at = atomic_at = 0
    for depth in range(1, 10):
        nxt = []
        for s in frontier:
            for name, r, args in m.enabled_steps(s):
                t = m.step(s, name, r, **args).state
                if not partial_at and any(0 < q.host_pages < q.capacity for q in t.reqs):
                    partial_at = depth
                if not atomic_at and t.v_atomic:
                    atomic_at = depth
                t = t._replace(v_atomic=False, v_swa_rewind=False)
                if t not in seen:
                    seen.add(t)
                    nxt.append(t)
        frontier = nxt
    assert (partial_at, atomic_at) == (9, 5)
