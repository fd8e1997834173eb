"""conveyor.http over real HTTP: a real `conveyor api` process, real Redis, and a real Worker
(on its own thread and event loop, so the blocking client and the asyncio client can both
wait on it). The only fakes are network faults: a closed port, and a transport that cuts an
event stream in the middle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from conveyor import (
    App,
    BackPressureError,
    ResultTimeoutError,
    SignalError,
    StepBudgetExceededError,
    UnknownWorkflowError,
    Worker,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowStatus,
)
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.http import (
    ApiUnavailableError,
    AsyncHttpClient,
    AuthError,
    Event,
    HttpClient,
    InputError,
    PartialBatchError,
)
from tests.api.conftest import ROOT, TOKENS, ApiServer, start_api, stop_api
from tests.apps import api_app
from tests.apps.api_app import Order
from tests.helpers import until as eventually

ADMIN = TOKENS["admin"][0]
STORY_TOKENS = ["a", "story", "about", "dragons"]


@contextlib.contextmanager
def worker_thread(app: App) -> Iterator[None]:
    """A Worker serving ``app`` on a thread with its own event loop (tests/worker/test_flow.py
    ``running()``, moved off the test's loop so that a blocking client cannot stall it)."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        worker = Worker(app, block_ms=50, promote_interval=0.02)
        box["loop"], box["worker"] = asyncio.get_running_loop(), worker
        task = asyncio.create_task(worker.run())
        await worker.start()
        ready.set()
        await task

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="test-worker")
    thread.start()
    assert ready.wait(15), "the worker did not start"
    try:
        yield
    finally:
        box["loop"].call_soon_threadsafe(box["worker"].request_stop)
        thread.join(15)


@pytest.fixture(scope="module")
def api(redis7: EmbeddedRedis) -> Iterator[ApiServer]:
    """One API process and one worker for the whole module (an API process takes ~1.5 s to
    start); every test starts workflows of its own, so they do not interfere."""
    namespace = f"h{uuid.uuid4().hex[:10]}"
    server = start_api(redis7, namespace)
    app = App(
        workflows=[api_app.orders, api_app.story, api_app.approval],
        redis_url=redis7.url, namespace=namespace, partitions=4,
    )  # fmt: skip
    try:
        with worker_thread(app):
            yield server
    finally:
        stop_api(server)


@pytest.fixture
async def aclient(api: ApiServer) -> AsyncIterator[AsyncHttpClient]:
    async with AsyncHttpClient(api.url, ADMIN) as client:
        yield client


@pytest.fixture
def client(api: ApiServer) -> Iterator[HttpClient]:
    with HttpClient(api.url, ADMIN) as client:
        yield client


def assert_story(events: list[Event]) -> None:
    """Every step attempt and every emitted event of `story`, in order, then the end."""
    assert len({e.id for e in events}) == len(events)
    steps = [e.data["step"] for e in events if e.event == "step"]
    assert steps == ["outline", "write", "write", "finish"]
    emitted = [e.data["data"] for e in events if e.event == "emit"]
    tokens = [{"token": t} for t in STORY_TOKENS]
    assert emitted == [{"progress": "outlining"}, *tokens, *tokens, "done"]
    assert events[-1] == Event(events[-1].id, "end", {"status": "completed"})


# -- the asyncio client ---------------------------------------------------------------------------


async def test_async_start_status_result(aclient: AsyncHttpClient) -> None:
    wf_id = await aclient.start("orders", {"sku": "a", "qty": 3}, request_id="req-async-1")
    assert await aclient.result(wf_id, timeout=10) == {"sku": "a", "total": 6}
    status = await aclient.status(wf_id)
    assert isinstance(status, WorkflowStatus)
    assert (status.id, status.workflow, status.status) == (wf_id, "orders", "completed")
    assert status.request_id == "req-async-1" and status.result == {"sku": "a", "total": 6}
    assert [r.step for r in status.history] == ["receive"]
    key = f"k-{uuid.uuid4().hex}"
    first = await aclient.start("orders", {"sku": "b", "qty": 1}, idempotency_key=key)
    assert await aclient.start("orders", {"sku": "b", "qty": 1}, idempotency_key=key) == first


async def test_async_start_many(aclient: AsyncHttpClient) -> None:
    ids = await aclient.start_many("orders", [{"sku": s, "qty": 2} for s in "xyz"])
    assert len(set(ids)) == 3
    results = await asyncio.gather(*(aclient.result(i, timeout=10) for i in ids))
    assert results == [{"sku": s, "total": 4} for s in "xyz"]


async def test_async_signal_and_cancel(aclient: AsyncHttpClient) -> None:
    wf_id = await aclient.start("approval", {"doc": 1})
    for _ in range(500):
        if (await aclient.status(wf_id)).waiting_for == ["approve"]:
            break
        await asyncio.sleep(0.02)
    assert await aclient.signal(wf_id, "approve", {"ok": True}) == "delivered"
    assert await aclient.result(wf_id, timeout=10) == {"doc": {"doc": 1}, "answer": {"ok": True}}
    with pytest.raises(SignalError):
        await aclient.signal(wf_id, "approve")
    other = await aclient.start("approval", {"doc": 2})
    with pytest.raises(ResultTimeoutError, match=r"did not finish within 0\.2s"):
        await aclient.result(other, timeout=0.2)
    assert await aclient.cancel(other) == "cancelled"
    with pytest.raises(WorkflowCancelledError):
        await aclient.result(other, timeout=10)


async def test_async_events_to_the_end_and_resume(aclient: AsyncHttpClient) -> None:
    wf_id = await aclient.start("story", "dragons")
    events = [e async for e in aclient.events(wf_id)]  # follows the run live
    assert_story(events)
    resumed = [e async for e in aclient.events(wf_id, last_event_id=events[3].id)]
    assert resumed == events[4:]


async def test_async_step_budget_is_a_failure(aclient: AsyncHttpClient) -> None:
    wf_id = await aclient.start("story", "loops", max_steps=1)
    with pytest.raises(StepBudgetExceededError):
        await aclient.result(wf_id, timeout=10)


async def test_async_errors(api: ApiServer, aclient: AsyncHttpClient) -> None:
    with pytest.raises(UnknownWorkflowError, match="nope"):
        await aclient.start("nope", {})
    with pytest.raises(InputError) as invalid:
        await aclient.start("orders", {"sku": "", "qty": 0})
    assert sorted(tuple(e["loc"]) for e in invalid.value.errors) == [
        ("body", "qty"),
        ("body", "sku"),
    ]
    with pytest.raises(InputError) as invalid:
        await aclient.start_many("orders", [{"sku": "a", "qty": 1}, {"sku": "a", "qty": 0}])
    assert [e["loc"] for e in invalid.value.errors] == [["body", 1, "qty"]]
    with pytest.raises(WorkflowNotFoundError):
        await aclient.status("no-such-id")
    with pytest.raises(WorkflowNotFoundError):
        await aclient.result("no-such-id", timeout=1)
    with pytest.raises(WorkflowNotFoundError):
        [e async for e in aclient.events("no-such-id")]
    for key, status in ((None, 401), ("cvk_wrong", 401), (TOKENS["reader"][0], 403)):
        async with AsyncHttpClient(api.url, key) as other:
            with pytest.raises(AuthError) as denied:
                await other.start("orders", {"sku": "a", "qty": 1})
        assert denied.value.status == status


# -- the blocking client --------------------------------------------------------------------------


def test_sync_start_status_result(client: HttpClient) -> None:
    wf_id = client.start("orders", Order(sku="s", qty=5), request_id="req-sync-1", delay=0.1)
    assert client.result(wf_id, timeout=10) == {"sku": "s", "total": 10}
    status = client.status(wf_id)
    assert isinstance(status, WorkflowStatus)
    assert (status.status, status.request_id) == ("completed", "req-sync-1")
    ids = client.start_many("orders", [{"sku": "m", "qty": q} for q in (1, 2)])
    assert [client.result(i, timeout=10) for i in ids] == [
        {"sku": "m", "total": 2},
        {"sku": "m", "total": 4},
    ]


def test_sync_signal_and_cancel(client: HttpClient) -> None:
    wf_id = client.start("approval", "memo")
    eventually(lambda: client.status(wf_id).waiting_for == ["approve"])
    assert client.signal(wf_id, "approve", "yes") == "delivered"
    assert client.result(wf_id, timeout=10) == {"doc": "memo", "answer": "yes"}
    with pytest.raises(SignalError):
        client.signal(wf_id, "approve")
    other = client.start("approval", "memo 2")
    with pytest.raises(ResultTimeoutError):
        client.result(other, timeout=0.2)
    assert client.cancel(other) == "cancelled"
    with pytest.raises(WorkflowCancelledError):
        client.result(other, timeout=10)


def test_sync_events_to_the_end_and_resume(client: HttpClient) -> None:
    wf_id = client.start("story", "dragons")
    events = list(client.events(wf_id))
    assert_story(events)
    assert list(client.events(wf_id, last_event_id=events[-2].id)) == events[-1:]


def test_sync_errors(api: ApiServer, client: HttpClient) -> None:
    with pytest.raises(UnknownWorkflowError):
        client.start("nope")
    with pytest.raises(InputError) as invalid:
        client.start("orders", {"sku": "a"})
    assert [e["loc"] for e in invalid.value.errors] == [["body", "qty"]]
    with pytest.raises(WorkflowNotFoundError):
        client.status("no-such-id")
    with pytest.raises(WorkflowNotFoundError):
        list(client.events("no-such-id"))
    with HttpClient(api.url, "cvk_wrong") as other, pytest.raises(AuthError, match="401"):
        other.status("no-such-id")
    with HttpClient(api.url, TOKENS["reader"][0]) as other, pytest.raises(AuthError) as denied:
        other.cancel("no-such-id")
    assert denied.value.status == 403


# -- network faults and retries -------------------------------------------------------------------


async def test_a_closed_port_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with HttpClient(url, ADMIN) as client, pytest.raises(ApiUnavailableError, match=url):
        client.start("orders", {})
    async with AsyncHttpClient(url, ADMIN) as aclient:
        with pytest.raises(ApiUnavailableError, match="cannot reach the API"):
            await aclient.status("x")


def test_redis_down_is_unavailable(make_api: Callable[..., ApiServer]) -> None:
    server = make_api(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with HttpClient(server.url, ADMIN) as client, pytest.raises(ApiUnavailableError) as down:
        client.start("orders", {"sku": "a", "qty": 1})
    assert down.value.retry_after == 5


def test_rate_limit_is_back_pressure_and_retried(make_api: Callable[..., ApiServer]) -> None:
    server = make_api(CONVEYOR_API_RATE_LIMIT="1/s")
    with HttpClient(server.url, ADMIN) as client:
        client.start("orders", {"sku": "a", "qty": 1})
        with pytest.raises(BackPressureError) as limited:
            client.start("orders", {"sku": "a", "qty": 1})
        assert limited.value.retry_after == 1
        with pytest.raises(PartialBatchError) as batch:
            client.start_many("orders", [{"sku": "a", "qty": 1}])
        assert batch.value.accepted == []
    with HttpClient(server.url, ADMIN, retries=2) as client:
        began = time.monotonic()
        client.start("orders", {"sku": "a", "qty": 1})
        assert 0.5 < time.monotonic() - began < 5


class _Cut:
    """A response body that breaks off after ``limit`` bytes, as a dropped connection does."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream, self.limit, self.sent = stream, limit, 0

    def _take(self, chunk: bytes) -> bytes:
        part = chunk[: self.limit - self.sent]
        self.sent += len(part)
        return part


class _SyncCut(_Cut, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.stream:
            yield self._take(chunk)
            if self.sent >= self.limit:
                raise httpx.ReadError("connection dropped (test)")

    def close(self) -> None:
        self.stream.close()


class _AsyncCut(_Cut, httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield self._take(chunk)
            if self.sent >= self.limit:
                raise httpx.ReadError("connection dropped (test)")

    async def aclose(self) -> None:
        await self.stream.aclose()


class DroppingTransport(httpx.HTTPTransport):
    """Cuts the first event stream after ``limit`` bytes; records each Last-Event-ID sent."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.resumed_from = limit, list[str | None]()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.resumed_from.append(request.headers.get("last-event-id"))
        if len(self.resumed_from) > 1:
            return response
        stream = _SyncCut(response.stream, self.limit)
        return httpx.Response(response.status_code, headers=response.headers, stream=stream)


class AsyncDroppingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.resumed_from = limit, list[str | None]()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.resumed_from.append(request.headers.get("last-event-id"))
        if len(self.resumed_from) > 1:
            return response
        stream = _AsyncCut(response.stream, self.limit)
        return httpx.Response(response.status_code, headers=response.headers, stream=stream)


def test_sync_events_resume_after_a_dropped_connection(client: HttpClient, api: ApiServer) -> None:
    wf_id = client.start("story", "dragons")
    client.result(wf_id, timeout=10)
    whole = list(client.events(wf_id))
    transport = DroppingTransport(limit=700)  # some way into the stream, mid-event
    with HttpClient(api.url, ADMIN, transport=transport) as dropping:
        assert list(dropping.events(wf_id)) == whole
    first, again = transport.resumed_from
    assert first is None and again in [e.id for e in whole[:-1]]


async def test_async_events_resume_after_a_dropped_connection(
    aclient: AsyncHttpClient, api: ApiServer
) -> None:
    wf_id = await aclient.start("story", "dragons")
    await aclient.result(wf_id, timeout=10)
    whole = [e async for e in aclient.events(wf_id)]
    transport = AsyncDroppingTransport(limit=700)
    async with AsyncHttpClient(api.url, ADMIN, transport=transport) as dropping:
        assert [e async for e in dropping.events(wf_id)] == whole
    assert transport.resumed_from[0] is None and len(transport.resumed_from) == 2


# -- conveyor start --api -----------------------------------------------------------------------


def conveyor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip


def test_cli_start_through_the_api(api: ApiServer) -> None:
    done = conveyor(
        "start", "orders", "--input", '{"sku": "c", "qty": 4}', "--wait", "--timeout", "20",
        "--api", api.url, "--api-key", ADMIN,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"sku": "c", "total": 8}
    assert done.stderr.startswith("started ")


def test_cli_start_through_the_api_with_a_bad_key(api: ApiServer) -> None:
    refused = conveyor(
        "start", "orders", "--input", '{"sku": "c", "qty": 4}', "--wait",
        CONVEYOR_API_URL=api.url, CONVEYOR_API_KEY="cvk_wrong",
    )  # fmt: skip
    assert refused.returncode == 1 and refused.stdout == ""
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines == ["error: invalid API key (HTTP 401)"], refused.stderr
