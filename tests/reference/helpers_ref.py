"""Small builders shared by the reference tests (not a conftest: another module owns that)."""

from __future__ import annotations

from kvspec.config import Config
from kvspec.policy import Policy, get_policy
from kvspec.reference import LlmRequest, ReferenceKVCacheManager, RequestState


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
