"""durability="replicated": a write counts only once a replica confirmed it (WAIT), with a
bounded wait and a clear error; and the warnings about Redis settings that lose work."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import App, AsyncClient, ConfigurationError, ReplicationError, Settings, Worker
from conveyor.embedded import EmbeddedRedis
from conveyor.storage.connection import UNAVAILABLE, NoReplicasError, connect
from conveyor.storage.durability import server_warnings
from tests.apps import ha_app
from tests.ha.harness import committed_once, engine
from tests.topologies import info, wait_until


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    """A master and one replica (no Sentinel)."""
    with EmbeddedRedis(tmp_path / "master") as master:
        replica = EmbeddedRedis(
            tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(master.port)]
        )
        with replica:
            wait_until(
                lambda: info(replica.port, "replication").get("master_link_status") == "up",
                15,
                "the replica to sync",
            )
            yield master, replica


@contextmanager
def paused(server: EmbeddedRedis) -> Iterator[None]:
    """SIGSTOP the server: its connections stay open but it acknowledges nothing."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


def make_app(url: str, namespace: str, **settings: Any) -> App:
    return App(
        workflows=list(ha_app.app.workflows.values()),
        redis_url=url,
        namespace=namespace,
        visibility_timeout=3.0,
        **settings,
    )


def test_settings_refuse_an_unknown_mode() -> None:
    with pytest.raises(ConfigurationError, match="durability must be 'fast' or 'replicated'"):
        Settings(durability="sync")
    with pytest.raises(ConfigurationError, match="durability_timeout"):
        Settings(durability="replicated", durability_timeout=0)


async def test_a_start_returns_once_the_replica_has_it(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], namespace: str
) -> None:
    master, replica = pair
    app = make_app(master.url, namespace, durability="replicated")
    client = AsyncClient(app=app)
    on_replica: Any = connect(replica.url)
    try:
        for i in range(20):
            wf_id = await client.start("triple", i)
            # read straight from the replica, at once: WAIT made it hold the start already
            assert await on_replica.exists(client.store.keys.workflow(wf_id)) == 1
    finally:
        await client.close()
        await on_replica.aclose()


async def test_an_unconfirmed_start_fails_within_the_timeout_and_a_retry_is_safe(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], namespace: str
) -> None:
    master, replica = pair
    app = make_app(master.url, namespace, durability="replicated", durability_timeout=0.5)
    client = AsyncClient(app=app)
    try:
        with paused(replica):
            began = time.monotonic()
            with pytest.raises(ReplicationError, match=r"not confirmed by 1 replica.*500 ms"):
                await client.start("triple", 1, idempotency_key="order-1")
            assert time.monotonic() - began < 3  # bounded: 0.5 s, not a hang
        # the replica is back: the same key returns the same workflow, now confirmed
        first = await client.start("triple", 1, idempotency_key="order-1")
        again = await client.start("triple", 1, idempotency_key="order-1")
        assert first == again
        # fast mode does not wait: the same pause does not fail a start
        fast = AsyncClient(app=make_app(master.url, namespace))
        with paused(replica):
            await fast.start("triple", 2)
        await fast.close()
    finally:
        await client.close()


async def test_the_api_answers_503_while_no_replica_confirms(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], namespace: str
) -> None:
    master, replica = pair
    with engine(
        master.url, namespace, CONVEYOR_DURABILITY="replicated", CONVEYOR_DURABILITY_TIMEOUT="0.5"
    ) as stack:
        async with stack.http() as http:
            with paused(replica):
                refused = await http.post(
                    "/v1/workflows/triple", json=1, headers={"Idempotency-Key": "a"}
                )
            assert refused.status_code == 503
            problem = refused.json()
            assert problem["type"].endswith("not-replicated"), problem
            assert "not confirmed by 1 replica" in problem["detail"]
            assert refused.headers["Retry-After"] == "1"
            accepted = await http.post(
                "/v1/workflows/triple", json=1, headers={"Idempotency-Key": "a"}
            )
            assert accepted.status_code == 202
            wf_id = accepted.json()["id"]
            done = await http.get(f"/v1/workflows/{wf_id}/result", params={"wait": 30})
            assert done.json()["result"] == {"value": 4}


async def test_a_transition_is_committed_only_once_a_replica_confirms(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], namespace: str
) -> None:
    """While the replica is paused, steps run but their transitions are not counted as
    committed: the worker keeps them and retries; once it is back, every workflow
    completes with each step committed once."""
    master, replica = pair
    app = make_app(master.url, namespace, durability="replicated", durability_timeout=0.3)
    client = AsyncClient(app=app)
    try:
        ids = [await client.start("triple", i) for i in range(10)]
        async with Worker(app, concurrency=8) as worker:
            with paused(replica):
                await asyncio.sleep(2.0)
                stuck = worker.stats.completed
            for i, wf_id in enumerate(ids):
                assert await client.result(wf_id, timeout=30) == {"value": (i + 1) * 2}
            for wf_id in ids:
                history = (await client.status(wf_id)).history
                assert set(committed_once(history).values()) == {1}
        assert stuck == 0  # nothing counted as committed while no replica confirmed
    finally:
        await client.close()


async def test_warnings_name_the_settings_that_lose_work(tmp_path: Path) -> None:
    with EmbeddedRedis(
        tmp_path / "bad", appendonly=False, extra_args=["--maxmemory-policy", "allkeys-lru"]
    ) as bad:
        redis: Any = connect(bad.url)
        warnings = await server_warnings(redis, "replicated")
        await redis.aclose()
    assert len(warnings) == 3, warnings
    assert "appendonly no" in warnings[0]
    assert "maxmemory-policy allkeys-lru" in warnings[1]
    assert "no connected replica" in warnings[2]
    with EmbeddedRedis(tmp_path / "good", appendonly=True) as good:
        redis = connect(good.url)
        assert await server_warnings(redis, "fast") == []
        await redis.aclose()


async def test_a_worker_and_the_api_warn_at_start(
    tmp_path: Path, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    with EmbeddedRedis(tmp_path / "r", appendonly=False) as server:
        app = make_app(server.url, namespace)
        with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
            async with Worker(app):
                pass
        assert any("appendonly no" in r.getMessage() for r in caplog.records)
        with engine(server.url, namespace) as stack:
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=90) as http:
                started = await http.post("/v1/workflows/triple", json=1)
                assert started.status_code == 202, started.text
                # its result proves the worker got past its start (and its warning)
                done = await http.get(f"{started.headers['location']}/result?wait=60")
                assert done.status_code == 200, done.text
        assert "has appendonly no" in stack.output["worker0"]
        assert "has appendonly no" in stack.output["api"]


async def test_min_replicas_to_write_refusals_are_retryable(tmp_path: Path, namespace: str) -> None:
    """A master with min-replicas-to-write and no replica refuses writes (NOREPLICAS): a
    start raises NoReplicasError, one of the "unavailable" errors that callers back off
    from (API: 503), not a script error."""
    with EmbeddedRedis(tmp_path / "r", extra_args=["--min-replicas-to-write", "1"]) as server:
        client = AsyncClient(app=make_app(server.url, namespace))
        try:
            with pytest.raises(NoReplicasError, match="Not enough good replicas"):
                await client.start("triple", 1)
            assert isinstance(NoReplicasError("x"), UNAVAILABLE)
        finally:
            await client.close()
        with engine(server.url, namespace) as stack:
            async with stack.http() as http:
                refused = await http.post("/v1/workflows/triple", json=1)
                assert refused.status_code == 503, refused.text
                assert "NOREPLICAS" in refused.json()["detail"]
