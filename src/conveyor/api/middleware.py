"""Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): gives every request a
correlation id (``X-Request-ID``: taken from the request or generated, returned on the
response), refuses bodies over the size limit (413) before the app reads them, bounds how
long a request may wait for its answer (503 past the request timeout), and counts and times
requests (telemetry.py)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import bind_request, unbind
from ..observability.metrics import HttpMetrics
from ..observability.tracing import TRACING
from .problems import problem_response
from .telemetry import STREAMING, name_span, route_template

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
log = logging.getLogger("conveyor.api")

#: Default of CONVEYOR_API_REQUEST_TIMEOUT: seconds a request may wait for its answer to start.
REQUEST_TIMEOUT = 10.0


class BodyTooLarge(Exception):
    pass


def long_poll_seconds(scope: Scope, max_wait: float) -> float:
    """The ``?wait=`` of a long poll of ``/result`` (capped as the route caps it), else 0."""
    if not scope.get("path", "").endswith("/result"):
        return 0.0
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        wait = float(query.get("wait", ["0"])[0])
    except ValueError:
        return 0.0
    return min(max(wait, 0.0), max_wait) if wait == wait else 0.0  # NaN: the route refuses it


class RequestHygiene:
    """One ASGI layer for what every request needs (each layer costs a few microseconds):
    its correlation id, the body limit, its deadline, its log context, its metrics (by route
    template and status) and, when tracing, the name of its server span.

    The deadline: a request whose answer has not started ``timeout`` seconds after it came in
    (plus its ``?wait=`` for a long poll) is answered 503 ``unavailable`` and its handler
    cancelled. Redis calls have no timeout of their own (a frozen Redis keeps a connection
    open and silent), so without it a request would wait for as long as Redis does. What
    the handler did before is not undone: a start may have happened, which is why the answer
    says to retry with the same Idempotency-Key. An answer that has started (an event
    stream) is not cut. ``timeout`` None or 0: no deadline."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        metrics: HttpMetrics | None = None,
        timeout: float | None = None,
        max_wait: float = 60.0,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics or HttpMetrics()
        self.timeout = timeout or None
        self.max_wait = max_wait

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
            if self.timeout is None:
                await self._serve(scope, receive, send_with_id, headers)
            else:
                await self._serve_in_time(scope, receive, send_with_id, headers)
        finally:
            unbind(token)
            seconds = None if streaming else time.perf_counter() - began
            self.metrics.record(scope["method"], route_template(scope), status, seconds)

    async def _serve_in_time(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        assert self.timeout is not None
        limit = self.timeout + long_poll_seconds(scope, self.max_wait)
        answered = reading = False
        deadline = asyncio.timeout(limit)

        async def receive_all() -> Message:
            nonlocal reading
            reading = True  # a deadline that passes now waited for the client, not Redis
            message = await receive()
            reading = False
            return message

        async def send_started(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                deadline.reschedule(None)  # a started answer (an event stream) runs on
            await send(message)

        try:
            async with deadline:
                await self._serve(scope, receive_all, send_started, headers)
        except TimeoutError:
            if answered or not deadline.expired():
                raise
            await self._late(scope, receive, send, limit, reading)

    async def _late(
        self, scope: Scope, receive: Receive, send: Send, limit: float, reading: bool
    ) -> None:
        method, path = scope["method"], scope.get("path", "")
        if reading:
            response = problem_response(
                408, f"the request body did not arrive within {limit:g}s",
                kind="request-timeout", instance=path,
            )  # fmt: skip
        else:
            log.warning("no answer within %gs to %s %s (Redis slow?)", limit, method, path)
            response = problem_response(
                503, f"no answer from Redis within {limit:g}s; the request may or may not have "
                "taken effect: retry it (a start with the same Idempotency-Key)",
                kind="unavailable", headers={"Retry-After": "5"}, instance=path, retry_after=5,
            )  # fmt: skip
        await response(scope, receive, send)

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
