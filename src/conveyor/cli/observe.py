"""``conveyor exporter`` and ``conveyor top``: the queue exporter and the live terminal view.

Added to the CLI by :func:`register` (also on a bare ``typer.Typer``, as the exporter's
tests do). No ``from __future__ import annotations`` here: typer reads the commands'
annotations, which are evaluated where they are written, inside :func:`register`.
"""

import asyncio
from typing import Annotated

import typer

from .common import (
    LogFormat,
    LogLevel,
    LogLevelName,
    Namespace,
    Partitions,
    RedisUrl,
    out,
    readable_errors,
    settings_from,
)

#: The exporter's port unless --port says otherwise.
EXPORTER_PORT = 9709

QueueOption = Annotated[
    list[str] | None,
    typer.Option(
        "--queue", "-q", help="A queue to show (repeat it; default: every registered queue)."
    ),
]


def register(cli: typer.Typer) -> None:
    """Add the ``exporter`` and ``top`` commands to ``cli``."""

    @cli.command()
    @readable_errors
    def exporter(
        host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "0.0.0.0",
        port: Annotated[int, typer.Option("--port", min=0, max=65535)] = EXPORTER_PORT,
        queue: QueueOption = None,
        redis_url: RedisUrl = None,
        namespace: Namespace = None,
        partitions: Partitions = None,
        log_level: LogLevel = LogLevelName.INFO,
        log_format: LogFormat = None,
    ) -> None:
        """Serve the queue gauges for Prometheus at /metrics.

        Backlog, lag, pending, oldest age and delayed tasks per queue and partition, dead
        letters, live workers, and redis_stream_pending for autoscaling; /healthz too.
        """
        from ..logs import setup_logging
        from ..observability.exporter import run_exporter

        settings = settings_from(redis_url, namespace, partitions)
        setup_logging(log_level, log_format)
        run_exporter(settings, host=host, port=port, queues=queue or None, log_level=log_level)

    @cli.command()
    @readable_errors
    def top(
        interval: Annotated[
            float, typer.Option("--interval", "-n", min=0.1, help="Seconds between refreshes.")
        ] = 1.0,
        once: Annotated[
            bool, typer.Option("--once", help="Print one frame and exit (for scripts).")
        ] = False,
        queue: QueueOption = None,
        redis_url: RedisUrl = None,
        namespace: Namespace = None,
        partitions: Partitions = None,
    ) -> None:
        """A live view of queues, throughput, latency, workers and dead letters.

        Refreshed every --interval seconds until Ctrl-C (or once, with --once).
        """
        from ..observability.top import run_top

        settings = settings_from(redis_url, namespace, partitions)
        try:
            asyncio.run(run_top(settings, queue or None, interval=interval, once=once, console=out))
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
