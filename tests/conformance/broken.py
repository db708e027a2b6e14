"""Deliberately broken managers (wrappers of the reference) that conformance must catch."""

from __future__ import annotations

from typing import Any

from kvspec.config import Config
from kvspec.conformance.impls import CheckedReference
from kvspec.errors import ProtocolError
from kvspec.policy import Policy


class SilentDoubleFree(CheckedReference):
    """Accepts free_resources on a request that has no cache (a double free, an unknown id)
    silently: misuse warnings, a divergence only with ``strict``."""

    def free_resources(self, req: Any) -> None:
        if not self.has_cache(req.request_id):
            return
        super().free_resources(req)


class CorruptingDoubleFree(CheckedReference):
    """A second free_resources of a request returns its GPU pages to the pool again (the free
    counts go wrong): a divergence always. ``then_raise``: raise ProtocolError afterwards,
    which does not make it right."""

    then_raise = False

    def __init__(self, config: Config, policy: Policy) -> None:
        super().__init__(config, policy)
        self._freed: dict[int, list[int]] = {}

    def free_resources(self, req: Any) -> None:
        rid = req.request_id
        if self.has_cache(rid):
            before = set(self._gpu.get_free_pages())
            super().free_resources(req)
            self._freed[rid] = [p for p in self._gpu.get_free_pages() if p not in before]
            return
        if rid not in self._freed:
            super().free_resources(req)  # ProtocolError: a request never seen
        # past the pool's guard (free_n refuses an overflowing free): the same pages again
        self._gpu._free.extend(self._freed.pop(rid))
        if self.then_raise:
            raise ProtocolError(f"free_resources: request {rid} has no KV cache")


class ShrinkBelowSnapshot(CheckedReference):
    """A SHRINK revert lands one token below the snapshot ``py_ctx_pre_resize_cap``."""

    def revert_allocate_context(self, req: Any) -> bool:
        pre = req.py_ctx_pre_resize_cap
        rid = req.request_id
        shrink = (pre is not None and pre > 0 and self.has_cache(rid)
                  and self.get_status(rid) == 0 and pre < self.get_capacity(rid)
                  and self.get_history(rid) <= pre)
        ok = super().revert_allocate_context(req)
        if shrink and ok and pre is not None:
            cache = self._caches[rid]
            self._num_suspended_gpu_pages -= len(cache.pages)  # suspended by the shrink
            self._set_capacity(cache, pre - 1)
            self._num_suspended_gpu_pages += len(cache.pages)
        return ok


class KeepsStaleSnapshot(CheckedReference):
    """Ignores ``clear_snapshot_on_failure``: a failed resize leaves the old snapshot."""

    def resize_context(self, req: Any, num_tokens: int) -> bool:
        pre = req.py_ctx_pre_resize_cap
        ok = super().resize_context(req, num_tokens)
        if not ok:
            req.py_ctx_pre_resize_cap = pre
        return ok


def silent_double_free(config: Config, policy: Policy) -> SilentDoubleFree:
    return SilentDoubleFree(config, policy)


def corrupting_double_free(config: Config, policy: Policy) -> CorruptingDoubleFree:
    return CorruptingDoubleFree(config, policy)


def shrink_below_snapshot(config: Config, policy: Policy) -> ShrinkBelowSnapshot:
    return ShrinkBelowSnapshot(config, policy)


def keeps_stale_snapshot(config: Config, policy: Policy) -> KeepsStaleSnapshot:
    return KeepsStaleSnapshot(config, policy)
