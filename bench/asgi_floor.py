"""The ``asgi-floor-2`` dispatcher of bench/api.py: not an API but a floor.

A bare ASGI callable that parses the body, calls the same ``AsyncClient.start`` as the API
(coalesced pipelines, the same Lua) and answers 202: no framework, validation, auth or limits,
so the cost of the API's own layers can be read off. bench/api.py serves it with
``uvicorn bench.asgi_floor:floor_app --factory``; settings come from ``REDIS_URL`` and
``CONVEYOR_NAMESPACE``.
"""

from __future__ import annotations

from typing import Any


def floor_app() -> Any:
    """uvicorn factory of the ``asgi-floor-2`` dispatcher (see the module's docstring)."""
    import orjson

    from conveyor import AsyncClient
    from conveyor.demo import app as demo_app  # settings from REDIS_URL, CONVEYOR_NAMESPACE

    client: AsyncClient | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal client
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    client = AsyncClient(app=demo_app)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if client is not None:
                        await client.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, payload = 200, b'{"status":"ok"}'
        if scope["path"].startswith("/v1/workflows/") and client is not None:
            workflow_id = await client.start(scope["path"].split("/")[3], orjson.loads(body))
            url = f"/v1/workflows/{workflow_id}"
            status, payload = 202, orjson.dumps({"id": workflow_id, "status_url": url})
        headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app
