"""A workflow's event stream (what the API's SSE route serves): every step attempt, every
ctx.emit of sync and async steps before its step's end, and the end, in order."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from conveyor import App, AsyncClient, Workflow, goto
from conveyor.storage.queries import Queries
from tests.conftest import drain

MakeApp = Callable[..., App]
ClientFor = Callable[[App], AsyncClient]


async def test_emits_come_before_their_steps_end_in_order(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    wf = Workflow("tokens")

    @wf.step(start=True)
    async def think(ctx, n: int):
        for i in range(n):
            ctx.emit({"token": i})
        return goto(say, n)

    @wf.step(retries=1, backoff=0.01)
    def say(ctx, n: int):  # sync: emits from the step's thread
        ctx.emit(f"attempt {ctx.attempt}")
        if ctx.attempt == 1:
            raise RuntimeError("flaky")
        return n

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("tokens", 3)
    await drain(app)
    assert await client.result(wf_id, timeout=1) == 3
    events = await Queries(client.store).events(wf_id, "0", None)
    shown: list[Any] = []
    for _, fields in events:
        kind = fields["type"].decode()
        if kind == "emit":
            shown.append(("emit", fields["step"].decode(), fields["data"].decode()))
        elif kind == "step":
            record = json.loads(fields["data"])
            shown.append(("step", record["step"], record["status"], record["attempt"]))
        else:
            shown.append((kind, fields["status"].decode()))
    assert shown == [
        ("emit", "think", '{"token":0}'),
        ("emit", "think", '{"token":1}'),
        ("emit", "think", '{"token":2}'),
        ("step", "think", "completed", 1),
        ("emit", "say", '"attempt 1"'),
        ("step", "say", "failed", 1),
        ("emit", "say", '"attempt 2"'),  # a retried attempt emits again (at-least-once)
        ("step", "say", "completed", 2),
        ("end", "completed"),
    ]
    ids = [event_id for event_id, _ in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    # resuming after an event gives exactly the rest
    rest = await Queries(client.store).events(wf_id, ids[4], None)
    assert [i for i, _ in rest] == ids[5:]


async def test_event_streams_can_be_turned_off(make_app: MakeApp, client_for: ClientFor) -> None:
    wf = Workflow("quiet")

    @wf.step
    async def only(ctx, n: int):
        ctx.emit("ignored")
        return n

    app = make_app(wf, events=False)
    client = client_for(app)
    wf_id = await client.start("quiet", 5)
    await drain(app)
    assert await client.result(wf_id, timeout=1) == 5
    assert [h.status for h in (await client.status(wf_id)).history] == ["completed"]
    assert not await client.store.redis.exists(client.store.keys.events(wf_id))
