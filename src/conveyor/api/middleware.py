"""Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): gives every request a
correlation id (``X-Request-ID``: taken from the request or generated, returned on the
response), refuses bodies over the size limit (413) before the app reads them, and counts
and times requests (telemetry.py)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import bind_request, unbind
from ..observability.metrics import HttpMetrics
from ..observability.tracing import TRACING
from .problems import problem_response
from .telemetry import STREAMING, name_span, route_template

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(Exception):
    pass


class RequestHygiene:
    """One ASGI layer for what every request needs (each layer costs a few microseconds):
    its correlation id, the body limit, its log context, its metrics (by route template and
    status) and, when tracing, the name of its server span."""

    def __init__(self, app: ASGIApp, max_body: int, metrics: HttpMetrics | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics or HttpMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode()
        status, streaming = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
                status = message["status"]
                streaming = scope.get(STREAMING, False)
                if TRACING.enabled:  # routed by now; the span ends with the response
                    name_span(scope["method"], route_template(scope))
            await send(message)

        token = bind_request(request_id)  # log lines of this request carry its id
        try:
            await self._serve(scope, receive, send_with_id, headers)
        finally:
            unbind(token)
            seconds = None if streaming else time.perf_counter() - began
            self.metrics.record(scope["method"], route_template(scope), status, seconds)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, receive_limited, send)
        except BodyTooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413, f"request body over {self.max_body} bytes", kind="payload-too-large",
            instance=scope.get("path"),
        )  # fmt: skip
        await response(scope, receive, send)


def request_id_of(scope_state: Any) -> str:
    return str(scope_state.get("request_id", ""))
