"""Misuse probes: calls the protocol forbids, made by the driver right after the model step
that sets each one up, classified by what the manager did.

Kinds (:data:`KINDS`):

- ``double-free``: ``free_resources`` again on the request a ``free_resources`` step just
  freed, and once more after another request's growth took some of its old GPU pages (a
  stale free after reuse: vLLM's and SGLang's aliasing bugs);
- ``free-unknown``: ``free_resources`` of a fresh ``LlmRequest`` whose id is outside the
  driver's slots ``0..num_requests-1`` (an id the manager never saw), after every
  ``free_resources`` step;
- ``suspend-suspended``: ``suspend_request`` again on the cache a ``suspend_request`` step
  just SUSPENDED.

Each probe takes the manager's fingerprint (``Driver.fingerprint``: ``snapshot_state()`` when
offered, else observations plus page tables) and its free page counts before and after the
call, and classifies (:data:`OUTCOMES`):

- refused: ``ProtocolError`` and nothing changed: fine, no finding;
- ``accepted``: no error, nothing changed: a warning (TensorRT-LLM's, vLLM's and SGLang's
  managers return silently on a freed request);
- ``raised``: another exception type, nothing changed: a warning naming the type and message
  (a typed ``ProtocolError`` was expected);
- ``changed``: the state changed, raised or not: always a failure (a divergence); the detail
  says what changed (free page counts before -> after, caches dropped or created).

The lockstep (:class:`~kvspec.conformance.lockstep.Lockstep`) keeps the first warning of each
kind and goes on; with ``strict`` a warning is a divergence. Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from kvspec.config import Config
from kvspec.errors import ProtocolError
from kvspec.reference.request import LlmRequest

KINDS: dict[str, str] = {
    "double-free": "free_resources of a request already freed",
    "free-unknown": "free_resources of a request id the manager never saw",
    "suspend-suspended": "suspend_request of a cache already SUSPENDED",
}
"""Probe kinds and what each one calls."""

ACCEPTED, RAISED, CHANGED = "accepted", "raised", "changed"
OUTCOMES = (ACCEPTED, RAISED, CHANGED)
"""A finding's outcome: ``accepted`` and ``raised`` are warnings, ``changed`` a failure."""

EXPECTED = "ProtocolError, nothing changed"
"""What every probe expects (the ``expected`` side of a ``misuse`` field difference)."""

_SUSPENDED = 1  # the model's (and the driver's) SUSPENDED status


@dataclass(frozen=True)
class MisuseFinding:
    """A misuse the manager did not refuse cleanly.

    ``kind``: a key of :data:`KINDS`; ``step``: the 1-based lockstep step after which the
    probe ran (0 until the lockstep stamps it); ``action``: the misuse call; ``outcome``: one
    of :data:`OUTCOMES`; ``detail``: what happened, one line; ``where``: the run it came from
    in a multi-run check (``walker run 3 (run seed '0:2'), config #1``), "" for one run.
    """

    kind: str
    step: int
    action: str
    outcome: str
    detail: str
    where: str = ""

    @property
    def failure(self) -> bool:
        """The manager state changed: a divergence whatever ``strict`` says."""
        return self.outcome == CHANGED

    def render(self) -> str:
        """One line: kind, step (and run), action, what happened."""
        at = f"step {self.step}" + (f" of {self.where}" if self.where else "")
        return f"{self.kind} at {at}: {self.action}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


class Target(Protocol):
    """What a probe needs of the driver (:class:`~kvspec.conformance.driver.Driver`)."""

    manager: Any
    config: Config

    def fingerprint(self) -> object: ...


@dataclass(frozen=True)
class _Snap:
    fingerprint: object
    gpu_free: int
    host_free: int
    caches: tuple[bool, ...]


def _snap(t: Target) -> _Snap:
    m = t.manager
    return _Snap(t.fingerprint(), int(m.num_free_gpu_pages), int(m.num_free_host_pages),
                 tuple(bool(m.has_cache(r)) for r in range(t.config.num_requests)))


def _changes(t: Target, a: _Snap, b: _Snap) -> str:
    """What differs between two snapshots, for a person."""
    parts = [f"{name} {x} -> {y}" for name, x, y in (("gpu_free", a.gpu_free, b.gpu_free),
                                                      ("host_free", a.host_free, b.host_free))
             if x != y]
    for r, (x, y) in enumerate(zip(a.caches, b.caches)):
        if x != y:
            parts.append(f"slot {r} cache {'created' if y else 'dropped'}")
    if not parts:
        snap = callable(getattr(t.manager, "snapshot_state", None))
        parts.append("snapshot_state() differs" if snap
                     else "page tables or observed fields differ")
    return ", ".join(parts)


def probe(t: Target, kind: str, action: str, call: Callable[[], object],
          before: _Snap | None = None) -> tuple[MisuseFinding | None, _Snap]:
    """Make the misuse ``call()`` and classify it; (the finding or None when refused cleanly,
    the snapshot after the call). ``before``: a snapshot taken already (saves one).

    Cost: two fingerprints (one with ``before``) plus the call. Exceptions other than
    ``Exception`` (KeyboardInterrupt) propagate, as do errors of the observations themselves.
    """
    if before is None:
        before = _snap(t)
    error: Exception | None = None
    refused = False
    try:
        call()
    except ProtocolError:
        refused = True
    except Exception as exc:  # noqa: BLE001 - the exception type is the finding
        error = exc
    after = _snap(t)
    raised = "" if error is None else type(error).__name__ + (f": {error}" if str(error) else "")
    if after != before:
        how = ("raised ProtocolError" if refused else f"raised {raised}" if error is not None
               else "accepted it")
        return MisuseFinding(kind, 0, action, CHANGED,
                             f"{how} but changed the manager state: {_changes(t, before, after)}"
                             ), after
    if refused:
        return None, after
    if error is not None:
        return MisuseFinding(kind, 0, action, RAISED,
                             f"raised {raised} (nothing changed); expected ProtocolError"), after
    return MisuseFinding(kind, 0, action, ACCEPTED,
                         "accepted silently (no error, nothing changed); expected"
                         " ProtocolError"), after


def after_free(t: Target, req: LlmRequest) -> tuple[MisuseFinding, ...]:
    """The probes after a ``free_resources`` step: ``double-free`` (free ``req`` again), then
    ``free-unknown`` (free a fresh request with id ``num_requests``, outside the slots).
    A ``changed`` double free ends the probing (the state is no longer the model's)."""
    rid = req.request_id
    found, snap = probe(t, "double-free", f"free_resources(r={rid}) again, on the request just"
                        " freed", lambda: t.manager.free_resources(req))
    out = [] if found is None else [found]
    if found is not None and found.failure:
        return tuple(out)
    unknown = LlmRequest(request_id=t.config.num_requests, prompt_len=1, context_chunk_size=1)
    found, _ = probe(t, "free-unknown", f"free_resources(request_id={unknown.request_id}), an"
                     " id never used", lambda: t.manager.free_resources(unknown), before=snap)
    if found is not None:
        out.append(found)
    return tuple(out)


def after_reuse(t: Target, req: LlmRequest, by: int) -> tuple[MisuseFinding, ...]:
    """The stale-free probe: ``free_resources`` of ``req`` (freed earlier, its slot not
    refilled) after slot ``by``'s growth took some of the GPU pages ``req`` held. A manager
    that releases pages by a stale record frees pages another request holds."""
    found, _ = probe(t, "double-free", f"free_resources(r={req.request_id}) again, after"
                     f" request {by} took some of its old pages",
                     lambda: t.manager.free_resources(req))
    return () if found is None else (found,)


def after_suspend(t: Target, req: LlmRequest) -> tuple[MisuseFinding, ...]:
    """The probe after a ``suspend_request`` step: ``suspend-suspended`` (suspend ``req``
    again). Skipped when the manager does not show the cache SUSPENDED (the lockstep reports
    that difference itself)."""
    m, rid = t.manager, req.request_id
    if not m.has_cache(rid) or int(m.get_status(rid)) != _SUSPENDED:
        return ()
    found, _ = probe(t, "suspend-suspended", f"suspend_request(r={rid}) again, on the cache"
                     " just SUSPENDED", lambda: m.suspend_request(req))
    return () if found is None else (found,)


def merge(into: list[MisuseFinding], new: Iterable[MisuseFinding], where: str = "") -> None:
    """Append to ``into`` each finding of ``new`` whose kind ``into`` lacks (the first one of
    each kind is kept), with ``where`` set when given."""
    seen = {f.kind for f in into}
    for f in new:
        if f.kind not in seen:
            seen.add(f.kind)
            into.append(replace(f, where=where) if where else f)


def render_warnings(warnings: Iterable[MisuseFinding]) -> list[str]:
    """The report lines of misuse warnings: a head, then one line each; [] for none."""
    lines = [f"  warning: {w.render()}" for w in warnings]
    if not lines:
        return []
    return ["Misuse warnings (tolerated, not refused with ProtocolError; --strict fails on"
            " them):", *lines]
