"""Reading a simulated run (:mod:`.sim`): a coarse timeline, the one-line description,
the time series as CSV, and the PNG of replicas, backlog and latency over time (matplotlib,
the ``plot`` extra, imported only when a plot is drawn)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError
from .sim import Result, SimConfig

__all__ = ["CSV_COLUMNS", "TimelineRow", "describe", "plot", "timeline", "write_csv"]


@dataclass(frozen=True)
class TimelineRow:
    """Seconds ``start`` to ``end`` (exclusive) of a run, in one line."""

    start: int
    end: int
    rate: float  # mean arrival rate, tasks/s
    desired: int  # at the end of the interval
    ready: int
    backlog: int  # the highest of the interval
    p50: float | None  # of the tasks completed in the interval
    p99: float | None


def timeline(result: Result, every: int = 60) -> list[TimelineRow]:
    """The run in intervals of ``every`` seconds (the last one may be shorter)."""
    if every < 1:
        raise ConfigurationError(f"the timeline's interval must be 1 s or more: {every}")
    rows = []
    for start in range(0, len(result.rate), every):
        end = min(start + every, len(result.rate))
        rows.append(
            TimelineRow(
                start=start,
                end=end,
                rate=sum(result.arrived[start:end]) / (end - start),
                desired=result.desired[end - 1],
                ready=result.ready[end - 1],
                backlog=max(result.backlog[start:end]),
                p50=result.latency(0.5, start, end),
                p99=result.latency(0.99, start, end),
            )
        )
    return rows


def describe(config: SimConfig) -> str:
    """The run's parameters in one line (the plot's and the terminal's title)."""
    c = config
    target = f"{c.effective_target:g}"
    if c.target is None:
        target += f" (default for {c.slots} slots)"
    return (
        f"{c.profile.describe()}, {c.duration} s simulated; "
        f"worker {c.worker_rate:g} tasks/s of {c.service_time:g} s; "
        f"HPA {c.min_replicas}-{c.max_replicas} workers, target {target}, "
        f"sync {c.sync_period} s, metric delay {c.metric_delay} s, startup {c.startup} s, "
        f"windows up {c.behavior.scale_up.stabilization_window:g} s / "
        f"down {c.behavior.scale_down.stabilization_window:g} s"
    )


CSV_COLUMNS = (
    "t", "rate", "arrived", "completed", "desired", "ready", "backlog", "metric", "p50", "p99"
)  # fmt: skip


def write_csv(result: Result, path: str | Path) -> None:
    """The per-second series (:data:`CSV_COLUMNS`), one row per second; an empty cell where
    there is no value (``metric`` outside syncs, latency in a second that completed none)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for t in result.t:
            counts = (result.arrived[t], result.completed[t], result.desired[t], result.ready[t])
            maybe = (result.metric[t], result.p50[t], result.p99[t])
            cells = ("" if v is None else f"{v:g}" for v in maybe)
            writer.writerow((t, f"{result.rate[t]:g}", *counts, result.backlog[t], *cells))


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def plot(result: Result, path: str | Path) -> None:
    """A PNG of the run: replicas and load, backlog, latency, on one time axis (minutes)."""
    try:
        # the object API with an Agg canvas: no pyplot, so no global backend is changed
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigurationError(
            "plotting needs matplotlib: pip install 'conveyor[plot]'"
        ) from None

    config = result.config
    minutes = [t / 60 for t in result.t]
    fig = Figure(figsize=(10, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    replicas, backlog, latency = fig.subplots(3, 1, sharex=True)

    replicas.step(minutes, result.desired, where="post", label="desired (spec.replicas)")
    replicas.step(minutes, result.ready, where="post", label="ready")
    replicas.set_ylabel("workers")
    replicas.set_ylim(bottom=0)
    load = replicas.twinx()
    load.plot(minutes, result.rate, color="0.55", linewidth=1, label="load (tasks/s)")
    load.set_ylabel("load (tasks/s)")
    load.set_ylim(bottom=0)
    handles = replicas.get_legend_handles_labels()[0] + load.get_legend_handles_labels()[0]
    replicas.legend(handles=handles, loc="upper left", fontsize="small")

    backlog.plot(minutes, result.backlog, label="backlog (waiting + running)")
    backlog.step(
        minutes,
        [d * config.effective_target for d in result.desired],
        where="post",
        linestyle="--",
        linewidth=1,
        label="target x desired",
    )
    syncs = [t for t in result.t if result.metric[t] is not None]
    backlog.plot(
        [t / 60 for t in syncs],
        [result.metric[t] for t in syncs],
        ".",
        markersize=3,
        label=f"read by the HPA ({config.metric_delay} s old)",
    )
    backlog.set_ylabel("tasks")
    backlog.set_ylim(bottom=0)
    backlog.legend(loc="upper left", fontsize="small")

    latency.plot(minutes, _nan(result.p50), label="p50 of the tasks done that second")
    latency.plot(minutes, _nan(result.p99), label="p99")
    latency.set_ylabel("latency (s)")
    latency.set_ylim(bottom=0)
    latency.set_xlabel("minutes")
    latency.legend(loc="upper left", fontsize="small")

    for axes in (replicas, backlog, latency):
        axes.grid(True, alpha=0.3)
    parts = describe(config).split("; ")  # the load; the worker; the HPA: two lines
    fig.suptitle(f"{'; '.join(parts[:2])}\n{'; '.join(parts[2:])}", fontsize="medium")
    fig.savefig(path, dpi=100, format="png")
