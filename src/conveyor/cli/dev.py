"""``conveyor dev``: an embedded Redis (when no REDIS_URL is set), a worker and the HTTP API
(without API keys, on localhost), all in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console

from ..app import App
from ..embedded import EmbeddedRedis, free_port
from ..loader import load_app
from ..observability.tracing import setup_tracing
from ..settings import LogSettings, Settings
from ..worker.process import WorkerOptions, exit_past_stuck_steps, run_async, serve
from .common import start_process

console = Console(stderr=True)
DEV_PORT = 6399
API_PORT = 8000


def _port_or_free(port: int) -> int:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
        return port
    except OSError:
        return free_port()


def embedded_redis(data_dir: str | Path) -> EmbeddedRedis:
    """The dev Redis: data and AOF under ``data_dir``, on port 6399 when free."""
    port = _port_or_free(DEV_PORT)
    return EmbeddedRedis(Path(data_dir) / "redis", port=port, appendonly=True)


def run_dev(
    app_ref: str | None,
    *,
    concurrency: int,
    redis_url: str | None,
    namespace: str | None,
    data_dir: str,
    log_level: str,
    api_port: int | None = API_PORT,
) -> None:
    # readable lines unless CONVEYOR_LOG_FORMAT says otherwise: dev runs in a terminal,
    # often piped through tools
    chosen = "log_format" in LogSettings().model_fields_set
    start_process(log_level, None if chosen else "console")
    setup_tracing("conveyor-dev")  # when OTEL_* variables ask for it
    server = None
    from_env = Settings()
    if redis_url is None and "redis_url" in from_env.model_fields_set:  # REDIS_URL is set
        redis_url = from_env.redis_url
    if not redis_url:
        server = embedded_redis(data_dir).start()
        redis_url = server.url
        console.print(
            f"embedded Redis {server.version} at [bold]{redis_url}[/] (data in {server.data_dir})"
        )
    app = load_app(app_ref or "conveyor.demo:app").configured(
        redis_url=redis_url, namespace=namespace
    )
    first = next(iter(app.workflows))
    port = _port_or_free(api_port) if api_port is not None else None

    def ready() -> None:  # once the worker has registered the workflows: they can start
        console.print(
            f"workflows: {', '.join(app.workflows)}\n"
            f"in another terminal:  export REDIS_URL={redis_url}\n"
            f"                      conveyor start {first} --input '\"world\"' --wait",
            soft_wrap=True,
        )
        if port is not None:
            console.print(
                f"HTTP API (no API keys, localhost only) at [bold]http://127.0.0.1:{port}[/] "
                f"(docs: http://127.0.0.1:{port}/docs)\n"
                f"  curl -X POST http://127.0.0.1:{port}/v1/workflows/{first} "
                "-H 'content-type: application/json' -d '\"world\"'",
                soft_wrap=True,
            )
        console.print("Ctrl-C stops everything.")

    os.environ["REDIS_URL"] = redis_url
    try:
        run_async(serve_with_api(app, WorkerOptions(concurrency=concurrency), port, ready))
    finally:
        if server is not None:
            server.stop()  # graceful: Redis flushes its AOF
            logging.getLogger("conveyor").info("embedded Redis stopped")
    exit_past_stuck_steps()


async def serve_with_api(
    app: App, options: WorkerOptions, port: int | None, ready: Callable[[], None]
) -> None:
    """The worker, and the HTTP API beside it on the same event loop; the worker's signal
    handling (drain on Ctrl-C) stops both."""
    if port is None:
        await serve(app, options, ready)
        return
    import uvicorn

    from ..api import ApiSettings, create_app

    class EmbeddedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the worker owns SIGINT/SIGTERM

    config = uvicorn.Config(
        create_app(app, ApiSettings(auth=False)), host="127.0.0.1", port=port,
        log_level="warning", access_log=False,
    )  # fmt: skip
    server = EmbeddedServer(config)
    api = asyncio.create_task(server.serve(), name="conveyor-api")
    try:
        await serve(app, options, ready)
    finally:
        server.should_exit = True
        await api
