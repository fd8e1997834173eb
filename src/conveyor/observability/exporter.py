"""``conveyor exporter``: a small HTTP server of the queue gauges, for Prometheus (and an
HPA through prometheus-adapter) to scrape. Stateless: run one replica per namespace, or
mount :func:`queue_metrics_response` in the API instead."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..settings import Settings
from ..storage.connection import connect
from ..storage.store import Store
from .queues import QueueExporter

__all__ = ["create_exporter_app", "queue_metrics_response", "run_exporter"]


async def queue_metrics_response(exporter: QueueExporter) -> Response:
    """A scrape of ``exporter`` as an HTTP response, always a 200: while Redis is unreachable
    it says ``conveyor_redis_up 0``, which names the cause, rather than failing the scrape."""
    return Response(await exporter.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_exporter_app(settings: Settings, queues: Sequence[str] | None = None) -> Starlette:
    """The exporter's ASGI app: ``GET /metrics`` and ``GET /healthz``. Redis is connected to
    on the first scrape, so the server starts (and answers ``conveyor_redis_up 0``) while
    Redis is down; the lifespan closes the connection."""

    # made here, not in the lifespan: a bad URL fails before the server starts, readably
    redis = connect(settings.redis_url, max_connections=4)
    exporter = QueueExporter(Store(redis, settings), queues)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await redis.aclose()

    async def metrics(request: Request) -> Response:
        return await queue_metrics_response(exporter)

    async def healthz(request: Request) -> Response:
        # the process is alive; whether Redis is, is a metric (restarting would not help)
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/healthz", healthz)], lifespan=lifespan
    )


def run_exporter(
    settings: Settings,
    *,
    host: str,
    port: int,
    queues: Sequence[str] | None = None,
    log_level: str = "info",
) -> None:
    """Serve the exporter with uvicorn until SIGTERM or Ctrl-C."""
    import uvicorn

    uvicorn.run(
        create_exporter_app(settings, queues),
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,  # a line per scrape says nothing
        log_config=None,  # uvicorn's lines go through ours (JSON or console, as set)
    )
