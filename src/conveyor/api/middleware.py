"""Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): gives every request a
correlation id (``X-Request-ID``: taken from the request or generated, returned on the
response) and refuses bodies over the size limit (413) before the app reads them."""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import bind_request, unbind
from .problems import problem_response

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(Exception):
    pass


class RequestHygiene:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            await send(message)

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            response = problem_response(
                413, f"request body over {self.max_body} bytes", kind="payload-too-large",
                instance=scope.get("path"),
            )  # fmt: skip
            await response(scope, receive, send_with_id)
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

        token = bind_request(request_id)  # log lines of this request carry its id
        try:
            await self.app(scope, receive_limited, send_with_id)
        except BodyTooLarge:
            response = problem_response(
                413, f"request body over {self.max_body} bytes", kind="payload-too-large",
                instance=scope.get("path"),
            )  # fmt: skip
            await response(scope, receive, send_with_id)
        finally:
            unbind(token)


def request_id_of(scope_state: Any) -> str:
    return str(scope_state.get("request_id", ""))
