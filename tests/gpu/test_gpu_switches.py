"""The 2026-05 policy switches in the torch manager, each on and off, through the object API
and the row API: revert_clears_before_resize, pop_draft_record_on_update,
free_branch_rewinds, commit_on_forward."""

from __future__ import annotations

import pytest
import torch

from kvspec.config import Config
from kvspec.errors import InvariantViolation
from kvspec.gpu_impl import GpuRequest, Manager
from kvspec.policy import PRESETS, Policy

CFG = Config(tokens_per_block=2, num_gpu_pages=8, num_host_pages=4, num_requests=3,
             max_rewind_len=2, max_util_for_resume=1)
BASE = PRESETS["pr13805"]                 # SWA scratch reuse on, new switches at defaults


def make(policy: Policy, cfg: Config = CFG) -> Manager:
    return Manager(cfg, policy, device="cpu", kv_width=1)


def generating(m: Manager, rid: int = 0, prompt: int = 2, draft: int = 2) -> GpuRequest:
    q = GpuRequest(rid, prompt_len=prompt, context_chunk_size=prompt, draft_len=draft)
    assert m.prepare_context(q) and m.resize_context(q, prompt + draft)
    q.context_current_position = prompt
    m.update_context_resources([q])
    q.state = 2
    return q


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("clears", [False, True])
def test_swa_refusal_and_the_snapshot(clears: bool, rows: bool) -> None:
    m = make(BASE.replace(revert_clears_before_resize=clears))
    q = GpuRequest(0, prompt_len=8, context_chunk_size=4)
    assert m.prepare_context(q) and m.resize_context(q, 4)
    m.load_requests([q])
    before = m.snapshot_state()
    with pytest.raises(InvariantViolation, match="SWA-REWIND"):
        if rows:
            m.revert_allocate_context_rows(torch.tensor([0]))
        else:
            m.revert_allocate_context(q)
    assert m.snapshot_state() == before
    if rows:
        m.store_requests([q])
    assert q.py_ctx_pre_resize_cap == (None if clears else 0)


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("clears", [False, True])
def test_generation_refusal_and_the_record(clears: bool, rows: bool) -> None:
    pol = PRESETS["draft-before-resize"].replace(revert_clears_before_resize=clears)
    m = make(pol, CFG.replace(num_gpu_pages=2))
    q = generating(m, prompt=4, draft=0)                      # 2 pages, cap 4: pool full
    assert not m.try_allocate_generation(q)                   # the record 0 stays
    with pytest.raises(InvariantViolation, match="INV-LEN"):
        if rows:
            m.revert_allocate_generation_rows(torch.tensor([0]))
        else:
            m.revert_allocate_generation_batch([q])
    assert m.get_draft_record(0) == (None if clears else 0) and m.get_capacity(0) == 4


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("pop", [True, False])
def test_update_resources_and_the_draft_record(pop: bool, rows: bool) -> None:
    m = make(BASE.replace(pop_draft_record_on_update=pop))
    q = generating(m)                                         # cap 4, history 2
    m.load_requests([q])
    if rows:
        assert m.try_allocate_generation_rows(torch.tensor([0]), torch.tensor([2])).all()
        m.update_resources_rows(torch.tensor([0]), torch.tensor([1]))
    else:
        assert m.try_allocate_generation(q)
        m.update_resources([q], [1])
    assert (m.get_capacity(0), m.get_history(0)) == (6, 4)    # trimmed 2 - 1
    assert m.get_draft_record(0) == (None if pop else 2)
    assert m.try_allocate_generation(q) and m.get_draft_record(0) == 2
    m.check_integrity()


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("rewinds", [True, False])
def test_free_branch_and_the_cursor(rewinds: bool, rows: bool) -> None:
    m = make(PRESETS["pr13805-reviewed"].replace(free_branch_rewinds=rewinds))
    q = GpuRequest(0, prompt_len=8, context_chunk_size=4)
    s = GpuRequest(1, prompt_len=8, context_chunk_size=4)
    for r in (q, s):
        assert m.prepare_context(r) and m.resize_context(r, 4)
    q.context_current_position = 4
    m.update_context_resources([q])
    q.py_ctx_pre_resize_cap = 2                               # history 4 > 2: FREE branch
    m.load_requests([q, s])
    if rows:
        out = m.revert_allocate_context_rows(torch.tensor([0, 1]))
        res = None if out is None else out.tolist()
        m.store_requests([q, s])
    else:
        res = m.revert_allocate_context_batch([q, s])
    assert res == ([False, True] if rewinds else None if rows else [None, None])
    assert not m.has_cache(0) and m.get_capacity(1) == 0     # FREE, SHRINK to 0
    assert q.context_current_position == (0 if rewinds else 4)
    assert (q.py_ctx_pre_resize_cap, s.py_ctx_pre_resize_cap) == (None, None)
    m.check_integrity()


@pytest.mark.parametrize("commit", [True, False])
def test_committed_follows_history_only_when_committing(commit: bool) -> None:
    m = make(BASE.replace(commit_on_forward=commit))
    q = generating(m)
    assert m.get_committed(0) == (2 if commit else 0)
    m.load_requests([q])
    assert m.try_allocate_generation_rows(torch.tensor([0]), torch.tensor([2])).all()
    m.update_resources_rows(torch.tensor([0]), torch.tensor([2]))
    assert (m.get_history(0), m.get_committed(0)) == (5, 5 if commit else 0)
    m.check_integrity()
    m.free_resources(q)
    m.check_integrity()
