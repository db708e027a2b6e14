"""Deliberately broken managers (wrappers of the reference) that conformance must catch."""

from __future__ import annotations

from typing import Any

from kvspec.config import Config
from kvspec.conformance.impls import CheckedReference
from kvspec.policy import Policy


class SilentDoubleFree(CheckedReference):
    """Accepts free_resources on a request that has no cache (a double free) silently."""

    def free_resources(self, req: Any) -> None:
        if not self.has_cache(req.request_id):
            return
        super().free_resources(req)


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


def shrink_below_snapshot(config: Config, policy: Policy) -> ShrinkBelowSnapshot:
    return ShrinkBelowSnapshot(config, policy)


def keeps_stale_snapshot(config: Config, policy: Policy) -> KeepsStaleSnapshot:
    return KeepsStaleSnapshot(config, policy)
