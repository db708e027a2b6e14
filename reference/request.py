"""The executor-side request record (TensorRT-LLM ``LlmRequest``), reduced to the fields the
KV-capacity protocol reads and writes. The manager reads positions and writes only the
context snapshot ``py_ctx_pre_resize_cap`` (and rewinds the cursor in a FREE revert)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kvspec.errors import InvalidArgument


class RequestState(enum.IntEnum):
    """The subset of TRT's ``LlmRequestState`` the protocol distinguishes."""

    CONTEXT_INIT = 1
    GENERATION_IN_PROGRESS = 2
    GENERATION_COMPLETE = 3


@dataclass(eq=False)
class LlmRequest:
    """One request as the executor sees it (TRT ``LlmRequest``).

    Attributes:
        request_id: Key of the request's cache in the manager.
        prompt_len: Prompt tokens P (>= 1).
        context_chunk_size: Chunk size of chunked prefill (>= 1).
        draft_len: Draft tokens per generation step (``py_draft_tokens``; >= 0).
        context_current_position: Prefill cursor pos, 0..P.
        state: Life-cycle state.
        py_ctx_pre_resize_cap: Capacity before this iteration's growing ``resize_context``, or
            None; consumed by ``revert_allocate_context``.
        max_new_tokens: Tokens the generation steps make before the request finishes, after
            the one its last context chunk makes (executor only); 0: that token is the only
            one, the request finishes with its context.
        num_generated_tokens: Tokens generated so far (executor only).
    """

    request_id: int
    prompt_len: int
    context_chunk_size: int
    draft_len: int = 0
    context_current_position: int = 0
    state: RequestState = RequestState.CONTEXT_INIT
    py_ctx_pre_resize_cap: int | None = None
    max_new_tokens: int = 1
    num_generated_tokens: int = 0

    def __post_init__(self) -> None:
        for name, low in (("prompt_len", 1), ("context_chunk_size", 1), ("draft_len", 0),
                          ("context_current_position", 0), ("max_new_tokens", 0),
                          ("num_generated_tokens", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidArgument(
                    f"LlmRequest(request_id={self.request_id!r}).{name}={value!r} must be an"
                    f" integer >= {low}")
        if self.context_current_position > self.prompt_len:
            raise InvalidArgument(
                f"LlmRequest(request_id={self.request_id!r}).context_current_position="
                f"{self.context_current_position} exceeds prompt_len={self.prompt_len}")

    def num_context_tokens(self) -> int:
        """Tokens of the current chunk: min(context_chunk_size, prompt_len - pos)."""
        return min(self.context_chunk_size, self.prompt_len - self.context_current_position)

    @property
    def is_first_context_chunk(self) -> bool:
        """Whether the cursor is at 0 (the older TRT definition; no prefix reuse here)."""
        return self.context_current_position == 0

    @property
    def is_last_context_chunk(self) -> bool:
        """Whether the current chunk ends the prompt."""
        return self.context_current_position + self.num_context_tokens() == self.prompt_len

    def context_resize_tokens(self) -> int:
        """``num_tokens`` the scheduler passes to ``resize_context``: the chunk, plus the draft
        length on the last chunk (so the target is the protocol's ``ctx_target``)."""
        n = self.num_context_tokens()
        return n + self.draft_len if self.is_last_context_chunk else n

    @property
    def is_context(self) -> bool:
        """Whether the request is in its context (prefill) phase."""
        return self.state == RequestState.CONTEXT_INIT

    @property
    def is_generation(self) -> bool:
        """Whether the request is generating."""
        return self.state == RequestState.GENERATION_IN_PROGRESS
