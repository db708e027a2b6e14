"""Static configuration shared by the model and every implementation (see docs/protocol.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

from kvspec.errors import InvalidArgument

SMALL_SCOPE: dict[str, int] = dict(num_gpu_pages=4, num_requests=2, tokens_per_block=2,
                                  max_prompt_len=3, max_draft_len=1)
"""The largest sizes exhaustive exploration accepts (G, N, B, prompt, draft): read by
``conformance.exhaustive.explore`` and by ``kvspec explore``'s option checks."""


@dataclass(frozen=True)
class Config:
    """Sizes and knobs of one KV-cache manager plus its executor.

    Validated on construction: a bad value raises :class:`InvalidArgument` naming the field.
    """

    tokens_per_block: int = 2
    num_gpu_pages: int = 4
    num_host_pages: int = 4
    max_util_for_resume: Fraction = Fraction(3, 4)
    max_rewind_len: int = 2
    num_requests: int = 2
    max_num_tokens: int = 64
    max_batch_size: int = 8
    batch_wait_timeout_iters: int = 0
    batch_wait_max_tokens_ratio: Fraction = Fraction(0)
    attention_dp: bool = True
    # Bounds of arrival parameters, used by generators (hypothesis, walker, BFS).
    max_prompt_len: int = 5
    max_draft_len: int = 1

    def describe(self) -> str:
        """Every field on one line, as every report names the config:
        ``tokens_per_block=2 num_gpu_pages=4 num_host_pages=4 max_util_for_resume=3/4 ...``.
        O(fields)."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_util_for_resume", _fraction(
            "max_util_for_resume", self.max_util_for_resume))
        object.__setattr__(self, "batch_wait_max_tokens_ratio", _fraction(
            "batch_wait_max_tokens_ratio", self.batch_wait_max_tokens_ratio))
        _at_least("tokens_per_block", self.tokens_per_block, 1)
        _at_least("num_gpu_pages", self.num_gpu_pages, 0)
        _at_least("num_host_pages", self.num_host_pages, 0)
        _at_least("max_rewind_len", self.max_rewind_len, 0)
        _at_least("num_requests", self.num_requests, 1)
        _at_least("max_num_tokens", self.max_num_tokens, 1)
        _at_least("max_batch_size", self.max_batch_size, 1)
        _at_least("batch_wait_timeout_iters", self.batch_wait_timeout_iters, 0)
        _at_least("max_prompt_len", self.max_prompt_len, 1)
        _at_least("max_draft_len", self.max_draft_len, 0)
        if not (0 < self.max_util_for_resume <= 1):
            raise InvalidArgument(
                f"Config.max_util_for_resume={float(self.max_util_for_resume)!r} is outside (0, 1];"
                " use a GPU utilization fraction such as 0.95")
        if not (0 <= self.batch_wait_max_tokens_ratio <= 1):
            raise InvalidArgument(
                "Config.batch_wait_max_tokens_ratio="
                f"{float(self.batch_wait_max_tokens_ratio)!r} is outside [0, 1]")

    @property
    def batch_waiting_enabled(self) -> bool:
        """Batch waiting is on when both tunables are positive (section 3.1 of the semantics)."""
        return self.batch_wait_timeout_iters > 0 and self.batch_wait_max_tokens_ratio > 0

    def blocks(self, capacity: int) -> int:
        """Pages needed for ``capacity`` tokens: ceil(capacity / tokens_per_block)."""
        return -(-capacity // self.tokens_per_block)

    def replace(self, **changes: object) -> Config:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"Config.{name}={value!r} must be an integer >= {low}")
    if value < low:
        raise InvalidArgument(f"Config.{name}={value!r} must be >= {low}")


def _fraction(name: str, value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Fraction)):
        raise InvalidArgument(f"Config.{name}={value!r} must be a number")
    try:
        return Fraction(value).limit_denominator(10_000)
    except (ValueError, ZeroDivisionError) as exc:
        raise InvalidArgument(f"Config.{name}={value!r} is not a number") from exc
