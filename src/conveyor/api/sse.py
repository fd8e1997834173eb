"""Server-Sent Events of one workflow: every step attempt (its history record), everything
its steps emit (``ctx.emit``), then its end. Event ids are the entry ids of the workflow's
event stream in Redis, so a client that reconnects with ``Last-Event-ID`` resumes right after
the last event it saw: nothing lost, nothing repeated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse

from ..storage.queries import Queries

#: How long one read waits for an event before a keep-alive comment goes out, ms.
KEEPALIVE_MS = 15_000


def _frame(event_id: str, kind: str, data: bytes) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), data)


def _data(fields: dict[str, Any], redact: bool) -> tuple[str, bytes]:
    kind = fields.get("type", b"").decode() or "message"
    if kind == "step":
        record = fields["data"]  # the history record, already JSON
        if redact and b'"traceback":"' in record:  # tracebacks only for admin keys
            parsed = orjson.loads(record)
            parsed["error"]["traceback"] = None
            record = orjson.dumps(parsed)
        return kind, record
    if kind == "emit":
        body = {
            "step": fields.get("step", b"").decode(),
            "task": int(fields.get("task", 0)),
            "attempt": int(fields.get("attempt", 0)),
        }
        encoded = orjson.dumps(body)
        return kind, encoded[:-1] + b',"data":' + fields.get("data", b"null") + b"}"
    return kind, orjson.dumps({k: v.decode() for k, v in fields.items() if k != "type"})


def event_stream(
    queries: Queries,
    workflow_id: str,
    after: str,
    request: Request,
    headers: dict[str, str],
    redact: bool = False,
) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        last = after
        yield b"retry: 1000\n\n"
        while True:
            if await request.is_disconnected():
                return
            batch = await queries.events(workflow_id, last, KEEPALIVE_MS)
            if not batch:
                yield b": keep-alive\n\n"
                continue
            for event_id, fields in batch:
                kind, data = _data(fields, redact)
                last = event_id
                yield _frame(event_id, kind, data)
                if kind == "end":
                    return

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
