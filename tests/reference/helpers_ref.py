"""Small builders shared by the reference tests (not a conftest: another module owns that)."""

from __future__ import annotations

import random

from kvspec.config import Config
from kvspec.policy import Policy, get_policy
from kvspec.reference import LlmRequest, ReferenceKVCacheManager, RequestState
from kvspec.reference.executor import ReferenceExecutor


def make_manager(policy: str | Policy = "pr13805-reviewed",
                 **config: object) -> ReferenceKVCacheManager:
    """A manager with small defaults (B=2, G=4, H=4) overridden by ``config``."""
    pol = get_policy(policy) if isinstance(policy, str) else policy
    return ReferenceKVCacheManager(Config().replace(**config), pol)


def ctx_request(rid: int = 0, prompt_len: int = 4, chunk: int = 4, draft: int = 0,
                pos: int = 0) -> LlmRequest:
    """A context-phase request."""
    return LlmRequest(request_id=rid, prompt_len=prompt_len, context_chunk_size=chunk,
                      draft_len=draft, context_current_position=pos)


def admit(mgr: ReferenceKVCacheManager, req: LlmRequest) -> None:
    """Prepare, resize and forward every chunk of ``req``; leaves it generating."""
    while req.state == RequestState.CONTEXT_INIT:
        assert mgr.prepare_context(req)
        n = req.num_context_tokens()
        assert mgr.resize_context(req, req.context_resize_tokens())
        req.context_current_position += n
        mgr.update_context_resources([req])
        if req.context_current_position == req.prompt_len:
            req.state = RequestState.GENERATION_IN_PROGRESS


def busy_executor(**config_changes: object) -> tuple[ReferenceExecutor, list[LlmRequest]]:
    """An executor under pr13805-reviewed with 20 random requests (seeded) queued on a
    12-page pool with a 40-page host tier (enough pressure for suspends and evictions), and
    the requests."""
    cfg = Config(tokens_per_block=4, num_gpu_pages=12, num_host_pages=40, num_requests=16,
                 max_num_tokens=64, max_batch_size=8).replace(**config_changes)
    ex = ReferenceExecutor(cfg, get_policy("pr13805-reviewed"), seed=1)
    rng = random.Random(5)
    reqs = [LlmRequest(i, prompt_len=rng.randint(1, 24), context_chunk_size=8,
                       draft_len=rng.randint(0, 2), max_new_tokens=rng.randint(1, 12))
            for i in range(20)]
    for q in reqs:
        ex.add_request(q)
    return ex, reqs
