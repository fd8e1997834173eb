"""``conveyor dev``: an embedded Redis (when no REDIS_URL is set) plus a worker, one process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rich.console import Console

from ..embedded import EmbeddedRedis, free_port
from ..loader import load_app
from ..logs import setup_logging
from ..worker.process import WorkerOptions, exit_past_stuck_steps, run_async, serve

console = Console(stderr=True)
DEV_PORT = 6399


def embedded_redis(data_dir: str | Path) -> EmbeddedRedis:
    """The dev Redis: data and AOF under ``data_dir``, on port 6399 when free."""
    try:
        port = DEV_PORT
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    except OSError:
        port = free_port()
    return EmbeddedRedis(Path(data_dir) / "redis", port=port, appendonly=True)


def run_dev(
    app_ref: str | None,
    *,
    concurrency: int,
    redis_url: str | None,
    namespace: str | None,
    data_dir: str,
    log_level: str,
) -> None:
    setup_logging(log_level)
    server = None
    if not redis_url:
        server = embedded_redis(data_dir).start()
        redis_url = server.url
        console.print(
            f"embedded Redis {server.version} at [bold]{redis_url}[/] (data in {server.data_dir})"
        )
    app = load_app(app_ref or "conveyor.demo:app")
    app.settings = app.settings.replace(redis_url=redis_url, namespace=namespace)
    first = next(iter(app.workflows))
    console.print(
        f"workflows: {', '.join(app.workflows)}\n"
        f"in another terminal:  export REDIS_URL={redis_url}\n"
        f"                      conveyor start {first} --input '\"world\"' --wait\n"
        "Ctrl-C stops everything."
    )
    os.environ["REDIS_URL"] = redis_url
    try:
        run_async(serve(app, WorkerOptions(concurrency=concurrency)))
    finally:
        if server is not None:
            server.stop()  # graceful: Redis flushes its AOF
            logging.getLogger("conveyor").info("embedded Redis stopped")
    exit_past_stuck_steps()
