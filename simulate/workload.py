"""Workloads for ``kvspec simulate``: a stream of arriving requests (arrival time in seconds,
prompt tokens, output tokens), from a built-in generator or a CSV trace.

Generators draw inter-arrival times (Poisson, or gamma with a coefficient of variation above
1 for bursty traffic) and log-normal prompt and output lengths, clipped to a range. The
defaults of the two presets are published statistics of public traces (cited per preset);
every field of :class:`WorkloadSpec` is settable. The trace reader accepts the column layout
of the public Azure LLM inference traces (``TIMESTAMP,ContextTokens,GeneratedTokens``) and a
plain ``arrival_s,prompt_tokens,output_tokens`` layout.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kvspec.errors import InvalidArgument

ARRIVALS = ("poisson", "bursty")


@dataclass(frozen=True)
class Arrival:
    """One request of a workload: when it arrives (seconds from the start) and its sizes."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class WorkloadSpec:
    """A generated workload; every field is settable (``kvspec simulate --set FIELD=VALUE``).

    Attributes:
        name: Label used in reports and plot titles.
        num_requests: Requests generated.
        rate: Mean arrival rate, requests per second.
        arrival: ``"poisson"`` (exponential inter-arrival times) or ``"bursty"`` (gamma
            inter-arrival times with coefficient of variation ``burst_cv``: shape 1/cv^2, the
            form of vLLM's ``benchmark_serving --burstiness``).
        burst_cv: Coefficient of variation of the inter-arrival times under ``"bursty"``
            (> 1 is burstier than Poisson).
        prompt_median, prompt_sigma: Log-normal prompt length: median tokens and sigma of the
            underlying normal; clipped to [prompt_min, prompt_max].
        output_median, output_sigma: Log-normal output length, clipped to
            [output_min, output_max].
        chunk_size: Context chunk size of chunked prefill (tokens per context iteration).
        draft_len: Draft tokens per generation step (speculative decoding; 0 off).
    """

    name: str = "chat"
    num_requests: int = 1000
    rate: float = 10.0
    arrival: str = "poisson"
    burst_cv: float = 3.0
    prompt_median: float = 1020.0
    prompt_sigma: float = 1.0
    prompt_min: int = 1
    prompt_max: int = 8192
    output_median: float = 129.0
    output_sigma: float = 1.0
    output_min: int = 1
    output_max: int = 2048
    chunk_size: int = 512
    draft_len: int = 0

    def __post_init__(self) -> None:
        for name in ("num_requests", "prompt_min", "prompt_max", "output_min", "output_max",
                     "chunk_size"):
            _int_at_least(name, getattr(self, name), 1)
        _int_at_least("draft_len", self.draft_len, 0)
        for name in ("rate", "prompt_median", "output_median"):
            _positive(name, getattr(self, name))
        for name in ("prompt_sigma", "output_sigma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    0 <= value < math.inf):
                raise InvalidArgument(f"WorkloadSpec.{name}={value!r} must be a number >= 0")
        if self.arrival not in ARRIVALS:
            raise InvalidArgument(
                f"WorkloadSpec.arrival={self.arrival!r}: expected one of {', '.join(ARRIVALS)}")
        if self.arrival == "bursty":
            _positive("burst_cv", self.burst_cv)
        if self.prompt_min > self.prompt_max or self.output_min > self.output_max:
            raise InvalidArgument(
                f"WorkloadSpec {self.name!r}: prompt range [{self.prompt_min},"
                f" {self.prompt_max}] and output range [{self.output_min}, {self.output_max}]"
                " need min <= max")

    def replace(self, **changes: object) -> WorkloadSpec:
        """A copy with ``changes`` applied and validated; an unknown field raises
        :class:`InvalidArgument` listing the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidArgument(
                f"unknown workload field(s) {unknown}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_settings(self, settings: Mapping[str, str]) -> WorkloadSpec:
        """A copy with ``FIELD=VALUE`` strings parsed to each field's type (the CLI's
        ``--set``). Raises :class:`InvalidArgument` naming a bad field or value."""
        types = {f.name: f.type for f in dataclasses.fields(self)}
        changes: dict[str, object] = {}
        for key, text in settings.items():
            kind = types.get(key)
            if kind is None:
                raise InvalidArgument(
                    f"unknown workload field {key!r}; known: {', '.join(sorted(types))}")
            try:
                changes[key] = (int(text) if kind == "int" else float(text)
                                if kind == "float" else text)
            except ValueError:
                what = "an integer" if kind == "int" else "a number"
                raise InvalidArgument(f"workload field {key}={text!r} is not {what}") from None
        return self.replace(**changes)

    def generate(self, seed: int) -> tuple[Arrival, ...]:
        """The arrivals, in arrival order; same seed, same arrivals. O(num_requests)."""
        rng = random.Random(seed)
        out = []
        t = 0.0
        shape = 1.0 / (self.burst_cv ** 2) if self.arrival == "bursty" else 1.0
        for _ in range(self.num_requests):
            out.append(Arrival(
                round(t, 6),
                _lognormal(rng, self.prompt_median, self.prompt_sigma, self.prompt_min,
                           self.prompt_max),
                _lognormal(rng, self.output_median, self.output_sigma, self.output_min,
                           self.output_max)))
            # gamma(shape, scale) has mean shape * scale = 1 / rate
            t += rng.gammavariate(shape, 1.0 / (shape * self.rate))
        return tuple(out)


# ---- traces ---------------------------------------------------------------------------------

_COLUMNS = (("timestamp", "contexttokens", "generatedtokens"),
            ("arrival_s", "prompt_tokens", "output_tokens"))


def read_trace(path: str | Path, limit: int | None = None) -> tuple[Arrival, ...]:
    """Read a CSV trace: one request per row, arrivals relative to the earliest row.

    Accepted headers (case-insensitive, surrounding spaces and a UTF-8 byte-order mark
    ignored, extra columns ignored): ``TIMESTAMP,ContextTokens,GeneratedTokens`` (the public
    Azure LLM inference traces) or ``arrival_s,prompt_tokens,output_tokens``. The time column
    holds either seconds (``12.5``) or date-times (``2023-11-16 18:15:46.6805900``; naive ones
    are UTC, an explicit offset such as ``+01:00`` is honoured); the first data row fixes which,
    and every row must use it. Rows are sorted by arrival (stable). O(rows); reads at most
    ``limit`` data rows. Line numbers in errors are the file's lines (a quoted field that spans
    lines counts them all).

    Raises:
        InvalidArgument: the file cannot be read, is not UTF-8 text, has no recognised header,
            a field longer than the CSV reader's limit, or a bad row; the message names the
            file, the line, and for a bad value the column and the value.
    """
    p = Path(path)
    try:
        handle = open(p, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidArgument(f"trace {str(p)!r}: cannot read it ({exc.strerror or exc})") from None
    with handle:
        reader = csv.reader(handle)
        try:
            rows = _read_rows(p, reader, limit)
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"trace {str(p)!r} line {_undecodable_line(p)}: not UTF-8 text ({exc.reason});"
                " save the trace as UTF-8") from None
        except csv.Error as exc:
            raise InvalidArgument(f"trace {str(p)!r} line {reader.line_num}: not a valid CSV"
                                  f" record ({exc})") from None
    if not rows:
        raise InvalidArgument(f"trace {str(p)!r} has a header but no request rows")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return tuple(Arrival(round(t - t0, 6), a, b) for t, a, b in rows)


def _read_rows(p: Path, reader: Any, limit: int | None) -> list[tuple[float, int, int]]:
    """The header check and the data rows of :func:`read_trace` (unsorted)."""
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidArgument(f"trace {str(p)!r} is empty; expected a header line"
                              " TIMESTAMP,ContextTokens,GeneratedTokens") from None
    names = [h.strip().lower() for h in header]
    for cols in _COLUMNS:
        if all(c in names for c in cols):
            idx = [names.index(c) for c in cols]
            break
    else:
        raise InvalidArgument(
            f"trace {str(p)!r} line {reader.line_num}: header {header!r} lacks the columns"
            " TIMESTAMP,ContextTokens,GeneratedTokens (or arrival_s,prompt_tokens,"
            "output_tokens)")
    rows: list[tuple[float, int, int]] = []
    time_format: tuple[str, int] | None = None   # ("seconds" | "date-time", its first line)
    last = reader.line_num
    for row in reader:
        first, last = last + 1, reader.line_num
        line = f"line {first}" if first == last else f"lines {first}-{last}"
        if limit is not None and len(rows) >= limit:
            break
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(idx):
            raise InvalidArgument(
                f"trace {str(p)!r} {line}: {len(row)} column(s), expected at least"
                f" {max(idx) + 1} ({', '.join(header)})")
        column = header[idx[0]].strip()
        t, kind = _time(p, line, column, row[idx[0]])
        if time_format is None:
            time_format = (kind, first)
        elif kind != time_format[0]:
            raise InvalidArgument(
                f"trace {str(p)!r} {line}: {column}={row[idx[0]]!r} is a {kind} but the"
                f" first row (line {time_format[1]}) gives {time_format[0]}; use one time"
                " format throughout")
        prompt = _count(p, line, header[idx[1]].strip(), row[idx[1]], 1)
        output = _count(p, line, header[idx[2]].strip(), row[idx[2]], 1)
        rows.append((t, prompt, output))
    return rows


def _undecodable_line(path: Path) -> int:
    """The first line of ``path`` that is not UTF-8 (0 if none is found). O(file size); only
    on the error path. A newline byte never occurs inside a UTF-8 sequence, so the lines
    can be decoded one by one."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


_FRACTION = re.compile(r"\.(\d+)")


def _time(path: Path, line: str, column: str, text: str) -> tuple[float, str]:
    """(seconds, ``"seconds"`` or ``"date-time"``) of one time field. Naive date-times are
    UTC, so a trace gives the same arrivals on every machine."""
    s = text.strip()
    kind = "seconds"
    try:
        value = float(s)
    except ValueError:
        kind = "date-time"
        value = math.nan
        # Azure traces carry 7 fractional digits; datetime takes 6 (Python 3.10: exactly 3 or 6)
        iso = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], s, count=1)
        try:
            when = datetime.fromisoformat(iso)
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            value = when.timestamp()
        except (ValueError, OverflowError, OSError):
            pass
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(
            f"trace {str(path)!r} {line}: {column}={text!r} is not a time (seconds >= 0"
            " or a date-time such as 2023-11-16 18:15:46.680)")
    return value, kind


def _count(path: Path, line: str, column: str, text: str, low: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < low:
        raise InvalidArgument(
            f"trace {str(path)!r} {line}: {column}={text!r} must be an integer >= {low}")
    return value


def _lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    value = median * math.exp(sigma * rng.gauss(0.0, 1.0)) if sigma else median
    return min(high, max(low, round(value)))


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidArgument(f"WorkloadSpec.{name}={value!r} must be an integer >= {low}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < math.inf):
        raise InvalidArgument(f"WorkloadSpec.{name}={value!r} must be a finite number > 0")


PRESETS: Mapping[str, WorkloadSpec] = MappingProxyType({
    # Azure LLM inference trace 2023, conversation service: median prompt 1020 tokens, median
    # output 129 tokens (Patel et al., "Splitwise", ISCA 2024, section on the production
    # traces). The sigmas (long tails) are ours, not from the source.
    "chat": WorkloadSpec(),
    # Mooncake (Kimi) trace: mean input 7590 tokens, mean output 182 tokens (Qin et al.,
    # "Mooncake", FAST 2025, trace description). Log-normal medians chosen so the means match
    # at the given sigmas: median = mean / exp(sigma^2 / 2).
    "long-context": WorkloadSpec(
        name="long-context", num_requests=400, rate=1.0,
        prompt_median=7590 / math.exp(0.5 ** 2 / 2), prompt_sigma=0.5, prompt_max=32768,
        output_median=182 / math.exp(0.8 ** 2 / 2), output_sigma=0.8, output_max=1024,
        chunk_size=2048),
})
"""The built-in generators by name (read-only)."""


def get_workload(name: str) -> WorkloadSpec:
    """The preset ``name``; an unknown name raises :class:`InvalidArgument` listing all."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown workload {name!r}; built-in: {', '.join(PRESETS)}, or a CSV trace"
            " path (TIMESTAMP,ContextTokens,GeneratedTokens)") from None
