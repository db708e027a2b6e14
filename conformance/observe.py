"""One step's observation as one value, and the one pure function that compares it.

:func:`observe` reads everything the lockstep compares after a step, once: the observed
fields (:func:`~kvspec.conformance.driver.abstract`), the invariant ids the implementation
violated (raised or detected: :func:`~kvspec.conformance.detect.observe_step`), the structural,
kept-page and content checks (:func:`~kvspec.conformance.driver.structure`) and the call's
outcome (result, refusal, misuse findings). The model's side of the step is an
:class:`Expected`. :func:`compare` turns the two into the differences a divergence reports and
the tolerated misuse findings; it reads nothing else and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .detect import observe_step
from .driver import OBS_FIELDS, Driver, Observation, StepOutcome, abstract, structure
from .misuse import EXPECTED as _MISUSE_EXPECTED
from .misuse import MisuseFinding
from .report import FieldDiff


@dataclass(frozen=True)
class StepObservation:
    """What the implementation showed after one step: ``fields`` (the model's observable
    fields per slot plus the free counts), ``violated`` (ids it raised or the driver
    detected), ``structure`` (failed structural, kept-page and content checks; empty when
    not run), ``outcome`` (its return value, refusal and misuse findings)."""

    fields: Observation
    violated: frozenset[str]
    structure: tuple[str, ...]
    outcome: StepOutcome


@dataclass(frozen=True)
class Expected:
    """The model's side of one step: ``fields`` after it, ``violated`` (the invariant ids
    its ghost flags newly set), ``result`` (None for an action without one) and whether the
    action ``returns`` a value the implementation must match."""

    action: str
    fields: Observation
    violated: frozenset[str]
    result: bool | None
    returns: bool


def observe(d: Driver, name: str, r: int, args: dict[str, Any], outcome: StepOutcome,
            before: Observation, *, check_structure: bool) -> StepObservation:
    """Read the implementation after ``name(r, **args)`` returned ``outcome``; ``before`` is
    the observation after the previous step. Updates the driver's executor-side marks
    (:func:`~kvspec.conformance.detect.observe_step`) and, with ``check_structure``, its
    kept-page record.

    Cost: one observation (~10 manager calls per slot), O(slots) detection, O(pages)
    structural checks. Exceptions of the manager's observations propagate (a finding).
    """
    fields = abstract(d)
    violated = observe_step(d, name, r, args, outcome, before, fields)
    msgs = tuple(structure(d, per_step=True)) if check_structure else ()
    return StepObservation(fields, violated, msgs, outcome)


def observe_batch(d: Driver, forwards: Sequence[tuple[int, dict[str, Any]]],
                  before: Observation, *, check_structure: bool) -> StepObservation:
    """As :func:`observe`, after a batch of ``forward`` steps (slot, args) sent as one
    update call per kind: one observation, the violations each forward shows."""
    fields = abstract(d)
    violated: frozenset[str] = frozenset()
    for r, args in forwards:
        violated |= observe_step(d, "forward", r, args, StepOutcome(), before, fields)
    msgs = tuple(structure(d, per_step=True)) if check_structure else ()
    return StepObservation(fields, violated, msgs, StepOutcome())


def compare(exp: Expected, got: StepObservation, *, step: int, strict: bool
            ) -> tuple[list[FieldDiff], list[MisuseFinding]]:
    """The differences between the model's step and the implementation's, and the misuse
    findings the run tolerates (stamped with ``step``; with ``strict`` none is tolerated:
    each is a difference). Pure: reads its arguments only."""
    diffs: list[FieldDiff] = []
    out = got.outcome
    if out.raised is not None:
        pass  # a refusal returns nothing; the violation and the unchanged state count
    elif exp.returns and out.result != exp.result:
        diffs.append(FieldDiff("result", str(exp.result), str(out.result)))
    elif exp.action == "evict_to_host" and out.result is False:
        diffs.append(FieldDiff("result", "None (evicted)", "False (host tier refused)"))
    if got.violated != exp.violated:
        shown = ids(got.violated)
        if out.raised is not None:
            shown += f" (raised InvariantViolation: {out.raised})"
        diffs.append(FieldDiff("violations", ids(exp.violated), shown))
    if exp.fields != got.fields:
        diffs.extend(diff_fields(exp.fields, got.fields))
    tolerated: list[MisuseFinding] = []
    for finding in out.misuse:
        finding = replace(finding, step=step)
        if finding.failure or strict:
            diffs.append(FieldDiff("misuse", _MISUSE_EXPECTED,
                                   f"{finding.kind}: {finding.action}: {finding.detail}"))
        else:
            tolerated.append(finding)
    diffs.extend(FieldDiff("structure", "[]", msg) for msg in got.structure)
    return diffs, tolerated


def ids(values: Iterable[str]) -> str:
    """``{A, B}`` sorted, or ``{} (none)``."""
    s = sorted(values)
    return "{" + ", ".join(s) + "}" if s else "{} (none)"


def show(name: str, v: Any) -> str:
    """A field value as the model names it (``None`` for an absent snapshot, phase and status
    names, ``n/a`` for a field the manager does not report)."""
    if name in ("snapshot", "draft_record") and v == -1:
        return "None"
    if name == "phase":
        return ("DONE", "CONTEXT", "GENERATION")[v] if v in (0, 1, 2) else str(v)
    if name == "status":
        return ("ACTIVE", "SUSPENDED")[v] if v in (0, 1) else str(v)
    if isinstance(v, bool) or name in ("has_cache", "never_resumed"):
        return "n/a" if v == -2 else str(bool(v))
    return str(v)


def diff_fields(exp: Observation, act: Observation) -> list[FieldDiff]:
    """One difference per observed field that differs (``r1.capacity``, ``gpu_free``)."""
    out: list[FieldDiff] = []
    for r, (qe, qa) in enumerate(zip(exp[0], act[0])):
        if qe != qa:
            for n, ve, va in zip(OBS_FIELDS, qe, qa):
                if ve != va:
                    out.append(FieldDiff(f"r{r}.{n}", show(n, ve), show(n, va)))
    for i, n in ((1, "gpu_free"), (2, "host_free")):
        if exp[i] != act[i]:
            out.append(FieldDiff(n, str(exp[i]), str(act[i])))
    return out
