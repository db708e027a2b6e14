"""Built-in factories: the CPU reference and the torch manager, each with ``free_page_ids``.

Use as ``kvspec check --impl kvspec.conformance.impls:reference`` (or ``:gpu``). The
subclasses only add the optional ``free_page_ids`` observation (read from private state, which
conformance may do for the project's own implementations).
"""

from __future__ import annotations

from kvspec.config import Config
from kvspec.gpu_impl import Manager
from kvspec.policy import Policy
from kvspec.reference import ReferenceKVCacheManager


class CheckedReference(ReferenceKVCacheManager):
    """The reference manager plus ``free_page_ids`` (its two free lists)."""

    def free_page_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(free GPU page ids, free host page ids). O(free pages)."""
        return tuple(self._gpu.get_free_pages()), tuple(self._host.get_free_pages())


class CheckedGpuManager(Manager):
    """The torch manager plus ``free_page_ids`` (its two free stacks)."""

    def free_page_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(free GPU page ids, free host page ids): one device read per tier."""
        g = self.gpu.stack[: self.gpu.free].tolist()
        h = self.host.stack[: self.host.free].tolist()
        return tuple(int(x) for x in g), tuple(int(x) for x in h)


def reference(config: Config, policy: Policy) -> CheckedReference:
    """Factory of the CPU reference manager."""
    return CheckedReference(config, policy)


def gpu(config: Config, policy: Policy, device: str = "cpu") -> CheckedGpuManager:
    """Factory of the torch manager, on CPU torch by default (``gpu_cuda`` for CUDA)."""
    return CheckedGpuManager(config, policy, device=device)


def gpu_cuda(config: Config, policy: Policy) -> CheckedGpuManager:
    """Factory of the torch manager on the CUDA device (needs a CUDA build of torch)."""
    return CheckedGpuManager(config, policy, device="cuda")
