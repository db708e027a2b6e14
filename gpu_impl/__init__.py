"""Torch implementation of the kvspec KV-capacity protocol: state in device tensors, batched
per-iteration operations, real KV data moved between a GPU pool and a host tier.

Never imports ``kvspec.spec`` or ``kvspec.reference``; conformance compares them from outside.
"""

from .kv_store import token_value
from .manager import Manager
from .requests import ACTIVE, SUSPENDED, GpuRequest, RequestLike

GpuKVCacheManager = Manager

__all__ = ["ACTIVE", "SUSPENDED", "GpuKVCacheManager", "GpuRequest", "Manager", "RequestLike",
           "token_value"]
