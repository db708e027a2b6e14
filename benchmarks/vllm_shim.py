"""Import vLLM v1's ``BlockPool`` and ``KVCacheManager`` from an unpacked wheel, for side-by-side
benchmarks, without installing vLLM or its dependency tree. No vLLM code lives in this repo.

Where the modules come from (``--vllm PATHS`` or ``KVSPEC_VLLM_PATH``; ``os.pathsep``-separated
folders, put first on ``sys.path``): the first folder holds the unpacked ``vllm/`` package;
the others hold the few small packages its import chain really executes (pydantic and its
core, msgspec, psutil, regex, pyzmq, cbor2), installed with ``pip install --no-deps
--target``. Every other module that vLLM's files import and that is not installed
(transformers, huggingface_hub, openai, fastapi, aiohttp, PIL, xgrammar, triton, ...) is
replaced by a permissive stub module, only when the import comes from vLLM's own files.
docs/performance.md gives the exact commands.

The stubs must not be on the timed paths: ``stub_touches()`` counts every use of a stub
object, and the benchmarks check the count does not move while they time vLLM.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
import types
from dataclasses import dataclass
from typing import Any

ENV = "KVSPEC_VLLM_PATH"
_touches = [0]
_stubbed: list[str] = []


def stub_touches() -> int:
    """How many times a stub object was called, indexed or had an attribute read."""
    return _touches[0]


class _AnyMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        _touches[0] += 1
        return _Any

    def __getitem__(cls, item: Any) -> Any:
        _touches[0] += 1
        return _Any

    def __or__(cls, other: Any) -> Any:
        return _Any

    def __ror__(cls, other: Any) -> Any:
        return _Any


class _Any(metaclass=_AnyMeta):
    """Stands for any class, function or value of a stubbed module."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _touches[0] += 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _touches[0] += 1
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]              # used as a decorator: keep the decorated object
        return _Any()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        _touches[0] += 1
        return _Any()

    def __getitem__(self, item: Any) -> Any:
        _touches[0] += 1
        return _Any()

    def __iter__(self) -> Any:
        return iter(())

    def __bool__(self) -> bool:
        return False

    def __mro_entries__(self, bases: Any) -> tuple[type, ...]:
        return (_Any,)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.any_schema()


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Any


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: stubs a missing module imported from vLLM's files."""

    def __init__(self, vllm_root: str) -> None:
        self.root = os.path.abspath(vllm_root) + os.sep

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name.split(".")[0] == "vllm":
            return None
        if "." in name:
            parent = sys.modules.get(name.rsplit(".", 1)[0])
            if not isinstance(parent, _StubModule):
                return None
        else:
            f = sys._getframe(1)
            while f is not None and (f.f_code.co_filename.startswith("<frozen")
                                     or f"{os.sep}importlib{os.sep}" in f.f_code.co_filename):
                f = f.f_back
            if f is None or not f.f_code.co_filename.startswith(self.root):
                return None
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec") and \
                        finder.find_spec(name, None, target) is not None:
                    return None
        _stubbed.append(name)
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        m = _StubModule(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module: types.ModuleType) -> None:
        return None


@dataclass
class Vllm:
    """The vLLM classes the benchmarks drive, and how they were loaded."""

    version: str
    root: str
    import_seconds: float
    stubbed: list[str]
    BlockPool: Any
    KVCacheManager: Any
    KVCacheConfig: Any
    KVCacheGroupSpec: Any
    FullAttentionSpec: Any
    Request: Any
    SamplingParams: Any


def load(paths: str | None = None) -> tuple[Vllm | None, str]:
    """Import vLLM's modules from ``paths`` (default: ``$KVSPEC_VLLM_PATH``).

    Returns:
        ``(Vllm, "")`` on success, ``(None, reason)`` when no path is given or the import
        fails (the reason names the failing import).
    """
    paths = paths or os.environ.get(ENV, "")
    dirs = [d for d in paths.split(os.pathsep) if d]
    if not dirs:
        return None, (f"no vLLM given (--vllm PATHS or {ENV}); see docs/performance.md "
                      "for how to unpack one")
    root = dirs[0]
    if not os.path.isfile(os.path.join(root, "vllm", "v1", "core", "block_pool.py")):
        return None, f"{root} has no vllm/v1/core/block_pool.py (unpack the vLLM wheel there)"
    for d in reversed(dirs):
        sys.path.insert(0, d)
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")     # no accelerator probing
    sys.meta_path.append(_StubFinder(root))
    t0 = time.perf_counter()
    try:
        import torch
        from vllm.sampling_params import SamplingParams
        from vllm.v1.core.block_pool import BlockPool
        from vllm.v1.core.kv_cache_manager import KVCacheManager
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.request import Request
    except Exception as exc:  # noqa: BLE001 - any failure becomes the skip message
        return None, f"importing vLLM from {root} failed: {type(exc).__name__}: {exc}"
    dt = time.perf_counter() - t0
    ver = getattr(sys.modules.get("vllm"), "__version__", "") or next(
        (n[len("vllm-"):-len(".dist-info")] for n in sorted(os.listdir(root))
         if n.startswith("vllm-") and n.endswith(".dist-info")), "unknown")
    del torch
    return Vllm(ver, root, dt, sorted({n.split(".")[0] for n in _stubbed}), BlockPool,
                KVCacheManager, KVCacheConfig, KVCacheGroupSpec, FullAttentionSpec, Request,
                SamplingParams), ""
