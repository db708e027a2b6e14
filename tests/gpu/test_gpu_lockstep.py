"""Batched == sequential (exact state), KV read-back after random protocol runs, and the
differential run against the CPU reference."""

from __future__ import annotations

import random

import pytest
from budget import scaled
from gpu_helpers import DEVICES, NO_CUDA, Impl, Lockstep, gpu_impl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvspec.config import Config
from kvspec.policy import DESIGN_PRESETS, PRESETS, Policy
from kvspec.reference import GPU_TIER, KVCache, LlmRequest, ReferenceKVCacheManager, RequestState

POLICIES = sorted(set(PRESETS) - set(DESIGN_PRESETS))  # those: test_gpu_design.py
SMALL = Config(tokens_per_block=2, num_gpu_pages=7, num_host_pages=4, num_requests=4,
               max_prompt_len=7, max_draft_len=2, max_util_for_resume=0.9, max_rewind_len=3)


def _run(cfg: Config, policy: Policy, impls: list[Impl], seed: int, steps: int,
         exact: bool) -> Lockstep:
    rng = random.Random(seed)
    run = Lockstep(cfg, policy, impls, exact=exact)
    for _ in range(steps):
        run.random_step(rng)
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy_name", POLICIES)
@settings(max_examples=scaled(8), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_batch_equals_sequential(policy_name: str, device: str, seed: int) -> None:
    """Every batched op leaves exactly the state (page ids, free stack order, request fields)
    of the single ops applied in list order; the pool is small so allocations fail often."""
    policy = PRESETS[policy_name]
    _run(SMALL, policy, [gpu_impl(SMALL, policy, True, device),
                         gpu_impl(SMALL, policy, False, device)], seed, 40, exact=True)


class MruReference(ReferenceKVCacheManager):
    """The CPU reference with the torch manager's victim choice (the most recently suspended
    cache first, each from the front of its page table), so the two can run in lockstep
    through implicit evictions: with its own choice (LRU, from the end) the reference may
    demote other caches' pages, and later recalls then need different amounts of room."""

    def _select_victims(self, n: int,
                        exclude: KVCache) -> list[tuple[int, KVCache, list[int]]]:
        out: list[tuple[int, KVCache, list[int]]] = []
        for rid, cache in reversed(self._suspended.items()):
            if n == 0:
                break
            if cache is exclude:
                continue
            tiers = cache.page_tiers()
            entries = [i for i, t in enumerate(tiers) if t == GPU_TIER][:n]
            if entries:
                out.append((rid, cache, entries))
                n -= len(entries)
        return out


def _reference_impl(cfg: Config, policy: Policy) -> Impl:
    return Impl("reference", MruReference(cfg, policy), LlmRequest,
                gen_state=RequestState.GENERATION_IN_PROGRESS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy_name", POLICIES)
@settings(max_examples=scaled(10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_differential_against_reference(policy_name: str, device: str, seed: int) -> None:
    """The torch manager (batched) and the CPU reference agree after every step on results,
    raised error types and observations (page tables up to a renaming of page ids)."""
    policy = PRESETS[policy_name]
    ref = _reference_impl(SMALL, policy)
    _run(SMALL, policy, [ref, gpu_impl(SMALL, policy, True, device)], seed, 40, exact=False)


class KVMachine(RuleBasedStateMachine):
    """Random protocol runs on a batched and a per-request torch manager in lockstep; after
    every rule each request's KV reads back exactly the values written (evict/resume
    included) and the two states are identical."""

    device = "cpu"

    def __init__(self) -> None:
        super().__init__()
        policy = PRESETS["pr13805-reviewed"]
        cfg = SMALL.replace(num_gpu_pages=9, num_host_pages=6, max_util_for_resume=1)
        self.run = Lockstep(cfg, policy, [gpu_impl(cfg, policy, True, self.device),
                                          gpu_impl(cfg, policy, False, self.device)],
                            exact=True)

    @rule(rng=st.randoms(use_true_random=False))
    def arrive(self, rng: random.Random) -> None:
        self.run.arrive(rng)

    @rule(rng=st.randoms(use_true_random=False))
    def context_step(self, rng: random.Random) -> None:
        self.run.context_step(rng)

    @rule(rng=st.randoms(use_true_random=False))
    def generation_step(self, rng: random.Random) -> None:
        self.run.generation_step(rng)

    @rule(rng=st.randoms(use_true_random=False))
    def victim_step(self, rng: random.Random) -> None:
        self.run.victim_step(rng)

    @invariant()
    def agree_and_kv_intact(self) -> None:
        self.run.check()


class CudaKVMachine(KVMachine):
    """:class:`KVMachine` with both managers on CUDA (KV pools on the device, host tier
    pinned)."""

    device = "cuda"


TestKVMachine = KVMachine.TestCase
TestKVMachine.settings = settings(max_examples=scaled(25), stateful_step_count=30, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
TestCudaKVMachine = pytest.mark.gpu(NO_CUDA(CudaKVMachine.TestCase))
TestCudaKVMachine.settings = settings(max_examples=scaled(10), stateful_step_count=30,
                                      deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
