"""Torch-manager behaviours the gpu tests left unpinned, found by the mutation run of issue 10
(docs/strength.md): the content oracle's token writes (used by the conformance checks, never by
the other gpu tests) and the default device. Run on the CPU."""

from __future__ import annotations

import torch

from kvspec.config import Config
from kvspec.gpu_impl import GpuRequest, Manager
from kvspec.policy import PRESETS

CFG = Config(tokens_per_block=2, num_gpu_pages=6, num_host_pages=4, num_requests=3)


def test_written_tokens_read_back_through_the_page_table_across_tiers() -> None:
    m = Manager(CFG, PRESETS["pr13805-reviewed"], device="cpu", kv_width=3)
    r = GpuRequest(0, prompt_len=5, context_chunk_size=5)
    assert m.prepare_context(r) and m.resize_context(r, 5)
    m.write_tokens(0, 0, [7, 8])                              # the engine writes KV ...
    m.write_tokens(0, 2, [9, 10, 11])                         # ... chunk by chunk
    r.context_current_position = 5
    m.update_context_resources([r])                           # ... then history = 5
    assert m.read_tokens(0, 5) == [7, 8, 9, 10, 11]
    assert m.read_kv(0)[:, 1:].eq(0).all()                    # lane 0 only
    m.suspend_request(r)
    assert m.evict_to_host(r) and m.get_host_pages(0) == 3
    assert m.read_tokens(0, 5) == [7, 8, 9, 10, 11]           # read from the host tier
    assert m.resume_request(r) and m.get_host_pages(0) == 0
    assert m.read_tokens(0, 5) == [7, 8, 9, 10, 11]           # recalled to fresh GPU pages


def test_a_manager_without_a_device_uses_cuda_when_present_else_the_cpu() -> None:
    m = Manager(CFG, PRESETS["pr13805-reviewed"])
    assert m.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
