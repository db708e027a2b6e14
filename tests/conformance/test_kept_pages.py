"""The kept-page oracle: a manager that releases the wrong pages on a shrink keeps counts,
ids and conservation consistent; only comparing each page table with the previous step's
catches it."""

from __future__ import annotations

from typing import Any

from kvspec.config import Config
from kvspec.conformance import impls
from kvspec.conformance.impls import CheckedReference
from kvspec.conformance.lockstep import Lockstep
from kvspec.policy import Policy, get_policy


class ReleasesTheHead(CheckedReference):
    """On a shrink, frees the first blocks' pages and keeps the tail's (the same number)."""

    def _set_capacity(self, cache: Any, capacity: int) -> None:
        keep = self._blocks(capacity)
        if keep < len(cache.pages):
            released = cache.pages[:len(cache.pages) - keep]
            del cache.pages[:len(cache.pages) - keep]
            self._gpu.free_n(released)
            cache.capacity = capacity
            return
        super()._set_capacity(cache, capacity)


def releases_the_head(config: Config, policy: Policy) -> ReleasesTheHead:
    return ReleasesTheHead(config, policy)


CONFIG = Config(tokens_per_block=1, num_gpu_pages=10, num_requests=1, max_prompt_len=2,
                max_draft_len=2)
# a generation growth of 1 + 2 drafts, then the can_queue skip reverts it: a shrink by 3
STEPS: list[tuple[str, int, dict[str, Any]]] = [
    ("arrive", 0, dict(prompt_len=2, chunk_size=2, draft_len=2)),
    ("prepare_context", 0, {}), ("resize_context", 0, {}),
    ("decide", 0, dict(wait=False, can_queue=True)), ("forward", 0, dict(accepted=0)),
    ("end_iteration", 0, {}),
    ("try_allocate_generation", 0, {}), ("decide", 0, dict(wait=False, can_queue=False)),
    ("revert_allocate_generation", 0, {}),
]


def _run(factory: Any) -> Any:
    lock = Lockstep(factory, CONFIG, get_policy("pr13805-reviewed"))
    for name, r, args in STEPS:
        div = lock.step(name, r, args)
        if div is not None:
            return div
    return lock.final_check()


def test_the_reference_keeps_its_pages() -> None:
    assert _run(impls.reference) is None


def test_releasing_the_wrong_pages_is_caught_at_the_shrink() -> None:
    div = _run(releases_the_head)
    assert div is not None
    text = div.render()
    assert div.action.startswith("revert_allocate_generation")
    assert "page-table entry 0 (tokens of block 0) changed from GPU page" in text
    # nothing else differs: counts, ids and conservation are consistent
    assert {d.name for d in div.diffs} == {"structure"}
