"""Run benchmark variants interleaved, so that a ratio between them compares like with like.

On a shared, noisy machine the speed of the machine drifts over seconds (other processes,
frequency, caches). Timing variant A for a minute and then variant B for a minute puts that
drift into the A/B ratio. Here every repeat runs one block of every variant, back to back,
and the order is flipped every repeat (A B C, C B A, A B C, ...: ABBA for two variants), so
each variant sees the same machine on average and a ratio is taken between blocks that ran
seconds apart. The figures:

* per variant: the median over repeats of a block's sample (seconds per unit of work);
* per pair: the median of the *paired* ratios (A's block over B's block of the same repeat)
  and their spread (min, quartiles, max), which says how far a single ratio can be trusted.

A variant is a callable that runs one block. If it returns ``None`` its time is the sample;
if it returns a number, that number is the sample (for a block that does untimed setup and
times its own hot part with ``CLOCKS[clock]``, or reports a time per unit). ``per`` divides
a timed block's time into a time per unit of work.

Clocks: ``wall`` (``time.perf_counter``) or ``cpu`` (``time.thread_time``, the CPU time of
the calling thread). On a shared 2-core machine with a load above 2, wall time also counts
the time the benchmark waits for a core; the thread's CPU time does not, so ``cpu`` is the
better measure of single-threaded host code there (still not immune: other processes evict
caches). Timing asynchronous device work (CUDA) needs ``wall`` and a ``sync``.

Used by every benchmark in this folder that compares variants; benchmarks are never timed
assertions in the tests.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Variant = Callable[[], "float | None"]
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


@dataclass(frozen=True)
class RatioStats:
    """Paired ratios ``a / b`` over the repeats (one ratio per repeat)."""

    a: str
    b: str
    ratios: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def quartiles(self) -> tuple[float, float]:
        if len(self.ratios) < 2:
            return self.ratios[0], self.ratios[0]
        q = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return q[0], q[2]

    def to_json(self) -> dict[str, Any]:
        q1, q3 = self.quartiles()
        return {"a": self.a, "b": self.b, "median": self.median, "min": min(self.ratios),
                "q1": q1, "q3": q3, "max": max(self.ratios), "n": len(self.ratios)}

    def __str__(self) -> str:
        q1, q3 = self.quartiles()
        return (f"{self.a}/{self.b} = {self.median:.3g} (IQR {q1:.3g}-{q3:.3g}, "
                f"min {min(self.ratios):.3g}, max {max(self.ratios):.3g}, "
                f"{len(self.ratios)} pairs)")


@dataclass
class Interleaved:
    """Samples of each variant, one per repeat, in the order of ``names``."""

    names: tuple[str, ...]
    samples: dict[str, list[float]] = field(default_factory=dict)
    orders: list[tuple[str, ...]] = field(default_factory=list)
    clock: str = "wall"

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def spread(self, name: str) -> tuple[float, float]:
        s = self.samples[name]
        return min(s), max(s)

    def ratio(self, a: str, b: str) -> RatioStats:
        """Paired ratios of ``a``'s sample over ``b``'s, repeat by repeat."""
        return RatioStats(a, b, tuple(x / y for x, y in
                                      zip(self.samples[a], self.samples[b], strict=True)))

    def to_json(self, pairs: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        return {"order": "interleaved, order flipped every repeat",
                "repeats": len(self.orders), "clock": self.clock,
                "median": {n: self.median(n) for n in self.names},
                "min": {n: self.spread(n)[0] for n in self.names},
                "max": {n: self.spread(n)[1] for n in self.names},
                "ratios": [self.ratio(a, b).to_json() for a, b in pairs]}


def run_interleaved(variants: Mapping[str, Variant], repeats: int, *, warmup: int = 1,
                    per: float | Mapping[str, float] = 1.0, gc_off: bool = False,
                    sync: Callable[[], None] | None = None,
                    clock: str = "wall") -> Interleaved:
    """Run each variant's block ``repeats`` times, interleaved, order flipped every repeat.

    Args:
        variants: name -> callable running one block (see the module docstring).
        repeats: samples per variant (at least 1; use an even number for a balanced ABBA).
        warmup: untimed rounds of every variant first (same flipping order).
        per: units of work per block (one number, or one per variant): a timed block's
            sample is its time divided by this. Ignored for a variant that returns its
            own sample.
        gc_off: collect garbage before each block and keep the collector off during it (as
            ``timeit`` does: the operation is timed, not a collection it happens to trigger).
        sync: called before and after each timed block (e.g. ``torch.cuda.synchronize``).
        clock: ``wall`` or ``cpu`` (see the module docstring); self-timing variants should
            use ``CLOCKS[clock]`` too.

    Returns:
        The samples and the order each repeat ran in.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    names = tuple(variants)
    units = {n: (per[n] if isinstance(per, Mapping) else per) for n in names}
    now = CLOCKS[clock]
    out = Interleaved(names, {n: [] for n in names}, clock=clock)
    for r in range(-warmup, repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            sample = _one_block(variants[name], gc_off, sync, now)
            if r >= 0:
                if sample[1] is None:
                    out.samples[name].append(sample[0] / units[name])
                else:
                    out.samples[name].append(float(sample[1]))
        if r >= 0:
            out.orders.append(order)
    return out


def _one_block(fn: Variant, gc_off: bool, sync: Callable[[], None] | None,
               now: Callable[[], float]) -> tuple[float, float | None]:
    if gc_off:
        gc.collect()
        gc.disable()
    try:
        if sync is not None:
            sync()
        t0 = now()
        own = fn()
        if sync is not None:
            sync()
        elapsed = now() - t0
    finally:
        if gc_off:
            gc.enable()
    return elapsed, own


def machine_info() -> dict[str, Any]:
    """Machine, interpreter and code identity to store with every result."""
    import os
    import platform
    import subprocess
    from datetime import datetime, timezone

    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str, cwd: str = here) -> str:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "benchmarks_commit": git("rev-parse", "--short", "HEAD").strip(),
        "nproc": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import kvspec

        src = os.path.dirname(os.path.dirname(os.path.abspath(kvspec.__file__)))
    except ImportError:
        src = ""
    info["kvspec_from"] = src
    # the code under test: the commit of the checkout kvspec is imported from, and its
    # uncommitted files; None when kvspec comes from outside a git checkout (e.g. a
    # snapshot installed with `pip install --target`: name its commit yourself)
    top = git("rev-parse", "--show-toplevel", cwd=src).strip() if src else ""
    info["kvspec_commit"] = git("rev-parse", "--short", "HEAD", cwd=src).strip() if top else None
    info["kvspec_uncommitted"] = (sorted(line[3:] for line in
                                         git("status", "--porcelain", cwd=src).splitlines())
                                  if top else None)
    try:
        with open(os.path.join(src, "KVSPEC_COMMIT")) as f:   # written next to a snapshot
            info["kvspec_commit"] = f.read().strip()
    except OSError:
        pass
    return info
