"""The policy switches of TensorRT-LLM's 2026-05 revision in the reference manager, each on
and off: revert_clears_before_resize, pop_draft_record_on_update, free_branch_rewinds,
commit_on_forward (docs/protocol.md, docs/reference.md)."""

from __future__ import annotations

import pytest
from helpers_ref import admit, ctx_request, make_manager

from kvspec.errors import InvariantViolation
from kvspec.policy import PRESETS, get_policy

BASE = get_policy("pr13805")            # SWA scratch reuse on, every new switch at its default


def test_presets_keep_todays_behaviour_except_trtllm_2026_05() -> None:
    new = {"revert_clears_before_resize": True, "pop_draft_record_on_update": False,
           "free_branch_rewinds": False, "commit_on_forward": False}
    for name, pol in PRESETS.items():
        got = {k: getattr(pol, k) for k in new}
        if name == "trtllm-2026-05":
            assert got == new and pol.draft_record_before_resize
        else:
            assert got == {k: not v for k, v in new.items()}


@pytest.mark.parametrize("clears", [False, True])
def test_swa_refusal_and_the_snapshot(clears: bool) -> None:
    mgr = make_manager(BASE.replace(revert_clears_before_resize=clears), max_rewind_len=2)
    req = ctx_request(prompt_len=8, chunk=4)
    assert mgr.prepare_context(req) and mgr.resize_context(req, 4)
    before = mgr.snapshot_state()
    with pytest.raises(InvariantViolation, match="SWA-REWIND"):
        mgr.revert_allocate_context(req)
    assert mgr.snapshot_state() == before
    assert req.py_ctx_pre_resize_cap == (None if clears else 0)


@pytest.mark.parametrize("clears", [False, True])
def test_generation_refusal_and_the_record(clears: bool) -> None:
    pol = get_policy("draft-before-resize").replace(revert_clears_before_resize=clears)
    mgr = make_manager(pol, num_gpu_pages=2)
    req = ctx_request(prompt_len=4, chunk=4, draft=0)
    admit(mgr, req)                                            # 2 pages, cap 4
    assert not mgr.try_allocate_generation(req)                # the record 0 is left behind
    before = mgr.snapshot_state()
    with pytest.raises(InvariantViolation, match="INV-LEN"):
        mgr.revert_allocate_generation(req)                    # 4 - 1 - 0 < history 4
    assert mgr.get_draft_record(0) == (None if clears else 0)
    assert mgr.get_capacity(0) == 4
    if not clears:
        assert mgr.snapshot_state() == before


@pytest.mark.parametrize("pop", [True, False])
def test_update_resources_and_the_draft_record(pop: bool) -> None:
    mgr = make_manager(BASE.replace(pop_draft_record_on_update=pop), num_gpu_pages=8)
    req = ctx_request(prompt_len=2, chunk=2, draft=2)
    admit(mgr, req)                                            # cap 4, history 2
    assert mgr.try_allocate_generation(req)                    # cap 7, record 2
    mgr.update_resources([req], [1])                           # trim 2 - 1 = 1
    assert (mgr.get_capacity(0), mgr.get_history(0)) == (6, 4)
    assert mgr.get_draft_record(0) == (None if pop else 2)
    assert mgr.try_allocate_generation(req)                    # overwrites it: cap 9
    assert mgr.get_draft_record(0) == 2
    mgr.revert_allocate_generation(req)                        # a revert pops it
    assert (mgr.get_capacity(0), mgr.get_draft_record(0)) == (6, None)
    assert mgr.try_allocate_generation(req)                    # cap 9, record 2
    mgr.update_resources([req], [2])                           # nothing trimmed
    assert (mgr.get_capacity(0), mgr.get_history(0)) == (9, 7)
    assert mgr.get_draft_record(0) == (None if pop else 2)
    mgr.check_integrity()


def test_kept_record_is_forgotten_by_free() -> None:
    mgr = make_manager(BASE.replace(pop_draft_record_on_update=False), num_gpu_pages=8)
    req = ctx_request(prompt_len=2, chunk=2, draft=1)
    admit(mgr, req)
    assert mgr.try_allocate_generation(req)
    mgr.update_resources([req], [1])
    assert mgr.get_draft_record(0) == 1
    mgr.free_resources(req)
    assert mgr.get_draft_record(0) is None


@pytest.mark.parametrize("rewinds", [True, False])
def test_free_branch_and_the_cursor(rewinds: bool) -> None:
    mgr = make_manager(get_policy("pr13805-reviewed").replace(free_branch_rewinds=rewinds))
    req = ctx_request(prompt_len=8, chunk=4)
    assert mgr.prepare_context(req) and mgr.resize_context(req, 4)
    req.context_current_position = 4
    mgr.update_context_resources([req])
    req.py_ctx_pre_resize_cap = 2                              # history 4 > 2: FREE branch
    assert mgr.revert_allocate_context(req) is (False if rewinds else None)
    assert not mgr.has_cache(0) and req.py_ctx_pre_resize_cap is None
    assert req.context_current_position == (0 if rewinds else 4)
    assert mgr.num_free_gpu_pages == 4


def test_without_free_branch_rewinds_every_branch_returns_none() -> None:
    mgr = make_manager(get_policy("pr13805-reviewed").replace(free_branch_rewinds=False))
    req = ctx_request(prompt_len=8, chunk=4)
    assert mgr.prepare_context(req) and mgr.resize_context(req, 4)
    assert mgr.revert_allocate_context(req) is None            # SHRINK to 0
    assert mgr.get_capacity(0) == 0
    assert mgr.revert_allocate_context(req) is None            # no snapshot


@pytest.mark.parametrize("commit", [True, False])
def test_committed_follows_history_only_when_committing(commit: bool) -> None:
    mgr = make_manager(BASE.replace(commit_on_forward=commit), num_gpu_pages=8)
    req = ctx_request(prompt_len=4, chunk=2, draft=1)
    admit(mgr, req)                                            # two chunks, history 4
    assert mgr.get_committed(0) == (4 if commit else 0)
    assert mgr.try_allocate_generation(req)
    mgr.update_resources([req], [1])
    assert mgr.get_history(0) == 6
    assert mgr.get_committed(0) == (6 if commit else 0)
    mgr.check_integrity()
