"""The API's own telemetry: Prometheus request metrics by route template (pure ASGI, so the
FastSubmit fast path is measured too) and, when tracing is on, OpenTelemetry's ASGI
middleware, whose server span (named after the route template) is the root of the trace of
every workflow a request starts."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability.metrics import HTTP_DURATION, HTTP_REQUESTS
from ..observability.tracing import TRACING

log = logging.getLogger("conveyor.api")

ROUTE_KEY = "conveyor.route"  # set by handlers served before routing (FastSubmit)
UNMATCHED = "unmatched"  # one series for every path no route serves: bounded cardinality


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/workflows/{name}``), never the raw path."""
    template = scope.get(ROUTE_KEY)
    if template is None:
        template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else UNMATCHED


class HttpMetrics:
    """Counts requests and times them (to the end of the response body) by method, route
    template and status. Event streams are counted, not timed: their length is the client's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        streaming = False

        async def send_and_watch(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                if TRACING.enabled:  # routed by now; the span ends with the response
                    name_span(scope["method"], route_template(scope))
                for name, value in message.get("headers", ()):
                    if name == b"content-type" and value.startswith(b"text/event-stream"):
                        streaming = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            key = (scope["method"], route_template(scope), str(status))
            series = self._series.get(key)
            if series is None:
                series = (HTTP_REQUESTS.labels(*key), HTTP_DURATION.labels(*key))
                self._series[key] = series
            series[0].inc()
            if not streaming:
                series[1].observe(time.perf_counter() - began)


def name_span(method: str, template: str) -> None:
    """Name the request's server span after its route template, known only once routed
    (OpenTelemetry's ASGI middleware starts the span before)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.update_name(f"{method} {template}")
        span.set_attribute("http.route", template)


def add_tracing(api: FastAPI) -> bool:
    """Put OpenTelemetry's ASGI middleware outermost when tracing is on and the
    instrumentation is installed (the ``otel`` extra). Returns whether it did."""
    if not TRACING.enabled:
        return False
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError:
        log.warning(
            "tracing is on but opentelemetry-instrumentation-asgi is not installed "
            "(pip install 'conveyor[otel]'): API requests get no spans"
        )
        return False
    api.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls="healthz,readyz,metrics",
        exclude_spans=["receive", "send"],
    )
    return True
