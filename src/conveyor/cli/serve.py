"""``conveyor worker | dev | api | api-key``: the long-running processes, and the keys the
API takes."""

from __future__ import annotations

from typing import Annotated

import typer

from ..scaling.hpa import default_target
from .common import (
    SCALE_DOWN_WINDOW,
    SCALE_UP_WINDOW,
    LogFormat,
    LogLevel,
    LogLevelName,
    Namespace,
    Partitions,
    RedisUrl,
    ScaleDownWindow,
    ScaleUpWindow,
    fail,
    out,
    readable_errors,
    readable_process_errors,
    start_process,
)


@readable_process_errors
def worker(
    app: Annotated[str, typer.Argument(help="The App to run, as MODULE:ATTRIBUTE.")],
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Steps running at once per process.")
    ] = 64,
    processes: Annotated[
        int, typer.Option("--processes", "-p", min=1, help="Worker processes.")
    ] = 1,
    queues: Annotated[
        str | None,
        typer.Option("--queues", "-q", help="Comma-separated queues (default: all of the app's)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Thread pool size for sync steps.")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="Seconds to finish running steps on SIGTERM.")
    ] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve the metrics of all worker processes (/metrics) and the probes "
            "(/healthz, /readyz, /drain) on this port (else CONVEYOR_METRICS_PORT).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics port listens on.")
    ] = "0.0.0.0",
    autoscale: Annotated[
        str | None,
        typer.Option(
            "--autoscale",
            metavar="MIN:MAX",
            help="Grow and shrink the worker processes between MIN and MAX on the backlog "
            "(instead of --processes), as the Kubernetes HPA does.",
        ),
    ] = None,
    autoscale_target: Annotated[
        float | None,
        typer.Option(
            "--autoscale-target",
            min=1,
            help="Backlog (tasks waiting or running) per process to aim at "
            "(default: 80% of --concurrency).",
        ),
    ] = None,
    autoscale_interval: Annotated[
        float,
        typer.Option("--autoscale-interval", min=0.1, help="Seconds between decisions."),
    ] = 15.0,
    scale_up_window: ScaleUpWindow = SCALE_UP_WINDOW,
    scale_down_window: ScaleDownWindow = SCALE_DOWN_WINDOW,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    log_level: LogLevel = LogLevelName.INFO,
    log_format: LogFormat = None,
) -> None:
    """Run workers for an app until SIGTERM or Ctrl-C.

    On SIGTERM or Ctrl-C they drain (running steps finish) and exit 0.
    """
    from ..loader import load_app
    from ..scaling.local import AutoscaleOptions, parse_range
    from ..settings import RuntimeSettings
    from ..worker.process import WorkerOptions, run_workers

    scaling = None
    if autoscale is not None:
        if processes != 1:
            fail("use either --processes or --autoscale, not both")
        low, high = parse_range(autoscale)
        target = autoscale_target or default_target(concurrency)
        scaling = AutoscaleOptions(
            low, high, target, autoscale_interval, scale_up_window, scale_down_window
        )
    start_process(log_level, log_format)
    if metrics_port is None:
        metrics_port = RuntimeSettings().metrics_port
    overrides = {"redis_url": redis_url, "namespace": namespace, "partitions": partitions}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    loaded = load_app(app).configured(**overrides)
    options = WorkerOptions(
        concurrency=concurrency,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        threads=threads,
        drain_timeout=drain_timeout,
        settings=overrides,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        autoscale=scaling,
    )
    raise typer.Exit(run_workers(app, loaded, processes, options, log_level))


@readable_process_errors
def dev(
    app: Annotated[
        str | None,
        typer.Argument(help="The App to run, as MODULE:ATTRIBUTE (default: the bundled demo)."),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 64,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    data_dir: Annotated[
        str, typer.Option("--data-dir", help="Where the embedded Redis keeps its data.")
    ] = ".conveyor",
    log_level: LogLevel = LogLevelName.INFO,
    api_port: Annotated[
        int, typer.Option("--api-port", min=1, max=65535, help="Port of the HTTP API.")
    ] = 8000,
    no_api: Annotated[bool, typer.Option("--no-api", help="Do not serve the HTTP API.")] = False,
) -> None:
    """Everything on one machine: Redis, a worker and the HTTP API.

    Redis is embedded unless REDIS_URL is set; the API has no API keys and listens on
    localhost only.
    """
    from .dev import run_dev

    run_dev(
        app,
        concurrency=concurrency,
        redis_url=redis_url,
        namespace=namespace,
        data_dir=data_dir,
        log_level=log_level,
        api_port=None if no_api else api_port,
    )


@readable_process_errors
def api(
    app: Annotated[str, typer.Argument(help="The App to serve, as MODULE:ATTRIBUTE.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="API processes.")] = 1,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys (logged as a warning).")
    ] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    log_level: LogLevel = LogLevelName.INFO,
    log_format: LogFormat = None,
) -> None:
    """Serve the HTTP API (see docs/api.md).

    API keys come from CONVEYOR_API_KEYS or CONVEYOR_API_KEYS_FILE (make them with
    `conveyor api-key`). Prometheus metrics are at /metrics (all API processes) and the
    queue exporter's at /metrics/queues.
    """
    from ..api.server import run

    start_process(log_level, log_format)
    arguments = {"redis_url": redis_url, "namespace": namespace, "partitions": partitions}
    run(app, host=host, port=port, workers=workers, auth=False if no_auth else None,
        log_level=log_level, arguments=arguments)  # fmt: skip


@readable_errors
def api_key(
    name: Annotated[str, typer.Option("--name", help="Who the key is for (logs, limits).")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: submit, read, admin.")
    ] = "submit,read",
) -> None:
    """Make an API key: print its token and the line to configure.

    The token goes to the caller (it is not stored); the line goes into CONVEYOR_API_KEYS
    or the keys file (it holds only the token's SHA-256).
    """
    from ..api.settings import hash_token, new_token, parse_key

    token = new_token()
    line = f"{name}:{hash_token(token)}:{scopes}"
    parse_key(line)  # a readable error for a bad name or scope
    out.print(f"token:  {token}", highlight=False)
    out.print(f"config: {line}", highlight=False)


def register(cli: typer.Typer) -> None:
    """Add the process commands to ``cli``."""
    from .config import config

    for command in (worker, dev, api, config):
        cli.command()(command)
    cli.command("api-key")(api_key)
