"""The engine behind Redis Sentinel: a master, a replica and 3 Sentinels started by the test.
Killing the master makes the Sentinels promote the replica; the worker, the API and the
client follow the new master without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.storage.connection import RedisTarget, connect
from tests.ha.harness import committed_once, engine, run_tours, send
from tests.topologies import SentinelGroup


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with SentinelGroup(tmp_path / "sentinel") as g:
        yield g


def test_the_url_names_the_sentinels_and_the_master(group: SentinelGroup) -> None:
    target = RedisTarget.parse(group.url)
    assert target.topology == "sentinel" and target.master == SentinelGroup.MASTER_NAME
    assert [port for _, port in target.hosts] == [s.port for s in group.sentinels]


async def test_a_client_follows_the_master_across_a_failover(group: SentinelGroup) -> None:
    redis: Any = connect(group.url)
    try:
        await redis.set("before", 1)
        # replication is asynchronous: without this WAIT the kill can beat the write to the
        # replica, and the write is lost (what durability="replicated" is for)
        assert await redis.execute_command("WAIT", 1, 5000) == 1
        old = (await redis.connection_pool.get_master_address())[1]
        await asyncio.to_thread(group.failover)
        deadline = time.monotonic() + 30
        while True:  # the first commands after the kill fail: then it reconnects by itself
            try:
                await redis.set("after", 2)
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        new = (await redis.connection_pool.get_master_address())[1]
        assert new != old and new == group.master_port()
        assert await redis.get("before") == b"1"
    finally:
        await redis.aclose()


async def start_over_http(http: httpx.AsyncClient, i: int, deadline: float) -> str:
    """Start ``triple`` with an idempotency key until it is acknowledged (202): a start
    answered 503 during the failover is sent again and returns the same workflow."""
    response = await send(
        http, "POST", "/v1/workflows/triple", ok=(202,), deadline=deadline, json=i,
        headers={"Idempotency-Key": f"k{i}"},
    )  # fmt: skip
    return str(response.json()["id"])


async def test_worker_api_and_client_follow_a_failover(
    group: SentinelGroup, namespace: str
) -> None:
    """In durability=replicated mode: workflows before, during and after the master's death
    all complete, through the same worker and API processes (no restart)."""
    with engine(group.url, namespace, CONVEYOR_DURABILITY="replicated") as stack:
        await run_tours(stack, 3)
        pids = {name: p.pid for name, p in stack.processes.items()}
        async with stack.http() as http:
            deadline = time.monotonic() + 90
            ids = [await start_over_http(http, i, deadline) for i in range(30)]
            failover = asyncio.create_task(asyncio.to_thread(group.failover))
            i = 30
            while not failover.done() or i < 90:
                ids.append(await start_over_http(http, i, deadline))
                i += 1
            done = await failover
            assert len(set(ids)) == len(ids) == i, "two starts were given one workflow"
            for n, wf_id in enumerate(ids):
                response = await send(
                    http, "GET", f"/v1/workflows/{wf_id}/result", params={"wait": 60}
                )
                assert response.json()["result"] == {"value": (n + 1) * 2}
        await run_tours(stack, 3)  # signals, timers, children on the new master too
        client = stack.client()
        try:
            for wf_id in ids:
                status = await client.status(str(wf_id))
                assert set(committed_once(status.history).values()) == {1}, status.history
        finally:
            await client.close()
        assert all(stack.alive().values()), stack.output
        assert {name: p.pid for name, p in stack.processes.items()} == pids
    assert done.old != done.new
