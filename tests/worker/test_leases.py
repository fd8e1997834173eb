"""Leases, takeover and delivery limits, with workers in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from conveyor import App, AsyncClient, Worker, Workflow
from conveyor.embedded import EmbeddedRedis
from tests.conftest import drain

MakeApp = Callable[..., App]
ClientFor = Callable[[App], AsyncClient]


async def test_a_renewed_lease_is_not_stolen(make_app: MakeApp, client_for: ClientFor) -> None:
    runs: list[str] = []
    wf = Workflow("long")

    @wf.step
    async def think(ctx, x):
        runs.append(ctx.worker)
        await asyncio.sleep(3.5)  # more than three visibility timeouts
        return x

    app = make_app(wf, visibility_timeout=1)
    client = client_for(app)
    wf_id = await client.start("long", "deep thought")
    holder = Worker(app, name="holder", block_ms=50)
    thief = Worker(app, name="thief", block_ms=50, reclaim_interval=0.1)
    first = asyncio.create_task(holder.run(until_idle=True))
    await asyncio.sleep(0.3)  # the holder has the entry
    second = asyncio.create_task(thief.run(until_idle=True))
    await asyncio.gather(first, second)
    assert runs == ["holder"] and thief.stats.reclaimed == 0
    assert await client.result(wf_id, timeout=1) == "deep thought"


async def test_entry_past_delivery_limit_is_dead_lettered(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    runs: list[int] = []
    wf = Workflow("poison")

    @wf.step
    def explode(ctx, x):
        runs.append(x)
        return x

    app = make_app(wf, visibility_timeout=1, max_deliveries=3)
    client = client_for(app)
    wf_id = await client.start("poison", 1)
    store = client.store
    await store.ensure_groups(["default"])
    # Simulate workers that died on this entry: delivered, then taken over three times.
    [(stream, entry_id, _)] = await store.read(store.keys.streams("default"), "victim", 10, None)
    for i in range(3):
        await store.redis.xclaim(stream, "agents", f"victim{i}", 0, [entry_id])
    await asyncio.sleep(1.1)
    worker = await drain(app, reclaim_interval=0.1)
    assert runs == [] and worker.stats.dead == 1
    st = await client.status(wf_id)
    assert st.status == "failed" and st.error is not None
    assert (
        st.error.type == "DeliveryLimitExceeded"
        and "delivered 5 times (limit 3)" in st.error.message
    )
    [letter] = await client.dead_letters()
    assert letter.reason.startswith("delivered 5 times") and letter.workflow_id == wf_id


async def test_worker_waits_for_redis_at_start(tmp_path: Path, namespace: str) -> None:
    server = EmbeddedRedis(tmp_path / "r", appendonly=False)  # not started yet
    wf = Workflow("late")
    wf.step(lambda ctx, x: x, name="echo")
    app = App([wf], redis_url=server.url, namespace=namespace, partitions=2)
    worker = Worker(app, block_ms=50)
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0.5)
    assert not running.done()  # no crash loop: it backs off and waits
    try:
        await asyncio.to_thread(server.start)
        async with AsyncClient(app=app) as client:
            wf_id = await client.start("late", "finally")
            assert await client.result(wf_id, timeout=10) == "finally"
        worker.request_stop()
        await asyncio.wait_for(running, 10)
    finally:
        server.close()


async def test_concurrency_is_a_hard_limit(make_app: MakeApp, client_for: ClientFor) -> None:
    running, peak = 0, 0
    wf = Workflow("limited")

    @wf.step
    async def work(ctx, x):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return x

    app = make_app(wf, partitions=8)  # more streams than slots: COUNT is per stream
    client = client_for(app)
    ids = [await client.start("limited", i) for i in range(40)]
    worker = await drain(app, concurrency=3, reclaim_interval=0.05)
    assert worker.stats.completed == 40 and peak == 3
    assert [await client.result(i, timeout=1) for i in ids] == list(range(40))


async def test_leases_are_renewed_while_draining(make_app: MakeApp, client_for: ClientFor) -> None:
    runs: list[str] = []
    started = asyncio.Event()
    wf = Workflow("drain")

    @wf.step
    async def slow(ctx, x):
        runs.append(ctx.worker)
        started.set()
        await asyncio.sleep(2.5)  # longer than two visibility timeouts, inside the drain
        return x

    app = make_app(wf, visibility_timeout=1)
    client = client_for(app)
    wf_id = await client.start("drain", 1)
    stopping = Worker(app, name="stopping", block_ms=50, drain_timeout=10)
    first = asyncio.create_task(stopping.run())
    await started.wait()
    stopping.request_stop()  # drain starts now, with the step still running
    thief = Worker(app, name="thief", block_ms=50, reclaim_interval=0.1)
    second = asyncio.create_task(thief.run(until_idle=True))
    await asyncio.gather(first, second)
    assert runs == ["stopping"] and thief.stats.reclaimed == 0
    assert (await client.status(wf_id)).history[0].worker == "stopping"


async def test_attempts_count_crashed_deliveries(make_app: MakeApp, client_for: ClientFor) -> None:
    attempts: list[int] = []
    wf = Workflow("counted")

    @wf.step(retries=2, backoff=0.01)
    def flaky(ctx, x):
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise RuntimeError("first run fails")
        return x

    app = make_app(wf, visibility_timeout=1)
    client = client_for(app)
    wf_id = await client.start("counted", 1)
    store = client.store
    await store.ensure_groups(["default"])
    await store.read(store.keys.streams("default"), "crashed", 10, None)  # delivery 1: dies
    await asyncio.sleep(1.1)
    await drain(app, reclaim_interval=0.1)
    assert attempts == [2, 3]  # the crash was attempt 1; the retry after it is attempt 3
    assert await client.result(wf_id, timeout=1) == 1
