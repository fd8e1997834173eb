"""The API's own telemetry: request metrics by route template (recorded by RequestHygiene,
so the FastSubmit fast path is measured too) and, when tracing is on, OpenTelemetry's ASGI
middleware, whose server span (named after the route template) is the root of the trace of
every workflow a request starts."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from starlette.types import Scope

from ..observability.tracing import TRACING

log = logging.getLogger("conveyor.api")

ROUTE_KEY = "conveyor.route"  # set by handlers served before routing (FastSubmit)
STREAMING = "conveyor.streaming"  # set by event-stream routes: counted, not timed
UNMATCHED = "unmatched"  # one series for every path no route serves: bounded cardinality


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/workflows/{name}``), never the raw path."""
    template = scope.get(ROUTE_KEY)
    if template is None:
        template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else UNMATCHED


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


def native_telemetry_off() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry telemetry (FastAPI 0.160+) checks the providers on every
    request; Conveyor brings its own metrics and spans (and FastAPI defers to OpenTelemetry's
    ASGI middleware when it is there), so it is turned off where FastAPI has it."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
