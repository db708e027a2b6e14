"""PNG plots of a :class:`SimulationResult` with matplotlib (imported here only, on first use,
with the non-interactive Agg backend; ``pip install kvspec[plot]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvspec.errors import InvalidArgument

from .runner import SimulationResult

PLOTS = ("idle_pages", "free_pages", "ttft", "summary")
"""The plots :func:`write_plots` draws, one PNG each: ``<name>.png``."""


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend. Callers that write plots
    after a long run call it first, so that a missing matplotlib fails before the run.

    Raises:
        InvalidArgument: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise InvalidArgument(
            "plots need matplotlib: pip install 'kvspec[plot]' (or pip install matplotlib),"
            " or run without plots") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(result: SimulationResult, out: Path, dpi: int = 80) -> list[Path]:
    """Draw every plot of :data:`PLOTS` into ``out`` (created); returns the PNG paths.

    x axes are simulated seconds (the cost model); a policy that stopped early ends there.
    Every title names the setup (:meth:`SimulationResult.title`: workload and its ``--set``
    overrides, delay batching, GPU and host pages).
    Cost: O(iterations x policies) points, a second or two per plot at 100k iterations.

    Raises:
        InvalidArgument: matplotlib is not installed.
    """
    plt = require_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    title = result.title()
    paths = []
    for name, draw in (("idle_pages", _idle), ("free_pages", _free), ("ttft", _ttft),
                       ("summary", _summary)):
        fig = draw(plt, result)
        fig.suptitle(f"{_TITLES[name]}\n{title}", fontsize=9)
        fig.tight_layout(rect=(0, 0.06 if name == "summary" else 0, 1, 1))
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths


_TITLES = {
    "idle_pages": "GPU pages held by deferred or skipped context requests",
    "free_pages": "Free GPU pages",
    "ttft": "Time to first token (CDF over all requests; a run that stopped ends below 1)",
    "summary": "Per policy: idle pages, TTFT and preemptions",
}


BINS = 150
STYLES = ("-", "--", ":", "-.")
"""Line styles cycled over the policies, so that policies with equal series stay visible."""
"""Time series with more iterations than this are averaged over this many equal time bins."""


def _binned(xs: list[float], ys: list[float], end: float) -> tuple[list[float], list[float]]:
    """Time-weighted means of the step function (xs[i], ys[i]) over BINS equal bins of
    [0, end]; each iteration's value holds from the previous iteration's end to its own."""
    width = end / BINS
    sums = [0.0] * BINS
    prev = 0.0
    for x, y in zip(xs, ys):
        i = min(BINS - 1, int(prev / width))
        a = prev
        while a < x and i < BINS:
            b = min(x, (i + 1) * width)
            if b > a:
                sums[i] += y * (b - a)
            a = b
            i += 1
        prev = x
    return [(i + 0.5) * width for i in range(BINS)], [v / width for v in sums]


def _series(plt: Any, result: SimulationResult, field: str, what: str) -> Any:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    end = max((r.iterations[-1].time_s for r in result.runs if r.iterations), default=0.0)
    binned = any(len(r.iterations) > BINS for r in result.runs) and end > 0
    for i, r in enumerate(result.runs):
        style = STYLES[i % len(STYLES)]
        xs = [m.time_s for m in r.iterations]
        ys = [float(getattr(m, field)) for m in r.iterations]
        label = r.policy + ("" if r.summary.stop is None else
                            f" (stopped: {r.summary.stop.invariant or r.summary.stop.kind})")
        if binned and xs:
            bx, by = _binned(xs, ys, end)
            keep = [i for i, x in enumerate(bx) if x <= xs[-1]]
            ax.plot([bx[k] for k in keep], [by[k] for k in keep], label=label, linewidth=1.2,
                    linestyle=style)
        else:
            ax.step(xs, ys, where="post", label=label, linewidth=1, linestyle=style)
    total = result.ranks * result.config.num_gpu_pages
    how = f"mean over {end / BINS:.3g} s bins" if binned else "per iteration"
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(f"{what} ({how}; pool {total:,})", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _idle(plt: Any, result: SimulationResult) -> Any:
    return _series(plt, result, "idle_pages", "idle GPU pages")


def _free(plt: Any, result: SimulationResult) -> Any:
    return _series(plt, result, "free_pages", "free GPU pages")


def _ttft(plt: Any, result: SimulationResult) -> Any:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, r in enumerate(result.runs):
        xs = sorted(m.ttft_s for m in r.requests if m.ttft_s is not None)
        if not xs:
            continue
        ys = [(i + 1) / len(r.requests) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{r.policy} (p50 {r.summary.ttft_p50_s:.2f} s,"
                f" p99 {r.summary.ttft_p99_s:.2f} s)", linewidth=1,
                linestyle=STYLES[i % len(STYLES)])
    ax.set_xlabel("time to first token (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _summary(plt: Any, result: SimulationResult) -> Any:
    from matplotlib.ticker import StrMethodFormatter

    fig, axes = plt.subplots(1, 4, figsize=(11, 3.8))
    names = [r.policy + ("" if r.summary.stop is None else
                         f" (stopped: {r.summary.stop.invariant or r.summary.stop.kind})")
             for r in result.runs]
    colors = [f"C{i}" for i in range(len(names))]
    runs = result.runs
    panels: tuple[tuple[str, str, list[float] | None], ...] = (
        ("idle page-seconds", "page x s", [r.summary.idle_page_seconds for r in runs]),
        ("unwritten idle page-iterations", "page x iteration",
         [float(r.summary.idle_unwritten_page_iterations) for r in runs]),
        ("TTFT p50 / p99", "s", None),
        ("preemptions", "suspensions + recompute pauses",
         [float(r.summary.preemptions) for r in runs]))
    for ax, (label, unit, values) in zip(axes, panels):
        if values is None:
            n = len(names)
            w = 0.8 / n
            for i, r in enumerate(runs):
                ys = [r.summary.ttft_p50_s or 0.0, r.summary.ttft_p99_s or 0.0]
                bars = ax.bar([j + (i - (n - 1) / 2) * w for j in range(2)], ys, w,
                              color=colors[i], label=r.policy)
                ax.bar_label(bars, fmt="{:.1f}", fontsize=6)
            ax.set_xticks([0, 1], ["p50", "p99"])
        else:
            bars = ax.bar(range(len(names)), values, color=colors)
            ax.bar_label(bars, fmt="{:,.0f}", fontsize=6)
            ax.set_xticks(range(len(names)), [""] * len(names))
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}" if values else "{x:g}"))
        ax.set_ylim(bottom=0, top=None if any(v for v in (values or [1])) else 1)
        ax.grid(alpha=0.3, axis="y")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8)
    return fig
