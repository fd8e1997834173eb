"""The queue exporter against a real Redis: its numbers are what XLEN, XPENDING and XINFO
GROUPS say, on every Redis version available; it is scraped over HTTP as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Workflow
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.observability.queues import QueueExporter
from conveyor.settings import Settings
from conveyor.storage.connection import connect
from conveyor.storage.snapshot import QueueSnapshot, StreamStats
from conveyor.storage.store import Store
from tests.conftest import drain
from tests.helpers import until_async

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ["default", "llm"]
PARTITIONS = 4
# the observe commands on a bare Typer: the same code `conveyor exporter` / `conveyor top` run
CLI = [
    sys.executable,
    "-c",
    "import typer; from conveyor.cli.observe import register; "
    "cli = typer.Typer(); register(cli); cli()",
]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def store(make_store: Callable[..., Awaitable[Store]]) -> Store:
    return await make_store(partitions=4)


@dataclass
class Prepared:
    """What `prepare` wrote: entry ids (ms) of the oldest unacknowledged entry per stream."""

    oldest_ms: dict[tuple[str, int], int]


async def redis_ms(redis: Any) -> int:
    seconds, micros = await redis.time()
    return int(seconds * 1000 + micros // 1000)


async def heartbeat(store: Store, name: str, queues: list[str], **fields: Any) -> None:
    """A worker heartbeat as worker/lease.py writes it (key with TTL + registry member)."""
    now = await redis_ms(store.redis)
    info = {
        "name": name, "host": "box", "pid": 4242, "queues": queues,
        "started_at": now / 1000 - 60, "seen_at": now / 1000, "concurrency": 64,
        "in_flight": 0, "stats": {"completed": 0, "failed": 0}, **fields,
    }  # fmt: skip
    await store.redis.set(store.keys.worker(name), orjson.dumps(info), ex=30)
    await store.redis.zadd(store.keys.workers, {name: now})


async def add(redis: Any, stream: str, first_ms: int, n: int) -> list[str]:
    ids = [f"{first_ms}-{i}" for i in range(n)]
    for entry_id in ids:
        await redis.xadd(stream, {"workflow_id": "x", "step": "s"}, id=entry_id)
    return ids


async def prepare(store: Store) -> Prepared:
    """Two queues on four partitions, every case the exporter must tell apart:

    default p0  6 entries, 2 delivered (pending), 4 undelivered        oldest: 9 s (the PEL)
    default p1  3 undelivered, 2 delayed                               oldest: 4 s (after PEL)
    default p2  5 delivered, 3 acknowledged and trimmed: 2 pending     oldest: 7 s
    default p3  empty stream with its group
    llm p0      2 entries, no consumer group (no worker yet)           oldest: 3 s
    llm p1      3 delivered and acknowledged, not trimmed yet: nothing to do
    llm p2      no stream at all
    llm p3      1 pending, 3 delayed                                   oldest: 1 s
    dead letters: 2 on p0, 1 on p3.
    """
    r, k, group = store.redis, store.keys, store.settings.group
    await store.ensure_groups(QUEUES)
    now = await redis_ms(r)
    oldest: dict[tuple[str, int], int] = {}

    await add(r, k.stream(0, "default"), now - 9000, 6)
    await r.xreadgroup(group, "w1", {k.stream(0, "default"): ">"}, count=2)
    oldest["default", 0] = now - 9000

    await add(r, k.stream(1, "default"), now - 4000, 3)
    await r.zadd(k.delayed(1, "default"), {"t1": now + 5000, "t2": now + 9000})
    oldest["default", 1] = now - 4000

    ids = await add(r, k.stream(2, "default"), now - 7000, 5)
    await r.xreadgroup(group, "w1", {k.stream(2, "default"): ">"}, count=5)
    await r.xack(k.stream(2, "default"), group, *ids[:3])
    await r.execute_command("XTRIM", k.stream(2, "default"), "MINID", ids[3])  # as trim.lua
    oldest["default", 2] = now - 7000

    await r.xgroup_destroy(k.stream(0, "llm"), group)
    await add(r, k.stream(0, "llm"), now - 3000, 2)
    oldest["llm", 0] = now - 3000

    ids = await add(r, k.stream(1, "llm"), now - 2000, 3)
    await r.xreadgroup(group, "w2", {k.stream(1, "llm"): ">"}, count=3)
    await r.xack(k.stream(1, "llm"), group, *ids)

    await r.delete(k.stream(2, "llm"))

    await add(r, k.stream(3, "llm"), now - 1000, 1)
    await r.xreadgroup(group, "w2", {k.stream(3, "llm"): ">"}, count=1)
    await r.zadd(k.delayed(3, "llm"), {"a": now, "b": now, "c": now})
    oldest["llm", 3] = now - 1000

    for p, queue in ((0, "default"), (0, "default"), (3, "llm")):
        await r.xadd(k.dead(p), {"queue": queue, "workflow_id": "x"})
    return Prepared(oldest)


# (length, pending, lag, delayed) per (queue, partition), as prepare() built them
EXPECTED = {
    ("default", 0): (6, 2, 4, 0),
    ("default", 1): (3, 0, 3, 2),
    ("default", 2): (2, 2, 0, 0),
    ("default", 3): (0, 0, 0, 0),
    ("llm", 0): (2, 0, 2, 0),
    ("llm", 1): (3, 0, 0, 0),
    ("llm", 2): (0, 0, 0, 0),
    ("llm", 3): (1, 1, 0, 3),
}


def by_stream(snap: QueueSnapshot) -> dict[tuple[str, int], StreamStats]:
    return {(s.queue, s.partition): s for s in snap.streams}


async def test_snapshot_matches_what_redis_says(store: Store) -> None:
    prepared = await prepare(store)
    await heartbeat(store, "w1", ["default", "llm"])
    await heartbeat(store, "w2", ["llm"])
    snap = await QueueExporter(store, QUEUES).snapshot()

    got = by_stream(snap)
    assert {key: (s.length, s.pending, s.lag, s.delayed) for key, s in got.items()} == EXPECTED
    r, group = store.redis, store.settings.group
    for (queue, p), s in got.items():  # and the same read directly from Redis
        assert s.stream == store.keys.stream(p, queue)
        assert s.length == await r.xlen(s.stream)
        assert s.delayed == await r.zcard(store.keys.delayed(p, queue))
        if (queue, p) in (("llm", 0), ("llm", 2)):
            continue  # no group: XPENDING and XINFO GROUPS have nothing to say
        assert s.pending == (await r.xpending(s.stream, group))["pending"]
        (info,) = await r.xinfo_groups(s.stream)
        assert s.pending == info["pending"]
        if info.get("lag") is not None:  # Redis 7.0+
            assert s.lag == info["lag"]
        assert s.unacked == s.lag + s.pending
    for key, s in got.items():  # ages against Redis TIME, from the entry ids
        expected = snap.now - prepared.oldest_ms[key] / 1000 if key in prepared.oldest_ms else 0
        assert s.oldest_age == pytest.approx(expected, abs=0.002), key
    assert got["default", 0].oldest_age == pytest.approx(9, abs=0.5)

    assert snap.dead == [2, 0, 0, 1]
    assert sorted(w["name"] for w in snap.workers) == ["w1", "w2"]
    assert snap.workers_per_queue() == {"default": 1, "llm": 2}
    totals = {t.queue: t for t in snap.totals()}
    assert (totals["default"].backlog, totals["default"].lag, totals["default"].delayed) == (
        11,
        7,
        2,
    )
    assert (totals["llm"].backlog, totals["llm"].lag, totals["llm"].pending) == (3, 2, 1)
    assert totals["default"].oldest_age == got["default", 0].oldest_age
    assert totals["llm"].oldest_age == got["llm", 0].oldest_age
    assert snap.round_trips == 2  # the pipeline, then heartbeats + oldest undelivered entries


async def test_lag_falls_back_when_redis_cannot_count_it(store: Store) -> None:
    """An XDEL past the group's position makes Redis 7 answer lag nil (6.2 never has it):
    lag is then XLEN - pending."""
    await store.ensure_groups(["default"])
    r, stream = store.redis, store.keys.stream(0, "default")
    ids = await add(r, stream, await redis_ms(r) - 1000, 5)
    await r.xreadgroup(store.settings.group, "w1", {stream: ">"}, count=1)
    await r.xdel(stream, ids[3])
    (info,) = await r.xinfo_groups(stream)
    assert info.get("lag") is None
    snap = await QueueExporter(store, ["default"]).snapshot()
    assert (snap.streams[0].length, snap.streams[0].pending, snap.streams[0].lag) == (4, 1, 3)


async def test_zeros_when_nothing_exists(store: Store) -> None:
    exporter = QueueExporter(store, QUEUES)
    snap = await exporter.snapshot()
    assert [(s.length, s.pending, s.lag, s.oldest_age, s.delayed) for s in snap.streams] == [
        (0, 0, 0, 0.0, 0)
    ] * 8
    assert snap.dead == [0] * 4 and snap.workers == [] and snap.round_trips == 1
    samples = parse(await exporter.render())
    assert samples["conveyor_redis_up", frozenset()] == 1
    assert sum(1 for name, _ in samples if name == "redis_stream_pending") == 8
    queue_series = ("redis_", "conveyor_stream", "conveyor_queue", "conveyor_dead", "conveyor_del")
    assert all(v == 0 for (name, _), v in samples.items() if name.startswith(queue_series))
    assert len([1 for name, _ in samples if name.startswith(queue_series)]) == 8 * 6 + 4 + 2 * 4


async def test_workers_whose_key_is_gone(store: Store) -> None:
    await heartbeat(store, "alive", ["default"])
    now = await redis_ms(store.redis)
    await store.redis.zadd(store.keys.workers, {"crashed": now - 120_000, "restarting": now})
    exporter = QueueExporter(store, ["default"])
    snap = await exporter.snapshot()
    assert [w["name"] for w in snap.workers] == ["alive"]
    assert snap.round_trips == 3  # the crashed one is removed, once
    members = {m.decode() for m in await store.redis.zrange(store.keys.workers, 0, -1)}
    assert members == {"alive", "restarting"}
    assert (await exporter.snapshot()).round_trips == 2


async def test_queues_come_from_the_registry(store: Store) -> None:
    exporter = QueueExporter(store)
    assert (await exporter.snapshot()).streams == []
    await store.register({"wf": {"start": "a", "queue": "default",
                                 "steps": {"a": "default", "b": "llm"}}})  # fmt: skip
    snap = await exporter.snapshot()  # a new queue is read at once
    assert sorted({s.queue for s in snap.streams}) == QUEUES
    assert len(snap.streams) == 8
    assert (await exporter.snapshot()).round_trips == 1  # then: one round trip


async def test_real_workflows_before_and_after_a_worker(make_app: Any, client_for: Any) -> None:
    wf = Workflow("echo")

    @wf.step(start=True)
    async def first(ctx: Any, x: Any) -> Any:
        return x

    app = make_app(wf)
    client = client_for(app)
    for i in range(5):
        await client.start("echo", i)
    redis = connect(app.settings.redis_url)
    store = Store(redis, app.settings)
    try:
        before = await QueueExporter(store, ["default"]).snapshot()
        (total,) = before.totals()
        assert (total.backlog, total.lag, total.pending, total.length) == (5, 5, 0, 5)
        assert 0 < total.oldest_age < 5
        await drain(app)
        after = await QueueExporter(store).snapshot()  # the worker registered the queue
        (total,) = after.totals()
        assert (total.queue, total.backlog, total.lag, total.pending, total.oldest_age) == (
            "default",
            0,
            0,
            0,
            0.0,
        )
    finally:
        await redis.aclose()


def parse(text: bytes | str) -> Samples:
    out: Samples = {}
    body = text.decode() if isinstance(text, bytes) else text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def series(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


async def test_render(store: Store) -> None:
    await prepare(store)
    await heartbeat(store, "w1", ["default", "llm"])
    text = await QueueExporter(store, QUEUES).render()
    assert_prepared_metrics(parse(text), store)


def assert_prepared_metrics(samples: Samples, store: Store) -> None:
    k = store.keys
    for (queue, p), (length, pending, lag, delayed) in EXPECTED.items():
        assert series(samples, "redis_stream_pending", stream=k.stream(p, queue), queue=queue) == (
            lag + pending
        )
        labels = {"queue": queue, "partition": str(p)}
        assert series(samples, "conveyor_stream_length", **labels) == length
        assert series(samples, "conveyor_stream_pending", **labels) == pending
        assert series(samples, "conveyor_stream_lag", **labels) == lag
        assert series(samples, "conveyor_delayed_tasks", **labels) == delayed
    age = series(
        samples, "conveyor_stream_oldest_pending_age_seconds", queue="default", partition="0"
    )
    assert 8.5 < age < 15
    assert (
        series(samples, "conveyor_stream_oldest_pending_age_seconds", queue="llm", partition="1")
        == 0
    )
    assert [series(samples, "conveyor_dead_letters", partition=str(p)) for p in range(4)] == [
        2,
        0,
        0,
        1,
    ]
    assert series(samples, "conveyor_queue_backlog", queue="default") == 11
    assert series(samples, "conveyor_queue_backlog", queue="llm") == 3
    assert series(samples, "conveyor_queue_lag", queue="default") == 7
    assert series(samples, "conveyor_queue_delayed", queue="llm") == 3
    assert series(samples, "conveyor_queue_oldest_age_seconds", queue="default") == age
    assert series(samples, "conveyor_workers", queue="default") == 1
    assert series(samples, "conveyor_redis_up") == 1
    assert 0 < series(samples, "conveyor_exporter_scrape_duration_seconds") < 1


async def test_redis_down_is_a_metric(namespace: str) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    redis = connect(settings.redis_url)
    try:
        samples = parse(await QueueExporter(Store(redis, settings), QUEUES).render())
    finally:
        await redis.aclose()
    assert {name for name, _ in samples} == {
        "conveyor_redis_up",
        "conveyor_exporter_scrape_duration_seconds",
    }
    assert series(samples, "conveyor_redis_up") == 0


# -- the `conveyor exporter` process ---------------------------------------------------------


@pytest.fixture
def exporter_process(redis7: EmbeddedRedis, namespace: str) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(redis_url: str, *args: str) -> str:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url,
               "CONVEYOR_NAMESPACE": namespace, "CONVEYOR_PARTITIONS": str(PARTITIONS)}  # fmt: skip
        procs.append(subprocess.Popen(
            [*CLI, "exporter", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        assert "Traceback" not in out, out


async def wait_healthy(url: str) -> None:
    async with httpx.AsyncClient() as http:

        async def healthy() -> bool:
            try:
                return (await http.get(f"{url}/healthz")).text == "ok"
            except httpx.TransportError:
                return False

        await until_async(healthy, what="the exporter answering /healthz")


async def test_exporter_process_over_http(
    exporter_process: Any, redis7: EmbeddedRedis, namespace: str
) -> None:
    redis = connect(redis7.url)
    store = Store(redis, Settings(redis_url=redis7.url, namespace=namespace, partitions=4))
    try:
        await prepare(store)
        await heartbeat(store, "w1", ["default", "llm"])
        url = exporter_process(redis7.url, "--queue", "default", "--queue", "llm")
        await wait_healthy(url)
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{url}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        assert_prepared_metrics(parse(response.text), store)
    finally:
        await redis.aclose()


async def test_exporter_process_with_redis_down(exporter_process: Any) -> None:
    url = exporter_process(f"redis://127.0.0.1:{free_port()}/0")
    await wait_healthy(url)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/metrics")
    assert response.status_code == 200
    assert series(parse(response.text), "conveyor_redis_up") == 0


def test_exporter_bad_url_is_one_readable_line() -> None:
    result = subprocess.run(
        [*CLI, "exporter", "--redis-url", "http://nope"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: unsupported Redis URL 'http://nope': expected redis://, rediss://, unix://,"
        " redis+sentinel://, rediss+sentinel://, redis+cluster://, rediss+cluster://"
    ]
