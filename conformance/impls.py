"""Built-in factories: the CPU reference and the torch manager, each with ``free_page_ids``.

Use as ``kvspec check --impl kvspec.conformance.impls:reference`` (or ``:gpu``). The
subclasses only add the optional ``free_page_ids`` observation (read from private state, which
conformance may do for the project's own implementations).

Importing this module does not import torch: the torch manager (``kvspec.gpu_impl``) is
imported the first time ``gpu``/``gpu_cuda`` is called or ``CheckedGpuManager`` is read, so
``--impl kvspec.conformance.impls:reference`` starts in a fraction of a second.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from kvspec.config import Config
from kvspec.policy import Policy
from kvspec.reference import ReferenceKVCacheManager

if TYPE_CHECKING:  # the static view; at run time the class is built on first use
    from kvspec.gpu_impl import Manager

    class CheckedGpuManager(Manager):
        """The torch manager plus ``free_page_ids`` (its two free stacks)."""

        def free_page_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]: ...


class CheckedReference(ReferenceKVCacheManager):
    """The reference manager plus ``free_page_ids`` (its two free lists)."""

    def free_page_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(free GPU page ids, free host page ids). O(free pages)."""
        return tuple(self._gpu.get_free_pages()), tuple(self._host.get_free_pages())


@functools.cache
def _checked_gpu_class() -> type[CheckedGpuManager]:
    """``CheckedGpuManager``, defined on first use (imports torch: seconds, once)."""
    from kvspec.gpu_impl import Manager

    class CheckedGpuManager(Manager):
        """The torch manager plus ``free_page_ids`` (its two free stacks)."""

        def free_page_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
            """(free GPU page ids, free host page ids): one device read per tier."""
            g = self.gpu.stack[: self.gpu.free].tolist()
            h = self.host.stack[: self.host.free].tolist()
            return tuple(int(x) for x in g), tuple(int(x) for x in h)

    CheckedGpuManager.__module__ = __name__
    CheckedGpuManager.__qualname__ = "CheckedGpuManager"
    return CheckedGpuManager


def __getattr__(name: str) -> Any:
    """``impls.CheckedGpuManager`` imports the torch manager on first access."""
    if name == "CheckedGpuManager":
        return _checked_gpu_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def reference(config: Config, policy: Policy) -> CheckedReference:
    """Factory of the CPU reference manager."""
    return CheckedReference(config, policy)


def gpu(config: Config, policy: Policy, device: str = "cpu") -> CheckedGpuManager:
    """Factory of the torch manager, on CPU torch by default (``gpu_cuda`` for CUDA).

    The first call imports torch (seconds); later calls cost one manager construction.
    """
    return _checked_gpu_class()(config, policy, device=device)


def gpu_cuda(config: Config, policy: Policy) -> CheckedGpuManager:
    """Factory of the torch manager on the CUDA device (needs a CUDA build of torch)."""
    return _checked_gpu_class()(config, policy, device="cuda")
