"""The API when Redis misbehaves: a request never waits past the request timeout (Redis
frozen), and a Redis out of memory is a 503, never a 500. The deadline itself is tested on
the ASGI layer alone; the rest against a real `conveyor api` and a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.types import Message

from conveyor.api.middleware import RequestHygiene, long_poll_seconds
from conveyor.embedded import EmbeddedRedis
from tests.processes import stop

from .conftest import ApiServer, start_api

# -- the deadline on the ASGI layer ---------------------------------------------------------


async def call(
    app: Any, path: str = "/v1/queues", *, method: str = "GET", body: list[bytes] | None = None,
    complete: bool = True, query: bytes = b"", timeout: float = 0.3,
) -> tuple[int, dict[bytes, bytes], bytes, float]:  # fmt: skip
    """Run one request through RequestHygiene(app); returns (status, headers, body, seconds).
    ``body``: the chunks the client sends; unless ``complete``, it never sends the end."""
    layer = RequestHygiene(app, max_body=1 << 20, timeout=timeout, max_wait=60)
    chunks = list(body or [b""])
    scope = {"type": "http", "method": method, "path": path, "headers": [],
             "query_string": query, "state": {}}  # fmt: skip
    sent: list[Message] = []

    async def receive() -> Message:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk,
                    "more_body": bool(chunks) or not complete}  # fmt: skip
        await asyncio.Event().wait()  # a client that never sends the rest
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    began = time.monotonic()
    await layer(scope, receive, send)
    seconds = time.monotonic() - began
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), content, seconds


def sleeper(seconds: float, *, stream: bool = False) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if stream:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first ", "more_body": True})
        await asyncio.sleep(seconds)
        if not stream:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


async def reader(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"read"})


async def test_a_request_past_its_timeout_is_answered_503() -> None:
    status, headers, body, seconds = await call(sleeper(5))
    assert status == 503 and seconds < 1.5
    assert b'"type":"https://conveyor.dev/problems/unavailable"' in body
    assert b"Idempotency-Key" in body and headers[b"retry-after"] == b"5"
    assert headers[b"x-request-id"]  # still a correlation id on it


async def test_a_request_within_its_timeout_is_untouched() -> None:
    assert (await call(sleeper(0.05)))[:3:2] == (200, b"done")


async def test_a_started_answer_is_not_cut() -> None:
    status, _, body, seconds = await call(sleeper(0.6, stream=True))
    assert status == 200 and body == b"first done" and seconds >= 0.6


async def test_a_long_poll_gets_its_wait_on_top() -> None:
    status, _, body, _ = await call(sleeper(0.6), "/v1/workflows/x/result", query=b"wait=1")
    assert (status, body) == (200, b"done")
    assert (
        long_poll_seconds({"path": "/v1/workflows/x/result", "query_string": b"wait=900"}, 60) == 60
    )
    assert long_poll_seconds({"path": "/v1/queues", "query_string": b"wait=9"}, 60) == 0
    assert long_poll_seconds({"path": "/a/result", "query_string": b"wait=nan"}, 60) == 0


async def test_a_body_that_does_not_arrive_is_a_408() -> None:
    status, _, body, _ = await call(reader, method="POST", body=[b"{", b"1"], complete=False)
    assert status == 408 and b"request-timeout" in body
    assert (await call(reader, method="POST", body=[b"{}"]))[0] == 202


# -- against a real API ---------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server:
        yield server


@pytest.fixture
def api_on(own_redis: EmbeddedRedis, namespace: str) -> Iterator[ApiServer]:
    server = start_api(own_redis, namespace, CONVEYOR_API_REQUEST_TIMEOUT="1")
    yield server
    stop(server.process)


def test_a_frozen_redis_gets_503_within_the_request_timeout(
    own_redis: EmbeddedRedis, api_on: ApiServer
) -> None:
    assert own_redis.process is not None
    with api_on.client("admin") as http:
        assert http.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}).status_code == 202
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            for method, path, body in (
                ("POST", "/v1/workflows/orders", {"sku": "a", "qty": 1}),
                ("GET", "/v1/queues", None),
            ):
                began = time.monotonic()
                response = http.request(method, path, json=body, timeout=10)
                assert response.status_code == 503, response.text
                assert response.json()["type"].endswith("/unavailable")
                assert time.monotonic() - began < 3
            assert http.get("/healthz").status_code == 200
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        response = http.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}, timeout=10)
        assert response.status_code == 202


def fill_up(url: str) -> redis.Redis:
    """Make Redis refuse every write for memory (maxmemory 1 byte, policy noeviction)."""
    r = redis.Redis.from_url(url)
    r.config_set("maxmemory", 1)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("probe", 1)
    return r


def test_redis_out_of_memory_is_a_503_on_routed_requests(
    own_redis: EmbeddedRedis, api_on: ApiServer
) -> None:
    with api_on.client("admin") as http:
        wf_id = http.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}).json()["id"]
        r = fill_up(own_redis.url)
        try:
            time.sleep(1.1)  # the rate limiter's lease of tokens lapses: it must ask Redis
            for path in (f"/v1/workflows/{wf_id}", "/v1/queues"):
                response = http.get(path)
                assert response.status_code == 503, response.text
                assert response.json()["type"].endswith("/out-of-memory")
                assert response.headers["retry-after"] == "5"
        finally:
            r.config_set("maxmemory", 0)
            r.close()
        assert http.get(f"/v1/workflows/{wf_id}").status_code == 200


def test_redis_out_of_memory_is_not_a_500_on_starts(
    own_redis: EmbeddedRedis, api_on: ApiServer
) -> None:
    with api_on.client("admin") as http:
        assert http.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}).status_code == 202
        r = fill_up(own_redis.url)
        try:
            time.sleep(1.1)
            response = http.post("/v1/workflows/orders", json={"sku": "a", "qty": 1})
            assert response.status_code in (429, 503), response.text
        finally:
            r.config_set("maxmemory", 0)
            r.close()


def test_the_request_timeout_must_be_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.api.app import request_timeout_from_env
    from conveyor.errors import ConfigurationError

    monkeypatch.setenv("CONVEYOR_API_REQUEST_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="CONVEYOR_API_REQUEST_TIMEOUT"):
        request_timeout_from_env()
    for raw, expected in (("0", None), ("2.5", 2.5), ("", 10.0)):
        monkeypatch.setenv("CONVEYOR_API_REQUEST_TIMEOUT", raw)
        assert request_timeout_from_env() == expected
