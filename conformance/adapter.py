"""The adapter protocol: the TensorRT-LLM-named manager API an implementation must offer to be
checked against the model, and resolution of ``"module:factory"`` strings.

An implementation is given to conformance as a *factory* ``factory(config, policy) -> manager``.
The manager never imports the model; :mod:`kvspec.conformance.driver` maps its state to the
model's. Required: the protocol operations and observations below. Optional (checked with
``hasattr``): ``is_never_resumed``, ``check_integrity``, ``snapshot_state``,
``free_page_ids`` (which makes the page-partition check exact instead of count-based) and
``get_page_tiers`` (the tier of each page-table entry, for caches partly on the host), and
``write_tokens``/``read_tokens`` (KV contents through the page table: the content oracle).
Under a policy with ``reserve_context`` (docs/design-space.md) the manager also needs
``commit_context(req)`` and ``get_reserved_pages(rid)``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from kvspec.config import Config
from kvspec.errors import InvalidArgument, KVSpecError
from kvspec.policy import Policy


class RequestLike(Protocol):
    """The executor's request record (TRT ``LlmRequest`` field names) that the driver passes.

    A manager reads the positions and writes ``py_ctx_pre_resize_cap`` (resize, revert) and
    ``context_current_position`` (rewound to 0 by a FREE revert). ``state`` is an int-valued
    enum: 1 CONTEXT_INIT, 2 GENERATION_IN_PROGRESS, 3 GENERATION_COMPLETE.
    """

    request_id: int
    prompt_len: int
    context_chunk_size: int
    draft_len: int
    context_current_position: int
    state: Any
    py_ctx_pre_resize_cap: int | None


@runtime_checkable
class KVManager(Protocol):
    """The manager API conformance drives (semantics: docs/protocol.md).

    Operations return what TRT's return (bool or None); resource shortage is a False return,
    misuse a :class:`kvspec.errors.ProtocolError`, an operation that would break a named
    invariant a :class:`kvspec.errors.InvariantViolation` raised before any mutation.
    Observations of a slot without a cache may raise or return the empty values; the driver
    only asks them for slots where ``has_cache`` is True (``get_draft_record`` excepted).
    """

    def prepare_context(self, req: Any) -> bool: ...
    def resize_context(self, req: Any, num_tokens: int) -> bool: ...
    def revert_allocate_context(self, req: Any) -> bool: ...
    def try_allocate_generation(self, req: Any) -> bool: ...
    def revert_allocate_generation(self, req: Any) -> None: ...
    def update_context_resources(self, reqs: Sequence[Any]) -> None: ...
    def update_resources(self, reqs: Sequence[Any], accepted: Sequence[int]) -> None: ...
    def suspend_request(self, req: Any) -> None: ...
    def resume_request(self, req: Any) -> bool: ...
    def evict_to_host(self, req: Any) -> bool: ...
    def free_resources(self, req: Any) -> None: ...

    def has_cache(self, rid: int) -> bool: ...
    def get_capacity(self, rid: int) -> int: ...
    def get_history(self, rid: int) -> int: ...
    def get_committed(self, rid: int) -> int: ...
    def get_status(self, rid: int) -> int: ...
    def get_host_pages(self, rid: int) -> int: ...
    def get_page_table(self, rid: int) -> Sequence[int]: ...
    def get_draft_record(self, rid: int) -> int | None: ...

    @property
    def num_free_gpu_pages(self) -> int: ...

    @property
    def num_free_host_pages(self) -> int: ...


Factory = Callable[[Config, Policy], Any]
"""``factory(config, policy) -> manager`` implementing :class:`KVManager`."""

REQUIRED_METHODS: tuple[str, ...] = (
    "prepare_context", "resize_context", "revert_allocate_context", "try_allocate_generation",
    "revert_allocate_generation", "update_context_resources", "update_resources",
    "suspend_request", "resume_request", "evict_to_host", "free_resources", "has_cache",
    "get_capacity", "get_history", "get_committed", "get_status", "get_host_pages",
    "get_page_table", "get_draft_record")
REQUIRED_PROPERTIES: tuple[str, ...] = ("num_free_gpu_pages", "num_free_host_pages")
OPTIONAL_METHODS: tuple[str, ...] = ("is_never_resumed", "check_integrity", "snapshot_state",
                                     "free_page_ids", "get_page_tiers", "write_tokens",
                                     "read_tokens", "commit_context", "get_reserved_pages")


def missing_api(manager: object) -> list[str]:
    """Names of required methods/properties ``manager`` lacks (empty when it conforms).

    Cost: one ``getattr`` per name; reading the two properties calls them once.
    """
    missing = [n for n in REQUIRED_METHODS if not callable(getattr(manager, n, None))]
    for n in REQUIRED_PROPERTIES:
        try:
            getattr(manager, n)
        except AttributeError:
            missing.append(n)
    return missing


def make_manager(factory: Factory, config: Config, policy: Policy) -> Any:
    """Call ``factory(config, policy)`` and check the result offers the adapter API.

    A factory that raises is bad input, not a divergence: its exception becomes an
    :class:`InvalidArgument` naming the factory, the exception type and its message (a
    :class:`~kvspec.errors.KVSpecError` it raises passes through unchanged). A manager that
    raises later, during a step, is the lockstep's business (a divergence).

    Raises:
        InvalidArgument: the factory raised, or the manager lacks required names (listed, with
            the fix).
    """
    try:
        manager = factory(config, policy)
    except KVSpecError:
        raise
    except Exception as exc:
        raise InvalidArgument(
            f"factory {_name(factory)} raised {type(exc).__name__}: {exc} (building a manager"
            f" for policy {policy.name}); expected factory(config, policy) -> manager") from exc
    missing = missing_api(manager)
    if missing:
        raise InvalidArgument(
            f"factory {_name(factory)} returned {type(manager).__name__}, which lacks"
            f" {', '.join(missing)}; implement the kvspec.conformance.adapter.KVManager"
            " protocol (see docs/conformance.md) or wrap your manager in an adapter"
            + ("; get_host_pages(rid) (pages on the host tier) replaces is_on_host(rid)"
               if "get_host_pages" in missing else ""))
    return manager


def resolve_factory(spec: str | Factory) -> Factory:
    """Resolve ``"package.module:factory"`` (or pass a callable through) and check that the
    factory accepts ``(config, policy)``.

    Cost: one import. Raises :class:`InvalidArgument` for a malformed string, a module that is
    not found or fails to import (any exception at import, its own missing dependencies named
    as such), a missing or non-callable attribute, or a factory whose signature cannot take
    ``(config, policy)``, naming the value and the fix.
    """
    if callable(spec):
        check_signature(spec)
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise InvalidArgument(
            f"--impl {spec!r} is not of the form 'module:factory' (for example"
            " 'kvspec.conformance.impls:reference')")
    module_name, attr = (p.strip() for p in spec.split(":"))
    if not module_name or not attr:
        raise InvalidArgument(
            f"--impl {spec!r}: both the module and the factory name are needed"
            " ('module:factory')")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # like `python -m`, a console script should find a module in the current folder
        sys.path.insert(0, os.getcwd())
    module = _import(spec, module_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidArgument(
                f"--impl {spec!r}: module {module_name!r} has no attribute {attr!r}; expected"
                " a callable factory(config, policy) -> manager")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidArgument(
            f"--impl {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable"
            " factory(config, policy) -> manager")
    check_signature(obj, spec)
    return obj


def check_signature(factory: Factory, spec: str | None = None) -> None:
    """Raise :class:`InvalidArgument` when ``factory`` cannot be called as
    ``factory(config, policy)`` (a callable whose signature Python cannot read passes)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None)
    except TypeError as exc:
        name = f"--impl {spec!r}" if spec else f"factory {_name(factory)}"
        raise InvalidArgument(
            f"{name} has the signature {sig}, which cannot take (config, policy) ({exc});"
            " expected factory(config, policy) -> manager") from None


def _import(spec: str, module_name: str) -> Any:
    """Import ``module_name``; every failure becomes one :class:`InvalidArgument`."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and missing != module_name and not module_name.startswith(missing + "."):
            raise InvalidArgument(
                f"--impl {spec!r}: module {module_name!r} failed to import: its dependency"
                f" {missing!r} is missing; install it in this environment") from None
        raise InvalidArgument(
            f"--impl {spec!r}: module {module_name!r} does not import (no module named"
            f" {missing or module_name!r}); check the name and that it is on PYTHONPATH"
            " or in the current folder") from None
    except (Exception, SystemExit) as exc:
        where = _where(exc)
        raise InvalidArgument(
            f"--impl {spec!r}: module {module_name!r} failed to import: {type(exc).__name__}:"
            f" {_first_line(exc)}{where}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _where(exc: BaseException) -> str:
    """`` (at file:line)`` of the innermost frame of ``exc`` (SyntaxError says it itself)."""
    if isinstance(exc, SyntaxError):
        return ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "" if tb is None else f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"


def _name(factory: Factory) -> str:
    mod = getattr(factory, "__module__", "?")
    return f"{mod}:{getattr(factory, '__qualname__', repr(factory))}"
