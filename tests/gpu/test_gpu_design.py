"""The torch manager under the design-space presets (docs/design-space.md): the two-phase
reservation and PR 13805's rejected alternative, through the single, batched and row APIs."""

from __future__ import annotations

import random

import pytest
import torch
from gpu_helpers import Lockstep, gpu_impl
from test_gpu_lockstep import SMALL, _reference_impl

from kvspec.config import Config
from kvspec.errors import ProtocolError
from kvspec.gpu_impl import GpuRequest, Manager
from kvspec.policy import DESIGN_PRESETS, PRESETS

CFG = Config(tokens_per_block=2, num_gpu_pages=6, num_host_pages=4, num_requests=3,
             max_rewind_len=0)


def make(policy_name: str, cfg: Config = CFG) -> Manager:
    return Manager(cfg, PRESETS[policy_name], device="cpu", kv_width=2)


def request(rid: int = 0, chunk: int = 4) -> GpuRequest:
    return GpuRequest(rid, prompt_len=8, context_chunk_size=chunk, draft_len=0)


def test_a_reservation_is_the_row_tail_outside_the_page_table_until_committed() -> None:
    m = make("reserve-commit")
    r = request()
    assert m.prepare_context(r) and m.resize_context(r, 4)
    assert m.get_capacity(0) == 0 and m.get_page_table(0) == [] and m.get_page_tiers(0) == ()
    assert m.get_reserved_pages(0) == [1, 2] and m.num_free_gpu_pages == 4
    assert r.py_ctx_pre_resize_cap is None
    m.check_integrity()
    assert m.resize_context(r, 4) and m.get_reserved_pages(0) == [1, 2]   # idempotent
    assert m.resize_context(r, 6) and m.get_reserved_pages(0) == [1, 2, 3]  # grows
    assert m.get_capacity(0) == 0 and m.num_free_gpu_pages == 3
    m.commit_context(r)
    assert m.get_capacity(0) == 6 and m.get_page_table(0) == [1, 2, 3]
    assert m.get_reserved_pages(0) == []
    m.write_tokens(0, 0, [7, 8, 9, 10])           # the forward writes into committed pages
    m.check_integrity()


def test_a_release_gives_the_tail_back_and_resizes_nothing() -> None:
    m = make("reserve-commit")
    r = request()
    m.prepare_context(r)
    m.resize_context(r, 4)
    m.commit_context(r)
    r.context_current_position = 4
    m.update_context_resources([r])              # history 4, capacity 4
    r2 = request()
    r2.context_current_position = 4
    assert m.resize_context(r2, 4)               # the next chunk: 2 more pages reserved
    before = (m.get_capacity(0), m.get_history(0), m.get_page_table(0))
    assert m.revert_allocate_context(r2) is True  # deferred: released, no SWA shrink
    assert (m.get_capacity(0), m.get_history(0), m.get_page_table(0)) == before
    assert m.num_free_gpu_pages == 4 and m.get_status(0) == 1   # capacity > 0: suspended
    m.check_integrity()


def test_the_batched_and_row_apis_route_through_the_design() -> None:
    m = make("reserve-commit")
    reqs = [request(i, 2) for i in range(2)]
    for q in reqs:
        m.prepare_context(q)
    assert m.resize_context_batch(reqs, [2, 2]) == [True, True]
    assert [m.get_reserved_pages(i) for i in range(2)] == [[1], [2]]
    assert m.revert_allocate_context_batch(reqs) == [True, True]
    m.load_requests(reqs)
    ok = m.resize_context_rows(torch.tensor([0, 1]), torch.tensor([2, 2], dtype=torch.int32))
    assert ok.tolist() == [True, True] and m.get_capacity(0) == 0
    assert len(m.get_reserved_pages(1)) == 1
    m.check_integrity()


def test_commit_context_is_refused_without_reservations() -> None:
    m = make("pr13805-reviewed-swa")
    r = request()
    m.prepare_context(r)
    with pytest.raises(ProtocolError, match="reserve_context off"):
        m.commit_context(r)


def test_the_gate_nominates_and_a_failed_admission_changes_nothing() -> None:
    m = make("gate-before-resume", Config(tokens_per_block=2, num_gpu_pages=1,
                                          num_host_pages=0, num_requests=2))
    r = request()
    assert m.prepare_context(r) is True and m.get_status(0) == 1    # not resumed
    before = m.snapshot_state()
    assert m.resize_context(r, 4) is False                          # needs 2 pages of 1
    assert m.snapshot_state() == before
    assert m.resize_context(r, 2) is True
    assert m.get_status(0) == 0 and m.get_capacity(0) == 2
    m.check_integrity()


@pytest.mark.parametrize("policy_name", DESIGN_PRESETS)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_runs_batch_equals_sequential_and_the_reference(policy_name: str,
                                                               seed: int) -> None:
    """The randomized suites of test_gpu_lockstep.py on the design presets, at a fixed budget:
    batched == per-request (exact state) and torch == the CPU reference (up to page ids),
    KV read back after every step."""
    policy = PRESETS[policy_name]
    for impls, exact in (([gpu_impl(SMALL, policy, True), gpu_impl(SMALL, policy, False)], True),
                         ([_reference_impl(SMALL, policy), gpu_impl(SMALL, policy, True)],
                          False)):
        rng = random.Random(seed)
        run = Lockstep(SMALL, policy, impls, exact=exact)
        for _ in range(40):
            run.random_step(rng)
