"""Failure scenarios with real processes: a worker killed with SIGKILL mid-step, a worker
stopped with SIGTERM, and Redis restarted mid-run. Every workflow must complete with each
step's transition written exactly once (counted in the history)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from conveyor import App, AsyncClient, Worker
from conveyor.embedded import EmbeddedRedis
from tests.apps import slow
from tests.helpers import until_async as wait_for

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["fetch", "enrich", "store"]
#: Deadline of a wait for a worker process to get going: an interpreter importing the engine
#: takes seconds on a loaded 2-core machine, and a wait on a condition ends when it holds.
STARTUP = 60.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    # its own server (with AOF): these tests kill and restart things
    with EmbeddedRedis(tmp_path / "redis", appendonly=True, fsync="always") as s:
        yield s


def env_for(server: EmbeddedRedis, namespace: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": server.url,
        "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_PARTITIONS": "4",
        "CONVEYOR_VISIBILITY_TIMEOUT": "2",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def spawn_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "worker", "tests.apps.slow:app", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
async def setup(
    server: EmbeddedRedis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[App, AsyncClient, aredis.Redis, dict[str, str]]]:
    env = env_for(server, namespace)
    for key in (
        "REDIS_URL",
        "CONVEYOR_NAMESPACE",
        "CONVEYOR_PARTITIONS",
        "CONVEYOR_VISIBILITY_TIMEOUT",
    ):
        monkeypatch.setenv(key, env[key])
    app = App(workflows=[slow.slow, slow.fan])
    client = AsyncClient(app=app)
    r = aredis.Redis.from_url(server.url)
    yield app, client, r, env
    await client.close()
    await r.aclose()


async def kill_worker_inside_steps(
    env: dict[str, str], r: aredis.Redis, namespace: str, steps: int
) -> None:
    """Run a worker process and SIGKILL it once it is inside ``steps`` steps (it has claimed
    their entries): they are left pending for another worker to take over."""
    doomed = spawn_worker(env, "--concurrency", "8")
    try:
        await wait_for(
            lambda: _int(r.get(f"{namespace}:running"), steps), STARTUP, "steps to start"
        )
        doomed.send_signal(signal.SIGKILL)
    finally:
        doomed.kill()
        doomed.communicate(timeout=10)


async def assert_exactly_once(client: AsyncClient, ids: list[str]) -> list[Any]:
    results = []
    for i, wf_id in enumerate(ids):
        st = await client.status(wf_id)
        assert st.status == "completed", (wf_id, st.status)
        completed = [h.step for h in st.history if h.status == "completed"]
        assert completed == STEPS, f"{wf_id}: step transitions {completed}"
        assert st.result == {"value": (i + 1) * 2}
        results.append(st)
    return results


async def test_sigkill_mid_step_another_worker_takes_over(setup: Any, namespace: str) -> None:
    app, client, r, env = setup
    ids = [await client.start("slow", i) for i in range(12)]
    await kill_worker_inside_steps(env, r, namespace, 4)
    pending = sum([
        (await r.xpending(s, "agents"))["pending"] for s in client.store.keys.streams("default")
    ])  # fmt: skip
    assert pending > 0  # the dead worker left entries in flight
    rescuer = Worker(app, block_ms=50, reclaim_interval=0.2, promote_interval=0.02)
    await asyncio.wait_for(rescuer.run(until_idle=True), 60)
    assert rescuer.stats.reclaimed >= 1
    await assert_exactly_once(client, ids)
    # side effects ran at least once; the killed steps ran again (at-least-once)
    reruns = 0
    for wf_id in ids:
        for step in STEPS:
            ran = int(await r.get(f"{namespace}:ran:{wf_id}:{step}") or 0)
            assert ran >= 1
            reruns += ran - 1
    assert reruns >= 1


async def test_sigterm_drains_in_flight_steps_and_exits_zero(setup: Any, namespace: str) -> None:
    app, client, r, env = setup
    ids = [await client.start("slow", i) for i in range(10)]
    worker = spawn_worker(env, "--concurrency", "4", "--drain-timeout", "10")
    await wait_for(lambda: _int(r.get(f"{namespace}:running"), 2), STARTUP, "steps to start")
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=STARTUP)
    assert worker.returncode == 0, output.decode()
    assert b"stopped" in output
    # what it had started, it finished: nothing of it is left pending for anyone
    for stream in client.store.keys.streams("default"):
        assert (await r.xpending(stream, "agents"))["pending"] == 0
    finisher = Worker(app, block_ms=50, promote_interval=0.02)
    await asyncio.wait_for(finisher.run(until_idle=True), 60)
    assert finisher.stats.reclaimed == 0
    await assert_exactly_once(client, ids)
    for wf_id in ids:  # nothing ran twice: drained steps were committed before exit
        for step in STEPS:
            assert int(await r.get(f"{namespace}:ran:{wf_id}:{step}") or 0) == 1


async def test_sigterm_hands_back_steps_that_outlive_the_drain(
    setup: Any, namespace: str, server: EmbeddedRedis
) -> None:
    _, client, r, _ = setup
    env = env_for(server, namespace, TEST_STEP_SECONDS="3", CONVEYOR_VISIBILITY_TIMEOUT="30")
    ids = [await client.start("slow", i) for i in range(3)]
    worker = spawn_worker(env, "--concurrency", "4", "--drain-timeout", "0.2")
    await wait_for(lambda: _int(r.get(f"{namespace}:running"), 3), STARTUP, "steps to start")
    delivered = time.monotonic()  # the entries were delivered before this instant
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=STARTUP)
    assert worker.returncode == 0 and b"handed back 3" in output, output.decode()
    # the visibility timeout is 30 s, yet the handed-back entries are taken over before it
    # could have expired: only a hand-back makes them claimable that soon
    fast = App(workflows=[slow.slow], visibility_timeout=30)
    rescuer = Worker(fast, block_ms=50, reclaim_interval=0.2, promote_interval=0.02)
    rescue = asyncio.create_task(rescuer.run(until_idle=True))
    await wait_for(lambda: _reclaimed_at_least(rescuer, 3), 30, "the hand-back to be taken over")
    assert time.monotonic() - delivered < 30
    await asyncio.wait_for(rescue, 90)
    assert rescuer.stats.reclaimed == 3
    await assert_exactly_once(client, ids)


async def test_redis_restart_mid_run_loses_nothing(server: EmbeddedRedis, namespace: str) -> None:
    async def fetch(ctx, n):
        await asyncio.sleep(0.002)
        return n + 1

    async def enrich(ctx, n):
        await asyncio.sleep(0.002)
        return n * 2

    def store(ctx, n):
        return {"value": n}

    from conveyor import Workflow

    app = App(
        workflows=[Workflow.pipeline("slow", [fetch, enrich, store])],
        redis_url=server.url, namespace=namespace, partitions=4, visibility_timeout=2,
    )  # fmt: skip
    client = AsyncClient(app=app)
    ids = [await client.start("slow", i) for i in range(300)]
    worker = Worker(app, concurrency=16, block_ms=50, promote_interval=0.02)
    running = asyncio.create_task(worker.run(until_idle=True))
    await wait_for(lambda: _completed_at_least(worker, 60), STARTUP, "progress")
    assert worker.stats.completed < 900  # still mid-run when Redis goes down
    # in a thread, so the worker keeps running (and failing to reach Redis) meanwhile
    await asyncio.to_thread(server.restart, graceful=True, down_for=1.0)
    await asyncio.wait_for(running, 90)
    await assert_exactly_once(client, ids)
    await client.close()


async def _reclaimed_at_least(worker: Worker, n: int) -> bool:
    return worker.stats.reclaimed >= n


async def _completed_at_least(worker: Worker, n: int) -> bool:
    return worker.stats.completed >= n


async def _int(value: Any, at_least: int) -> bool:
    return int(await value or 0) >= at_least


async def test_timers_and_waits_survive_redis_kill_and_a_new_worker(
    server: EmbeddedRedis, namespace: str
) -> None:
    """A sleeping workflow, a delayed start and a parked wait (with its timeout) are all
    state in Redis: with AOF (fsync always) they survive SIGKILL of Redis, and a worker that
    never saw them before finishes them."""
    from conveyor import Workflow, is_timeout, sleep, wait

    wf = Workflow("durable")

    @wf.step(start=True)
    async def begin(ctx, mode: str):
        if mode == "sleep":
            return sleep(1.0, then=end, input="slept")
        return wait("go", then=end, timeout=1.0 if mode == "timeout" else None)

    @wf.step
    async def end(ctx, value: Any):
        return "timed out" if is_timeout(value) else value

    app = App(workflows=[wf], redis_url=server.url, namespace=namespace, partitions=4,
              visibility_timeout=2)  # fmt: skip
    client = AsyncClient(app=app)
    ids = {mode: await client.start("durable", mode) for mode in ("sleep", "timeout", "wait")}
    delayed = await client.start("durable", "sleep", delay=1.0)
    first = Worker(app, block_ms=50, promote_interval=0.02)
    await first.start()
    await wait_for(lambda: _completed_at_least(first, 3), STARTUP, "steps reached their timers")
    await first.stop()  # nothing of those timers lives in the worker
    await asyncio.to_thread(server.restart, graceful=False, down_for=0.2)  # SIGKILL
    await client.signal(ids["wait"], "go", "signalled")
    second = Worker(app, block_ms=50, promote_interval=0.02)
    await asyncio.wait_for(second.run(until_idle=True), 30)
    results = {mode: await client.result(i, timeout=5) for mode, i in ids.items()}
    assert results == {"sleep": "slept", "timeout": "timed out", "wait": "signalled"}
    assert await client.result(delayed, timeout=5) == "slept"
    await client.close()


async def test_sigkill_mid_fan_out_joins_exactly_once(setup: Any, namespace: str) -> None:
    """A worker killed while branches of fan-outs run: another worker takes them over; each
    join runs once (one join task committed) with every branch's result in item order."""
    app, client, r, env = setup
    ids = [await client.start("fan", n) for n in range(4)]
    await kill_worker_inside_steps(env, r, namespace, 6)
    rescuer = Worker(app, block_ms=50, reclaim_interval=0.2, promote_interval=0.02)
    await asyncio.wait_for(rescuer.run(until_idle=True), 60)
    assert rescuer.stats.reclaimed >= 1
    for n, wf_id in enumerate(ids):
        st = await client.status(wf_id)
        assert st.status == "completed", (wf_id, st.status)
        assert st.result == [(n * 10 + i) * 2 for i in range(6)]
        completed = [h.step for h in st.history if h.status == "completed"]
        assert completed.count("branch") == 6 and completed.count("join") == 1
        assert int(await r.get(f"{namespace}:joins:{wf_id}") or 0) == 1
