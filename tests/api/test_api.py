"""The HTTP API over real HTTP: a real `conveyor api` process (uvicorn) against a real
redis-server, with in-process workers running the served app's workflows on the same
namespace. Every route, every error status (RFC 9457 problem details), auth and scopes, the
rate limit shared by two processes, back-pressure, and SSE with resumption."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
import pytest

from conveyor import App, AsyncClient, Worker
from conveyor.embedded import EmbeddedRedis
from tests.api.conftest import TOKENS, ApiServer, start_api, stop_api
from tests.apps import api_app
from tests.conftest import running as run_worker
from tests.helpers import until_async as until

MakeApi = Callable[..., ApiServer]
REQUEST_ID = "req-7f3a.checkout:42"


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(redis7: EmbeddedRedis) -> Iterator[ApiServer]:
    """One API process shared by the tests of this module that need no namespace of their own
    (each xdist worker gets its own process and namespace)."""
    shared = start_api(redis7, f"t{uuid.uuid4().hex[:10]}")
    yield shared
    stop_api(shared)


def engine(server: ApiServer) -> App:
    """The served app's workflows, on the API's Redis and namespace (for workers, clients)."""
    return App(
        workflows=[api_app.orders, api_app.story, api_app.approval],
        redis_url=server.env["REDIS_URL"],
        namespace=server.env["CONVEYOR_NAMESPACE"],
        partitions=4,
    )


def running(server: ApiServer) -> contextlib.AbstractAsyncContextManager[Worker]:
    """A worker serving the API's namespace in the background for the block."""
    return run_worker(engine(server), trim_interval=0.05)


def aclient(server: ApiServer, who: str | None = "admin") -> httpx.AsyncClient:
    headers = server.auth(who) if who else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30)


def assert_problem(response: httpx.Response, status: int, kind: str | None = None) -> Any:
    """The response is an RFC 9457 problem with this status (and kind, the type's last part)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["title"] == HTTPStatus(status).phrase
    assert body["type"].startswith("https://")
    if kind is not None:
        assert body["type"].rsplit("/", 1)[1] == kind, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def backlog(client: httpx.AsyncClient, queue: str = "default") -> dict[str, int]:
    response = await client.get("/v1/queues")
    assert response.status_code == 200
    return next(q for q in response.json()["queues"] if q["queue"] == queue)


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    data: Any

    def brief(self) -> tuple[str, str | None, Any]:
        """(kind, step, what): the emitted data, the attempt's status, or the final status."""
        if self.event == "emit":
            return ("emit", self.data["step"], self.data["data"])
        if self.event == "step":
            return ("step", self.data["step"], self.data["status"])
        return (self.event, None, self.data.get("status"))


async def read_events(
    client: httpx.AsyncClient, wf_id: str, last_event_id: str | None = None, stop_after: int = 0
) -> list[Event]:
    """Parse the SSE stream until it ends (or, with ``stop_after``, drop the connection after
    that many events)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Event] = []
    async with client.stream("GET", f"/v1/workflows/{wf_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "event" in fields:
                events.append(Event(fields["id"], fields["event"], json.loads(fields["data"])))
                if len(events) == stop_after:
                    break
            fields = {}
    return events


def story_events(topic: str) -> list[tuple[str, str | None, Any]]:
    """What `story` streams: outline, two rounds of write (one token per word), finish."""
    tokens = [("emit", "write", {"token": t}) for t in f"a story about {topic}".split()]
    return [
        ("emit", "outline", {"progress": "outlining"}),
        ("step", "outline", "completed"),
        *tokens,
        ("step", "write", "completed"),
        *tokens,
        ("step", "write", "completed"),
        ("emit", "finish", "done"),
        ("step", "finish", "completed"),
        ("end", None, "completed"),
    ]


def ids_order(events: list[Event]) -> list[tuple[int, int]]:
    return [tuple(int(p) for p in e.id.split("-")) for e in events]  # type: ignore[misc]


# -- submitting ------------------------------------------------------------------------------


def test_submit_answers_202_with_location_and_stores_the_request_id(server: ApiServer) -> None:
    with server.client("admin") as c:
        given = c.post(
            "/v1/workflows/orders", json={"sku": "abc", "qty": 2},
            headers={"X-Request-ID": REQUEST_ID},
        )  # fmt: skip
        generated = c.post("/v1/workflows/orders", json={"sku": "abc", "qty": 3})
        invalid = c.post(
            "/v1/workflows/orders", json={"sku": "abc", "qty": 4},
            headers={"X-Request-ID": "not valid!"},
        )  # fmt: skip

        assert given.status_code == 202
        body = given.json()
        assert set(body) == {"id", "status_url"}
        assert body["status_url"] == f"/v1/workflows/{body['id']}"
        assert given.headers["location"] == body["status_url"]
        assert given.headers["x-request-id"] == REQUEST_ID
        status = c.get(body["status_url"]).json()
        assert status["id"] == body["id"]
        assert status["workflow"] == "orders"
        assert status["input"] == {"sku": "abc", "qty": 2}
        assert status["request_id"] == REQUEST_ID

        for response in (generated, invalid):
            assert response.status_code == 202
            rid = response.headers["x-request-id"]
            assert len(rid) == 32 and int(rid, 16) >= 0  # a fresh uuid4 hex
            assert c.get(response.headers["location"]).json()["request_id"] == rid
        assert generated.headers["x-request-id"] != invalid.headers["x-request-id"]


async def test_idempotency_key_returns_the_same_id_and_starts_once(server: ApiServer) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    async with aclient(server) as c:
        before = await backlog(c)
        first = await c.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}, headers=key)
        again = await c.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}, headers=key)
        other = await c.post("/v1/workflows/orders", json={"sku": "a", "qty": 1})
        after = await backlog(c)

        assert first.status_code == again.status_code == other.status_code == 202
        assert first.json() == again.json()
        assert other.json()["id"] != first.json()["id"]
        assert after["stream"] - before["stream"] == 2  # the keyed start queued one task

        async with running(server):
            done = await c.get(f"/v1/workflows/{first.json()['id']}/result", params={"wait": 10})
        assert done.json()["result"] == {"sku": "a", "total": 2}
        history = (await c.get(f"/v1/workflows/{first.json()['id']}")).json()["history"]
        assert [(h["step"], h["status"]) for h in history] == [("receive", "completed")]

        too_long = await c.post(
            "/v1/workflows/orders",
            json={"sku": "a", "qty": 1},
            headers={"Idempotency-Key": "k" * 257},
        )
        assert_problem(too_long, 400, "bad-request")


async def test_batch_returns_ids_in_order_and_is_idempotent(server: ApiServer) -> None:
    inputs = [{"n": i} for i in range(5)]
    key = {"Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
    async with aclient(server) as c:
        before = await backlog(c)
        plain = await c.post(
            "/v1/workflows/approval/batch", json=inputs, headers={"X-Request-ID": REQUEST_ID}
        )
        keyed = await c.post("/v1/workflows/approval/batch", json=inputs, headers=key)
        resent = await c.post("/v1/workflows/approval/batch", json=inputs, headers=key)
        after = await backlog(c)

        assert plain.status_code == keyed.status_code == resent.status_code == 202
        ids = plain.json()["ids"]
        assert len(ids) == len(set(ids)) == 5
        for i, wf_id in enumerate(ids):
            status = (await c.get(f"/v1/workflows/{wf_id}")).json()
            assert (status["workflow"], status["input"]) == ("approval", {"n": i})
            assert status["request_id"] == REQUEST_ID
        assert resent.json()["ids"] == keyed.json()["ids"]
        assert set(keyed.json()["ids"]).isdisjoint(ids)
        assert after["stream"] - before["stream"] == 10  # the resent batch started nothing

        invalid = await c.post(
            "/v1/workflows/orders/batch", json=[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 0}]
        )
        body = assert_problem(invalid, 422, "invalid-input")
        assert [e["loc"] for e in body["errors"]] == [["body", 1, "qty"]]
        assert_problem(await c.post("/v1/workflows/orders/batch", json={"a": 1}), 400)
        assert (await backlog(c))["stream"] == after["stream"]  # refused batches start nothing


def test_start_route_uses_the_named_or_the_first_workflow(server: ApiServer) -> None:
    with server.client("submitter") as c, server.client("reader") as reader:
        default = c.post("/start", json={"sku": "s1", "qty": 5})
        named = c.post("/start", json={"workflow": "approval", "doc": "contract"})

        for response in (default, named):
            assert response.status_code == 202
            assert set(response.json()) == {"workflow_id"}
            assert response.headers["location"] == f"/v1/workflows/{response.json()['workflow_id']}"
        first = reader.get(default.headers["location"]).json()
        assert (first["workflow"], first["input"]) == ("orders", {"sku": "s1", "qty": 5})
        second = reader.get(named.headers["location"]).json()
        assert (second["workflow"], second["input"]) == ("approval", {"doc": "contract"})

        key = {"Idempotency-Key": uuid.uuid4().hex}
        once = c.post("/start", json={"workflow": "approval", "doc": 1}, headers=key)
        twice = c.post("/start", json={"workflow": "approval", "doc": 1}, headers=key)
        assert once.json() == twice.json() != named.json()

        assert_problem(c.post("/start", json={"workflow": "nope"}), 404, "unknown-workflow")
        assert_problem(c.post("/start", json={"qty": 0}), 422, "invalid-input")
        assert_problem(c.post("/start", json=[1, 2]), 400)


# -- reading ---------------------------------------------------------------------------------


async def test_result_answers_202_until_the_end_and_long_polls(server: ApiServer) -> None:
    async with aclient(server) as c:
        wf_id = (await c.post("/v1/workflows/orders", json={"sku": "x", "qty": 3})).json()["id"]
        early = await c.get(f"/v1/workflows/{wf_id}/result")
        assert early.status_code == 202
        assert early.json() == {"id": wf_id, "status": "running"}
        assert early.headers["retry-after"] == "1"

        poll = asyncio.create_task(c.get(f"/v1/workflows/{wf_id}/result", params={"wait": 30}))
        await asyncio.sleep(0.5)
        assert not poll.done()  # held open while nothing runs it
        async with running(server):
            started = time.monotonic()
            final = await poll
            elapsed = time.monotonic() - started
        assert final.status_code == 200
        assert final.json() == {
            "id": wf_id,
            "status": "completed",
            "result": {"sku": "x", "total": 6},
        }
        assert elapsed < 5  # answered when the worker finished, not at the end of the wait

        status = (await c.get(f"/v1/workflows/{wf_id}")).json()
        assert status["status"] == "completed"
        assert status["result"] == {"sku": "x", "total": 6}
        assert [h["step"] for h in status["history"]] == ["receive"]


async def test_events_stream_every_attempt_and_emit_in_order_and_resume(server: ApiServer) -> None:
    expected = story_events("dragons")
    async with aclient(server, "reader") as c, aclient(server, "submitter") as s:
        wf_id = (await s.post("/v1/workflows/story", json="dragons")).json()["id"]
        # connect before anything runs, read a few events live, then drop the connection
        first = asyncio.create_task(read_events(c, wf_id, stop_after=4))
        await asyncio.sleep(0.3)
        async with running(server):
            head = await first
            tail = await read_events(c, wf_id, last_event_id=head[-1].id)
        live = head + tail
        assert [e.brief() for e in live] == expected
        assert len({e.id for e in live}) == len(live)
        assert ids_order(live) == sorted(ids_order(live))
        # each step's emits carry the task of the attempt record that follows them
        task = None
        for event in live:
            if event.event == "emit":
                task = task or event.data["task"]
                assert event.data["task"] == task
            elif event.event == "step":
                assert event.data["task"] == task and event.data["attempt"] == 1
                task = None

        # after the end: a new connection replays everything, a resumed one exactly the rest
        replay = await read_events(c, wf_id)
        assert replay == live
        for cut in (1, 7, len(live) - 2):
            rest = await read_events(c, wf_id, last_event_id=live[cut - 1].id)
            assert rest == live[cut:]
        by_query = await c.get(
            f"/v1/workflows/{wf_id}/events", params={"last_event_id": live[-2].id}
        )
        assert "event: end" in by_query.text and "event: step" not in by_query.text
        # past the end nothing can follow: 204 tells an EventSource to stop reconnecting
        for after in (live[-1].id, f"{2**64 - 1}-{2**64 - 1}"):
            ended = await c.get(f"/v1/workflows/{wf_id}/events", headers={"Last-Event-ID": after})
            assert (ended.status_code, ended.content) == (204, b"")
        too_big = f"{2**64}-0"  # no such stream id: Redis would refuse it mid-stream
        assert_problem(
            await c.get(f"/v1/workflows/{wf_id}/events", headers={"Last-Event-ID": too_big}), 400
        )

        assert_problem(await c.get("/v1/workflows/nope/events"), 404, "workflow-not-found")
        bad = await c.get(f"/v1/workflows/{wf_id}/events", headers={"Last-Event-ID": "x"})
        assert_problem(bad, 400, "bad-request")


# -- signals and cancellation ----------------------------------------------------------------


async def test_signals_are_delivered_or_buffered_and_refused_after_the_end(
    server: ApiServer,
) -> None:
    async with aclient(server, "both") as c:
        early = (await c.post("/v1/workflows/approval", json={"doc": 1})).json()["id"]
        buffered = await c.post(f"/v1/workflows/{early}/signals/approve", json={"ok": "early"})
        assert buffered.status_code == 200
        assert buffered.json() == {"id": early, "signal": "approve", "outcome": "buffered"}

        late = (await c.post("/v1/workflows/approval", json={"doc": 2})).json()["id"]
        async with running(server):
            first = await c.get(f"/v1/workflows/{early}/result", params={"wait": 10})
            assert first.json()["result"] == {"doc": {"doc": 1}, "answer": {"ok": "early"}}

            async def waiting() -> bool:
                return (await c.get(f"/v1/workflows/{late}")).json()["status"] == "waiting"

            await until(waiting)
            delivered = await c.post(f"/v1/workflows/{late}/signals/approve")  # no payload
            assert delivered.json() == {"id": late, "signal": "approve", "outcome": "delivered"}
            second = await c.get(f"/v1/workflows/{late}/result", params={"wait": 10})
            assert second.json()["result"] == {"doc": {"doc": 2}, "answer": None}

        finished = await c.post(f"/v1/workflows/{late}/signals/approve", json=True)
        assert_problem(finished, 409, "workflow-finished")
        unknown = await c.post("/v1/workflows/nope/signals/approve", json=True)
        assert_problem(unknown, 404, "workflow-not-found")
        text = await c.post(
            f"/v1/workflows/{late}/signals/approve", content=b"yes",
            headers={"Content-Type": "text/plain"},
        )  # fmt: skip
        assert_problem(text, 415, "unsupported-media-type")


async def test_cancel_needs_admin_and_ends_the_workflow(server: ApiServer) -> None:
    async with aclient(server) as admin, aclient(server, "both") as both:
        wf_id = (await admin.post("/v1/workflows/approval", json="draft")).json()["id"]
        async with running(server):

            async def waiting() -> bool:
                return (await admin.get(f"/v1/workflows/{wf_id}")).json()["status"] == "waiting"

            await until(waiting)
            assert_problem(await both.post(f"/v1/workflows/{wf_id}/cancel"), 403, "forbidden")
            cancelled = await admin.post(f"/v1/workflows/{wf_id}/cancel")
            assert cancelled.status_code == 200
            assert cancelled.json() == {"id": wf_id, "status": "cancelled"}
            result = await admin.get(f"/v1/workflows/{wf_id}/result", params={"wait": 5})
            assert result.status_code == 200 and result.json()["status"] == "cancelled"

        status = (await admin.get(f"/v1/workflows/{wf_id}")).json()
        assert status["status"] == "cancelled" and status["waits"] == []
        again = await admin.post(f"/v1/workflows/{wf_id}/cancel")
        assert again.json() == {"id": wf_id, "status": "cancelled"}
        assert_problem(await admin.post("/v1/workflows/nope/cancel"), 404, "workflow-not-found")


# -- listings --------------------------------------------------------------------------------


def pages(c: httpx.Client, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a cursor-paginated listing."""
    out: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        response = c.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        out.append(body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            return out
        assert len(out) < 1000, "pagination does not end"


async def one_millisecond(server: ApiServer, ids: list[str]) -> None:
    """Make ``ids`` look started in the same millisecond (as a burst of submissions can be),
    in the listing's index and in their state: the hard case for a cursor."""
    async with AsyncClient(app=engine(server)) as direct:
        keys, pipe = direct.store.keys, direct.store.redis.pipeline(transaction=False)
        created = int(time.time() * 1000) - 1000
        for wf_id in ids:
            pipe.zadd(keys.recent(keys.partition(wf_id)), {wf_id: created}, xx=True, ch=True)
            pipe.hset(keys.workflow(wf_id), "created_at", created)
        assert (await pipe.execute())[0::2] == [1] * len(ids)
    assert max(Counter(keys.partition(i) for i in ids).values()) > 40


async def test_list_workflows_filters_and_paginates_without_gaps(api: ApiServer) -> None:
    async with aclient(api) as c:
        approvals = (await c.post("/v1/workflows/approval/batch", json=list(range(200)))).json()
        await one_millisecond(api, approvals["ids"])
        orders = [
            (await c.post("/v1/workflows/orders", json={"sku": f"s{i}", "qty": 1})).json()["id"]
            for i in range(5)
        ]
        everything = set(approvals["ids"]) | set(orders)

        def listing(**params: Any) -> list[dict[str, Any]]:
            with api.client("reader") as sync:
                found = [item for page in pages(sync, "/v1/workflows", **params) for item in page]
            ids = [item["id"] for item in found]
            assert len(ids) == len(set(ids)), "an item came twice"
            created = [_seconds(item["created_at"]) for item in found]
            assert created == sorted(created, reverse=True), "not newest first"
            return found

        for limit in (1, 7, 1000):
            assert {i["id"] for i in await asyncio.to_thread(listing, limit=limit)} == everything
        newest = (await c.get("/v1/workflows", params={"limit": 5})).json()
        assert {i["id"] for i in newest["items"]} == set(orders)
        named = await asyncio.to_thread(listing, name="orders", limit=2)
        assert {i["id"] for i in named} == set(orders)
        assert {i["workflow"] for i in named} == {"orders"}

        async with running(api):

            async def settled() -> bool:
                found = (await c.get("/v1/workflows", params={"status": "running"})).json()
                return not found["items"] and (await backlog(c))["stream"] == 0

            await until(settled)
        completed = await asyncio.to_thread(listing, status="completed", limit=3)
        assert {i["id"] for i in completed} == set(orders)
        assert {i["status"] for i in completed} == {"completed"}
        waiting = await asyncio.to_thread(listing, status="waiting", name="approval", limit=9)
        assert {i["id"] for i in waiting} == set(approvals["ids"])
        none = (await c.get("/v1/workflows", params={"status": "failed"})).json()
        assert none == {"items": [], "next_cursor": None}

        assert_problem(await c.get("/v1/workflows", params={"limit": 0}), 422, "invalid-request")
        bad_cursor = await c.get("/v1/workflows", params={"cursor": "nonsense"})
        assert_problem(bad_cursor, 400, "bad-request")


async def test_waits_inbox_shows_approvals_until_they_are_signalled(api: ApiServer) -> None:
    async with aclient(api) as c:
        ids = (await c.post("/v1/workflows/approval/batch", json=["d0", "d1", "d2"])).json()["ids"]
        other = (await c.post("/v1/workflows/orders", json={"sku": "a", "qty": 1})).json()["id"]
        async with running(api):

            async def all_waiting() -> list[dict[str, Any]]:
                items = (await c.get("/v1/waits")).json()["items"]
                return items if len(items) == 3 else []

            items = await until(all_waiting)
            assert {i["workflow_id"] for i in items} == set(ids)
            for item in items:
                doc = f"d{ids.index(item['workflow_id'])}"
                assert item["workflow"] == "approval"
                assert item["signal"] == "approve"
                assert (item["step"], item["waiting_step"]) == ("decide", "ask")
                assert item["state"] == {"doc": doc} and item["input"] == doc
                since = _seconds(item["since"])
                assert abs(since - time.time()) < 60
                assert _seconds(item["deadline"]) - since == pytest.approx(3600, abs=1)

            by_signal = (await c.get("/v1/waits", params={"signal": "approve"})).json()
            assert len(by_signal["items"]) == 3
            assert (await c.get("/v1/waits", params={"signal": "other"})).json()["items"] == []
            by_name = (await c.get("/v1/waits", params={"workflow": "approval"})).json()
            assert len(by_name["items"]) == 3
            assert (await c.get("/v1/waits", params={"workflow": "orders"})).json()["items"] == []
            first = (await c.get("/v1/waits", params={"limit": 2})).json()
            assert len(first["items"]) == 2 and first["next_cursor"]
            rest = (
                await c.get("/v1/waits", params={"limit": 2, "cursor": first["next_cursor"]})
            ).json()
            paged = [i["workflow_id"] for i in first["items"] + rest["items"]]
            assert sorted(paged) == sorted(ids)

            await c.post(f"/v1/workflows/{ids[1]}/signals/approve", json="yes")
            await c.get(f"/v1/workflows/{ids[1]}/result", params={"wait": 10})
            left = (await c.get("/v1/waits")).json()["items"]
            assert {i["workflow_id"] for i in left} == {ids[0], ids[2]}
            assert other not in {i["workflow_id"] for i in left}


def _seconds(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_queues_and_dead_letters_and_replay(api: ApiServer) -> None:
    async with aclient(api) as c:
        assert (await backlog(c)) == {"queue": "default", "stream": 0, "pending": 0, "lag": 0,
                                      "oldest_age": 0.0, "delayed": 0, "dead": 0,
                                      "workers": 0}  # fmt: skip
        await c.post("/v1/workflows/orders", json={"sku": "a", "qty": 1})
        await c.post("/v1/workflows/orders", json={"sku": "b", "qty": 1})
        later = await c.post("/v1/workflows/approval", params={"delay": 600}, json="later")
        assert later.status_code == 202
        stats = await backlog(c)
        assert (stats["stream"], stats["delayed"], stats["pending"], stats["dead"]) == (2, 1, 0, 0)
        assert stats["lag"] == 2 and stats["oldest_age"] >= 0 and stats["workers"] == 0

        # the API refuses this input (422); the Python client does not validate, the worker does
        assert_problem(await c.post("/v1/workflows/orders", json={"sku": ""}), 422)
        async with AsyncClient(app=engine(api)) as direct:
            bad = await direct.start("orders", {"sku": "", "qty": 0})
        async with running(api):

            async def dead_letters() -> list[dict[str, Any]]:
                if (await backlog(c))["stream"]:  # still waiting or running
                    return []
                return (await c.get("/v1/dlq")).json()["items"]

            (letter,) = await until(dead_letters)

            async def one_worker() -> bool:  # from the running worker's heartbeat
                return (await backlog(c))["workers"] == 1

            await until(one_worker)
        assert (letter["workflow_id"], letter["workflow"], letter["step"]) == (
            bad,
            "orders",
            "receive",
        )
        assert letter["queue"] == "default" and letter["reason"]
        assert (await c.get(f"/v1/workflows/{bad}")).json()["status"] == "failed"
        events = [e.brief() for e in await read_events(c, bad)]
        assert events == [("step", "receive", "failed"), ("end", None, "failed")]
        stats = await backlog(c)
        assert (stats["stream"], stats["delayed"], stats["dead"]) == (0, 1, 1)

        replayed = await c.post(f"/v1/dlq/{letter['id']}/replay")
        assert replayed.status_code == 200
        assert replayed.json() == {"workflow_id": bad}
        assert (await c.get(f"/v1/workflows/{bad}")).json()["status"] == "running"
        assert (await c.get("/v1/dlq")).json()["items"] == []
        assert (await backlog(c))["stream"] == 1
        again = await c.post(f"/v1/dlq/{letter['id']}/replay")
        assert_problem(again, 404, "dead-letter-not-found")
        assert_problem(await c.post("/v1/dlq/p0:1-1/replay"), 404, "dead-letter-not-found")
        assert_problem(await c.post("/v1/dlq/garbage/replay"), 422, "invalid-request")
        async with aclient(api, "both") as both:
            assert_problem(await both.get("/v1/dlq"), 403, "forbidden")
            assert_problem(await both.post(f"/v1/dlq/{letter['id']}/replay"), 403, "forbidden")


# -- health ----------------------------------------------------------------------------------


def test_healthz_and_readyz_need_no_key(server: ApiServer) -> None:
    health = httpx.get(f"{server.url}/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["version"]
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_redis_down_gives_503_with_retry_after_and_recovers(namespace: str) -> None:
    with EmbeddedRedis(appendonly=False) as redis:
        server = start_api(redis, namespace)
        try:
            with server.client("admin") as c:
                wf_id = c.post("/v1/workflows/approval", json=1).json()["id"]
                assert c.get("/readyz").status_code == 200
                redis.stop()

                ready = c.get("/readyz")
                body = assert_problem(ready, 503, "unavailable")
                assert ready.headers["retry-after"] == "5" and body["retry_after"] == 5
                for response in (
                    c.post("/v1/workflows/approval", json=2),
                    c.get(f"/v1/workflows/{wf_id}"),
                    c.get("/v1/workflows"),
                ):
                    assert_problem(response, 503, "unavailable")
                    assert int(response.headers["retry-after"]) > 0
                assert c.get("/healthz").status_code == 200  # the process itself is up

                redis.start()
                assert c.get("/readyz").status_code == 200
                assert c.post("/v1/workflows/approval", json=3).status_code == 202
        finally:
            stop_api(server)


# -- errors ----------------------------------------------------------------------------------


def test_request_errors_are_problem_details(server: ApiServer) -> None:
    with server.client("admin") as c:
        malformed = c.post(
            "/v1/workflows/approval",
            content=b'{"a": ',
            headers={"Content-Type": "application/json"},
        )
        assert_problem(malformed, 400, "malformed-json")

        def nested(depth: int) -> bytes:
            return b"[" * depth + b"]" * depth

        json_headers = {"Content-Type": "application/json"}
        ok = c.post("/v1/workflows/approval", content=nested(32), headers=json_headers)
        assert ok.status_code == 202
        deep = c.post("/v1/workflows/approval", content=nested(33), headers=json_headers)
        assert_problem(deep, 400, "json-too-deep")
        deeper = c.post("/v1/workflows/approval", content=nested(5000), headers=json_headers)
        assert_problem(deeper, 400)

        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            wrong = c.post("/v1/workflows/approval", content=b"{}", headers={"Content-Type": ctype})
            assert_problem(wrong, 415, "unsupported-media-type")
        assert_problem(c.post("/v1/workflows/approval", content=b"{}"), 415)
        plus_json = c.post(
            "/v1/workflows/approval",
            content=b"{}",
            headers={"Content-Type": "application/vnd.x+json"},
        )
        assert plus_json.status_code == 202

        invalid = c.post("/v1/workflows/orders", json={"sku": "", "qty": "many"})
        body = assert_problem(invalid, 422, "invalid-input")
        assert {tuple(e["loc"]): bool(e["msg"]) for e in body["errors"]} == {
            ("body", "sku"): True,
            ("body", "qty"): True,
        }
        missing = assert_problem(c.post("/v1/workflows/orders", json={"sku": "a"}), 422)
        assert [e["loc"] for e in missing["errors"]] == [["body", "qty"]]
        assert "qty" in missing["detail"]

        unknown = c.post("/v1/workflows/nope", json={})
        assert "nope" in assert_problem(unknown, 404, "unknown-workflow")["detail"]
        for path in ("/v1/workflows/0123abc", "/v1/workflows/0123abc/result"):
            assert_problem(c.get(path), 404, "workflow-not-found")
        assert_problem(c.get("/v1/nothing-here"), 404)
        assert_problem(c.get("/v1/workflows", params={"status": "sleeping"}), 422)
        assert_problem(c.post("/v1/workflows/orders", params={"delay": -1}, json={}), 422)
        assert_problem(c.delete("/v1/queues"), 405)


def test_body_limit_gives_413_with_content_length_and_chunked(make_api: MakeApi) -> None:
    limited = make_api(CONVEYOR_API_MAX_BODY="200", CONVEYOR_API_MAX_BATCH="3")
    big = json.dumps({"doc": "x" * 300}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 64):
            yield big[i : i + 64]

    with limited.client("admin") as c:
        sized = c.post(
            "/v1/workflows/approval", content=big, headers={"Content-Type": "application/json"}
        )
        assert_problem(sized, 413, "payload-too-large")
        chunked = c.post(
            "/v1/workflows/approval", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in chunked.request.headers
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        assert_problem(chunked, 413, "payload-too-large")
        batch = c.post("/v1/workflows/approval/batch", json=[1, 2, 3, 4])
        assert_problem(batch, 413, "batch-too-large")
        assert c.get("/v1/workflows").json()["items"] == []  # nothing was started

        small = c.post("/v1/workflows/approval", json={"doc": "x" * 100})
        assert small.status_code == 202
        assert c.post("/v1/workflows/approval/batch", json=[1, 2, 3]).status_code == 202


def test_backpressure_gives_429_and_writes_nothing_refused(make_api: MakeApi) -> None:
    # 4 partitions: each takes one queued task, then starts there are refused
    tight = make_api(CONVEYOR_MAX_BACKLOG="4")
    with tight.client("admin") as c:
        # a batch is cut short: the inputs before the bound start, the rest are refused
        batch = c.post("/v1/workflows/orders/batch", json=[{"sku": "b", "qty": 1}] * 20)
        body = assert_problem(batch, 429, "backpressure")
        accepted: list[str] = body["accepted"]
        assert 1 <= len(accepted) <= 4
        listed = [item["id"] for item in c.get("/v1/workflows").json()["items"]]
        assert sorted(listed) == sorted(accepted)

        refused = []
        while len(accepted) < 4 or not refused:  # until every partition is full
            response = c.post("/v1/workflows/orders", json={"sku": "s", "qty": 1})
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            else:
                refused.append(response)
            assert len(refused) < 200
        for response in refused:
            body = assert_problem(response, 429, "backpressure")
            assert int(response.headers["retry-after"]) >= 1 and body["retry_after"] > 0

        batch = c.post("/v1/workflows/orders/batch", json=[{"sku": "b", "qty": 1}] * 8)
        body = assert_problem(batch, 429, "backpressure")
        assert int(batch.headers["retry-after"]) >= 1 and body["accepted"] == []
        assert_problem(c.post("/start", json={"sku": "z", "qty": 1}), 429, "backpressure")
        assert_problem(c.post("/v1/workflows/approval", json=1), 429, "backpressure")

        listed = [item["id"] for item in c.get("/v1/workflows").json()["items"]]
        assert sorted(listed) == sorted(accepted)  # a refused start left no workflow behind
        stats = next(q for q in c.get("/v1/queues").json()["queues"] if q["queue"] == "default")
        assert stats["stream"] == 4


# -- auth and limits -------------------------------------------------------------------------


def test_auth_401_without_or_with_a_bad_key(server: ApiServer) -> None:
    with server.client(None) as c:
        for headers in (
            {},
            {"Authorization": "Bearer cvk_wrong"},
            {"Authorization": f"Basic {TOKENS['admin'][0]}"},
            {"Authorization": "Bearer"},
        ):
            for method, path in (("GET", "/v1/workflows"), ("POST", "/v1/workflows/orders")):
                response = c.request(method, path, headers=headers, json={"sku": "a", "qty": 1})
                assert_problem(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert (
            c.get(
                "/v1/workflows", headers={"Authorization": "bearer " + TOKENS["reader"][0]}
            ).status_code
            == 200
        )


def test_scopes_403_for_a_missing_scope(server: ApiServer) -> None:
    with server.client("admin") as admin:
        wf_id = admin.post("/v1/workflows/approval", json="scoped").json()["id"]
    reads = [
        ("GET", "/v1/workflows"),
        ("GET", f"/v1/workflows/{wf_id}"),
        ("GET", f"/v1/workflows/{wf_id}/result"),
        ("GET", "/v1/queues"),
        ("GET", "/v1/waits"),
    ]
    submits = [
        ("POST", "/v1/workflows/approval"),
        ("POST", "/v1/workflows/approval/batch"),
        ("POST", "/start"),
        ("POST", f"/v1/workflows/{wf_id}/signals/poke"),
    ]
    admins = [("GET", "/v1/dlq"), ("POST", "/v1/dlq/p0:1-1/replay")]
    allowed = {
        "reader": set(reads),
        "submitter": set(submits),
        "both": set(reads) | set(submits),
        "admin": set(reads) | set(submits) | set(admins),
    }
    for who, ok in allowed.items():
        with server.client(who) as c:
            for method, path in reads + submits + admins:
                body = [1] if path.endswith("batch") else {"workflow": "approval"}
                response = c.request(method, path, json=body)
                if (method, path) in ok:
                    assert response.status_code in (200, 202, 404), (who, path, response.text)
                    if response.status_code == 404:
                        assert path.startswith("/v1/dlq")
                else:
                    body = assert_problem(response, 403, "forbidden")
                    assert who in body["detail"]
    with server.client("admin") as admin:  # cancel needs admin (the others are refused above)
        assert admin.post(f"/v1/workflows/{wf_id}/cancel").json()["status"] == "cancelled"


def test_no_auth_serves_without_keys_and_warns(redis7: EmbeddedRedis, namespace: str) -> None:
    open_api = start_api(redis7, namespace, "--no-auth")
    try:
        with open_api.client(None) as c:
            started = c.post("/v1/workflows/orders", json={"sku": "a", "qty": 1})
            assert started.status_code == 202
            assert c.get(started.headers["location"]).status_code == 200
            assert c.get("/v1/dlq").status_code == 200
            cancel = c.post(f"{started.headers['location']}/cancel")
            assert cancel.json()["status"] == "cancelled"
    finally:
        output = stop_api(open_api)
    assert "WARNING" in output and "authentication is OFF" in output


async def test_rate_limit_is_shared_by_two_api_processes(make_api: MakeApi) -> None:
    # 10 per minute, burst 10: the bucket does not refill noticeably during the test
    one = make_api(CONVEYOR_API_RATE_LIMIT="10/min")
    two = make_api(CONVEYOR_API_RATE_LIMIT="10/min")
    async with aclient(one, "reader") as a, aclient(two, "reader") as b:
        await asyncio.gather(a.get("/healthz"), b.get("/healthz"))  # connections open
        responses = await asyncio.gather(
            *((a if i % 2 else b).get("/v1/workflows", params={"limit": 1}) for i in range(30))
        )
        ok = [r for r in responses if r.status_code == 200]
        limited = [r for r in responses if r.status_code != 200]
        assert len(ok) == 10, [r.status_code for r in responses]
        assert {str(r.url).split("/v1")[0] for r in limited} == {one.url, two.url}
        for response in limited:
            body = assert_problem(response, 429, "rate-limited")
            assert int(response.headers["retry-after"]) >= 1 and body["retry_after"] > 0
            assert response.headers["ratelimit-limit"] == "10"
            assert response.headers["ratelimit-remaining"] == "0"
            assert response.headers["ratelimit-policy"] == "10;w=60"
            assert int(response.headers["ratelimit-reset"]) >= 1
        remaining = sorted(int(r.headers["ratelimit-remaining"]) for r in ok)
        assert remaining == list(range(10))
    async with aclient(one, "admin") as other_key:  # the limit is per key
        assert (await other_key.get("/v1/workflows")).status_code == 200


async def test_tracebacks_only_for_admin_and_idempotency_keys_per_caller(
    server: ApiServer,
) -> None:
    """A failed step's traceback (server paths, code) is shown to admin keys only; two API
    keys that choose the same Idempotency-Key get two workflows, one key gets one."""
    async with AsyncClient(app=engine(server)) as client:
        failed = await client.start("orders", {"sku": "", "qty": 0})  # bypasses API validation
    async with running(server):
        await until(lambda: _finished(server, failed))
    with server.client("admin") as admin, server.client("both") as reader:
        assert admin.get(f"/v1/workflows/{failed}").json()["error"]["traceback"]
        shown = reader.get(f"/v1/workflows/{failed}").json()
        assert shown["error"]["type"] and shown["error"]["traceback"] is None
        assert all(h["error"]["traceback"] is None for h in shown["history"] if h["error"])
        result = reader.get(f"/v1/workflows/{failed}/result").json()
        assert result["error"]["traceback"] is None
        events = reader.get(f"/v1/workflows/{failed}/events", timeout=10).text
        assert '"traceback":null' in events and "Traceback (most recent" not in events
        key = {"Idempotency-Key": f"same-{uuid.uuid4().hex}"}
        a = admin.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}, headers=key)
        b = reader.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}, headers=key)
        again = reader.post("/v1/workflows/orders", json={"sku": "a", "qty": 1}, headers=key)
        assert a.json()["id"] != b.json()["id"] == again.json()["id"]
        falsy = admin.post("/start", json={"workflow": ""})
        assert_problem(falsy, 400)


async def _finished(server: ApiServer, wf_id: str) -> bool:
    async with aclient(server) as c:
        return (await c.get(f"/v1/workflows/{wf_id}")).json()["status"] == "failed"


def test_openapi_declares_the_bearer_scheme_and_headers(server: ApiServer) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    submit = doc["paths"]["/v1/workflows/{workflow}"]["post"]
    assert submit["security"] == [{"bearer": []}]
    headers = {p["name"] for p in submit["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key", "X-Request-ID"}
    events = doc["paths"]["/v1/workflows/{workflow_id}/events"]["get"]
    assert "Last-Event-ID" in {p["name"] for p in events["parameters"]}
    health = doc["paths"]["/healthz"]["get"]
    assert health["security"] == [] and "401" not in health["responses"]
