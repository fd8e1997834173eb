"""``conveyor autoscale-sim``: the HPA on a simulated queue, to choose a target and windows
before deploying (the model: :mod:`conveyor.scaling.sim`).

Added to the CLI by :func:`register`. No ``from __future__ import annotations`` here: typer
reads the command's annotations at definition time.
"""

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..scaling.hpa import DEFAULT_BEHAVIOR
from ..scaling.report import describe, plot, timeline, write_csv
from ..scaling.sim import Result, SimConfig, clock, make_profile, simulate
from .common import (
    SCALE_DOWN_WINDOW,
    SCALE_UP_WINDOW,
    ScaleDownWindow,
    ScaleUpWindow,
    fail,
    out,
    readable_errors,
)


class ProfileName(StrEnum):
    """The load profiles of conveyor.scaling.sim (PROFILES; a test keeps them equal)."""

    steady = "steady"
    spike = "spike"
    sine = "sine"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 100 else f"{value:,.0f} s"


def summary_table(result: Result) -> Table:
    s = result.summary
    mean = s.worker_seconds / len(result.rate)
    table = Table(title="summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("tasks arrived", f"{s.arrived:,}")
    table.add_row("tasks completed", f"{s.completed:,}")
    table.add_row("left in the backlog", f"{s.left:,}")
    table.add_row("peak backlog", f"{s.peak_backlog:,}")
    table.add_row("latency p50", _seconds(s.latency_p50))
    table.add_row("latency p99", _seconds(s.latency_p99))
    table.add_row("latency max", _seconds(s.latency_max))
    table.add_row("most replicas", str(s.max_replicas))
    table.add_row("scale-ups / scale-downs", f"{s.scale_ups} / {s.scale_downs}")
    table.add_row("worker-seconds", f"{s.worker_seconds:,} (mean {mean:.1f} workers)")
    return table


def timeline_table(result: Result, every: int) -> Table:
    table = Table(
        title=f"timeline, every {every} s (replicas at the end; backlog: the highest; "
        "latency: tasks done in the interval)",
        title_justify="left",
    )
    for name in ("time", "load/s", "desired", "ready", "backlog", "p50", "p99"):
        table.add_column(name, justify="right")
    for row in timeline(result, every):
        table.add_row(
            clock(row.start),
            f"{row.rate:,.0f}",
            str(row.desired),
            str(row.ready),
            f"{row.backlog:,}",
            _seconds(row.p50),
            _seconds(row.p99),
        )
    return table


def register(cli: typer.Typer) -> None:
    """Add the ``autoscale-sim`` command to ``cli``."""

    @cli.command("autoscale-sim")
    @readable_errors
    def autoscale_sim(
        profile: Annotated[
            ProfileName, typer.Option("--profile", case_sensitive=False, help="The load.")
        ] = ProfileName.steady,
        rate: Annotated[
            float,
            typer.Option("--rate", help="Load in tasks/s (spike, sine: the base load)."),
        ] = 100.0,
        peak: Annotated[
            float, typer.Option("--peak", help="Spike, sine: the highest load, tasks/s.")
        ] = 1000.0,
        duration: Annotated[int, typer.Option("--duration", help="Seconds to simulate.")] = 1800,
        spike_at: Annotated[
            int, typer.Option("--spike-at", help="Spike: second it starts at.")
        ] = 300,
        spike_for: Annotated[
            int, typer.Option("--spike-for", help="Spike: seconds it lasts.")
        ] = 300,
        period: Annotated[
            int, typer.Option("--period", help="Sine: seconds from base to peak and back.")
        ] = 1200,
        worker_rate: Annotated[
            float,
            typer.Option(
                "--worker-rate",
                help="Tasks/s one busy worker (pod) completes. Worker-rate x service-time is "
                "the tasks a busy worker holds: its slots (processes x concurrency for I/O-bound "
                "steps). The default, 64/s of 1 s, models the Helm chart's default pod: 64 slots "
                "of 1-second I/O-bound steps. Measure yours: conveyor top's completed steps/s "
                "divided by its workers while the queue has a backlog.",
            ),
        ] = 64.0,
        service_time: Annotated[
            float,
            typer.Option(
                "--service-time",
                help="Seconds one task runs (conveyor top's step p50). A busy worker holds "
                "worker-rate x service-time tasks (its slots), which count in the backlog.",
            ),
        ] = 1.0,
        min_replicas: Annotated[int, typer.Option("--min", help="Fewest workers.")] = 3,
        max_replicas: Annotated[int, typer.Option("--max", help="Most workers.")] = 30,
        target: Annotated[
            float | None,
            typer.Option(
                "--target",
                help="Backlog (tasks waiting or running) per worker the HPA aims at "
                "(AverageValue). Default: conveyor.scaling.hpa.default_target of the slots, "
                "80% of round(worker-rate x service-time) (51 for the defaults), as the Helm "
                "chart and conveyor worker --autoscale use.",
                show_default=False,
            ),
        ] = None,
        sync_period: Annotated[
            int, typer.Option("--sync-period", help="Seconds between the HPA's syncs.")
        ] = 15,
        metric_delay: Annotated[
            int,
            typer.Option(
                "--metric-delay",
                help="How old the backlog the HPA reads is, in seconds: up to Prometheus' "
                "scrape interval (30 s in the Helm chart's monitors).",
            ),
        ] = 30,
        startup: Annotated[
            int,
            typer.Option("--startup", help="Seconds from asking for a worker to its serving."),
        ] = 20,
        scale_up_window: ScaleUpWindow = SCALE_UP_WINDOW,
        scale_down_window: ScaleDownWindow = SCALE_DOWN_WINDOW,
        every: Annotated[
            int, typer.Option("--every", help="Seconds per row of the printed timeline.")
        ] = 60,
        png: Annotated[
            Path | None,
            typer.Option("--png", help="Draw replicas, backlog and latency into this PNG."),
        ] = None,
        csv_path: Annotated[
            Path | None, typer.Option("--csv", help="Write the per-second series here.")
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the parameters and summary as JSON.")
        ] = False,
    ) -> None:
        """Simulate the Kubernetes HPA scaling workers on a queue's backlog.

        Under a load profile, print (and plot) replicas, backlog and latency over time. The
        rate policies are Conveyor's shipped ones (DEFAULT_BEHAVIOR); see
        docs/autoscaling.md.
        """
        config = SimConfig(
            profile=make_profile(profile.value, rate, peak, spike_at, spike_for, period),
            worker_rate=worker_rate,
            service_time=service_time,
            duration=duration,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target=target,
            sync_period=sync_period,
            metric_delay=metric_delay,
            startup=startup,
            behavior=DEFAULT_BEHAVIOR.with_windows(scale_up_window, scale_down_window),
        )
        if every < 1:
            fail(f"--every must be 1 s or more: {every}")
        result = simulate(config)
        written = []
        for path, write in ((csv_path, write_csv), (png, plot)):
            if path is None:
                continue
            try:
                write(result, path)
            except OSError as exc:
                fail(f"cannot write {path}: {exc.strerror or exc}")
            written.append(path)

        if as_json:
            report = {"parameters": config.parameters(), "summary": result.summary.as_dict()}
            typer.echo(json.dumps(report, indent=2))
            return
        out.print(describe(config), highlight=False)
        out.print(summary_table(result))
        out.print(timeline_table(result, every))
        for path in written:
            out.print(f"wrote {path}", highlight=False)
