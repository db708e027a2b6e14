"""CPU reference implementation of the kvspec protocol (docs/protocol.md, docs/reference.md):
a page pool with real page ids, TensorRT-LLM's KV cache manager V2 capacity protocol over it,
and a PyExecutor-style iteration driver. Never imports the model (``kvspec.spec``)."""

from .cache import GPU_TIER, HOST_TIER, CacheStatus, KVCache, PageState
from .manager import ReferenceKVCacheManager
from .pool import NULL_PAGE, PagePool
from .request import LlmRequest, RequestState

__all__ = [
    "GPU_TIER",
    "HOST_TIER",
    "NULL_PAGE",
    "CacheStatus",
    "KVCache",
    "LlmRequest",
    "PagePool",
    "PageState",
    "ReferenceKVCacheManager",
    "RequestState",
]
