"""The one error hierarchy of kvspec: model, implementations, conformance and CLI.

Every error names the object, the value and the fix. Implementations raise these before they
mutate anything, so a failed call leaves every state exactly as it was.
"""

from __future__ import annotations


class KVSpecError(Exception):
    """Root of every error kvspec raises on purpose."""


class InvalidArgument(KVSpecError, ValueError):
    """Bad user input: a configuration field, a policy or invariant name, a negative count."""


class InvalidDefinition(KVSpecError, TypeError):
    """A mistake in a spec definition: duplicate action name, unknown field, bad guard."""


class ProtocolError(KVSpecError, RuntimeError):
    """A caller broke the manager's protocol: unknown request, resize of a suspended cache,
    double free, a revert the policy forbids. Raised before any state changes."""


class InvariantViolation(KVSpecError, AssertionError):
    """An implementation refused an operation because performing it would break a named
    invariant (the model's ``invariant_id``), e.g. SWA-REWIND on a shrink under scratch reuse.
    The manager is left exactly as it was."""

    def __init__(self, invariant_id: str, message: str) -> None:
        super().__init__(f"{invariant_id}: {message}")
        self.invariant_id = invariant_id


class ConformanceError(KVSpecError, AssertionError):
    """An implementation diverged from the model; carries the trace and the step index."""
