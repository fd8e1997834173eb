"""The engine on a real Redis Cluster of 3 masters and 3 replicas started by the test
(`redis-server --cluster-enabled yes` + `redis-cli --cluster create`): every script, the
worker, the API, the exporter and the CLI; partitions on every master; slots moving under
load (MOVED and ASK); a master killed mid-run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from conveyor import App, AsyncClient, Worker
from conveyor.errors import ReplicationError
from conveyor.storage.connection import UNAVAILABLE, RedisTarget, connect
from conveyor.storage.keys import Keys
from tests.apps import ha_app
from tests.ha.harness import committed_once, engine, run_tours
from tests.topologies import LocalCluster, command, info


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as c:
        yield c


def test_the_url_names_every_seed_node(cluster: LocalCluster) -> None:
    target = RedisTarget.parse(cluster.url)
    assert target.topology == "cluster"
    assert [port for _, port in target.hosts] == cluster.ports


async def test_partitions_land_on_every_master(cluster: LocalCluster, namespace: str) -> None:
    """The default 16 partitions spread over all 3 masters (each partition is one slot)."""
    redis: Any = connect(cluster.url)
    try:
        await redis.initialize()
        keys = Keys(namespace, 16)
        owners = {p: redis.get_node_from_key(keys.stream(p, "default")).port for p in range(16)}
        masters = set(cluster.master_ports())
        assert set(owners.values()) == masters, owners
        # and a workflow's keys share its partition's slot
        wf = "some-workflow-id"
        p = keys.partition(wf)
        slot = int(command(cluster.ports[0], "CLUSTER", "KEYSLOT", keys.stream(p, "x")))
        assert int(command(cluster.ports[0], "CLUSTER", "KEYSLOT", keys.workflow(wf))) == slot
    finally:
        await redis.aclose()


async def test_the_whole_engine_runs_on_a_cluster(cluster: LocalCluster, namespace: str) -> None:
    """Worker, API, exporter and CLI as processes: fan-out, join, signals, sleep, child,
    retry, rate and concurrency limits, cache, cancel, batch starts, dead letters."""
    with engine(cluster.url, namespace) as stack:
        ids = await run_tours(stack, 6)
        async with stack.http() as http:
            batch = await http.post("/v1/workflows/triple/batch", json=list(range(40)))
            assert batch.status_code == 202, batch.text
            for i, wf_id in enumerate(batch.json()["ids"]):
                got = await http.get(f"/v1/workflows/{wf_id}/result", params={"wait": 30})
                assert got.json()["result"] == {"value": (i + 1) * 2}
            waiting = (await http.post("/v1/workflows/tour", json=2)).json()["id"]
            for _ in range(200):
                if (await http.get(f"/v1/workflows/{waiting}")).json()["status"] == "waiting":
                    break
                await asyncio.sleep(0.05)
            cancelled = await http.post(f"/v1/workflows/{waiting}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert (await http.get(f"/v1/workflows/{waiting}")).json()["status"] == "cancelled"
            queues = (await http.get("/v1/queues")).json()
            assert any(q["queue"] == "default" for q in queues["queues"]), queues
            metrics = (await http.get(f"{stack.exporter_url}/metrics")).text
            assert 'conveyor_queue_backlog{queue="default"}' in metrics
            assert "conveyor_redis_up 1.0" in metrics
        shown = stack.cli("status", ids[0])
        assert shown.returncode == 0 and "completed" in shown.stdout, shown.stderr
        listed = stack.cli("dlq", "list")
        assert listed.returncode == 0, listed.stderr
        top = stack.cli("top", "--once")
        assert top.returncode == 0 and "default" in top.stdout, top.stderr
        client = stack.client()
        try:
            for wf_id in ids:
                status = await client.status(wf_id)
                assert set(committed_once(status.history).values()) == {1}
        finally:
            await client.close()
        assert all(stack.alive().values()), stack.output


def slot_owner(port: int, slot: int) -> int:
    """The port of the master serving ``slot``, as node ``port`` sees it."""
    with redis.Redis(port=port) as client:
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    raise AssertionError(f"slot {slot} has no master")


def move_partitions(cluster: LocalCluster, keys: Keys) -> list[int]:
    """Move the slot of every partition the first master serves to the second master, one
    slot at a time and its keys in small batches: clients get ASK for keys already moved,
    then MOVED. Returns the partitions moved."""
    source, target = cluster.master_ports()[:2]
    moved = []
    for p in range(keys.partitions):
        slot = key_slot(keys.stream(p, "default").encode())
        if slot_owner(source, slot) == source:
            cluster.move_slot(slot, source, target)
            moved.append(p)
    return moved


@pytest.mark.timeout(300)
async def test_slots_moving_under_load_lose_nothing(cluster: LocalCluster, namespace: str) -> None:
    """The partitions of one master move to another while workflows run: every workflow
    completes, each step committed once."""
    worker_app = stack_app(cluster, namespace)
    keys = Keys(namespace, 16)
    source = cluster.master_ports()[0]
    async with Worker(worker_app, concurrency=32) as worker:
        client = AsyncClient(app=worker_app)
        try:
            ids: list[str] = []
            mover = asyncio.create_task(asyncio.to_thread(move_partitions, cluster, keys))
            deadline = time.monotonic() + 90
            while not mover.done() or len(ids) < 200:
                ids += await start_many_retrying(client, f"b{len(ids)}", 20, deadline)
                await asyncio.sleep(0.01)
            moved = await mover
            for wf_id in ids:
                assert await client.result(wf_id, timeout=30) is not None
                status = await client.status(wf_id)
                assert set(committed_once(status.history).values()) == {1}, status.history
        finally:
            await client.close()
        assert worker.stats.errors == 0
    assert moved, "no partition moved: the test did not exercise MOVED/ASK"
    # the engine's commands really were redirected (Redis counts the errors it answers)
    redirects = info(source, "errorstats")
    assert int(redirects.get("errorstat_MOVED", "count=0").split("=")[1].split(",")[0]) > 0
    target = cluster.master_ports()[1]
    assert all(
        slot_owner(target, key_slot(keys.stream(p, "default").encode())) == target for p in moved
    )


def stack_app(cluster: LocalCluster, namespace: str, **settings: Any) -> App:
    return App(
        workflows=list(ha_app.app.workflows.values()),
        redis_url=cluster.url,
        namespace=namespace,
        visibility_timeout=3.0,
        **settings,
    )


async def start_many_retrying(
    client: AsyncClient, key: str, count: int, deadline: float
) -> list[str]:
    """Start a batch as a real client does while slots move: a call that meets a passing
    outage (e.g. "TTL exhausted" after too many redirections) raises, and the batch is sent
    again with the same idempotency key, which starts nothing twice."""
    while True:
        try:
            started = await client.start_many("triple", list(range(count)), idempotency_key=key)
        except UNAVAILABLE:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        return [str(wf_id) for wf_id in started]


async def start_retrying(client: AsyncClient, key: str, value: int, deadline: float) -> str:
    """Start with an idempotency key, retrying through a failover (the key makes a retry of
    a start whose answer was lost return the same workflow)."""
    while True:
        try:
            return str(await client.start("triple", value, idempotency_key=key))
        except (*UNAVAILABLE, ReplicationError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def kill_and_revive(cluster: LocalCluster) -> None:
    cluster.revive(cluster.kill_master().old)


async def test_a_master_failover_in_replicated_mode(cluster: LocalCluster, namespace: str) -> None:
    """A master is SIGKILLed while workflows run in durability=replicated mode: a replica is
    promoted, the same worker and client carry on without a restart, and every workflow
    whose start was acknowledged completes, each step committed once. The promoted master
    has no replica until the killed node rejoins as one: writes of its slots wait for that
    (ReplicationError, retried), as replicated mode promises."""
    app = stack_app(cluster, namespace, durability="replicated")
    async with Worker(app, concurrency=32) as worker:
        client = AsyncClient(app=app)
        try:
            deadline = time.monotonic() + 60
            ids = [await start_retrying(client, f"k{i}", i, deadline) for i in range(100)]
            killer = asyncio.create_task(asyncio.to_thread(kill_and_revive, cluster))
            i = 100
            while not killer.done() or i < 300:
                ids.append(await start_retrying(client, f"k{i}", i, deadline))
                i += 1
            await killer
            for n, wf_id in enumerate(ids):
                assert await client.result(wf_id, timeout=60) == {"value": (n + 1) * 2}
                status = await client.status(wf_id)
                assert set(committed_once(status.history).values()) == {1}, status.history
        finally:
            await client.close()
        assert not worker.stopping.is_set()
