"""``conveyor worker --autoscale``: the decisions, the backlog signal read from a real
Redis, and a real supervisor growing and shrinking its worker processes through a burst
without losing or doubling a workflow. Also the worker's health port (/healthz, /readyz,
/drain), which the Helm chart's probes and preStop hook call."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis

from conveyor import App, AsyncClient
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.errors import ConfigurationError
from conveyor.scaling.local import AutoscaleOptions, BacklogSignal, LocalAutoscaler, parse_range
from conveyor.settings import Settings
from conveyor.storage.snapshot import queue_snapshot
from conveyor.worker.health import STALL_AFTER, HealthBoard
from tests.apps import slow
from tests.cli.test_cli import assert_one_line_error, conveyor
from tests.helpers import until_async

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["fetch", "enrich", "store"]


def test_parse_range() -> None:
    assert parse_range("2:8") == (2, 8)
    assert parse_range(" 1 : 1 ") == (1, 1)
    for bad in ("8", "a:b", "3:1", "0:2", "-1:2", "1:2:3"):
        with pytest.raises(ConfigurationError, match="--autoscale"):
            parse_range(bad)


def test_autoscaler_syncs_on_its_interval_and_keeps_count_when_blind() -> None:
    now = [0.0]
    readings: list[int | None] = [900, None, 0, 0]
    scaler = LocalAutoscaler(
        AutoscaleOptions(1, 10, target=100, interval=5, down_window=20),
        lambda: readings.pop(0),
        clock=lambda: now[0],
    )
    assert scaler.poll(1) is None  # not time yet
    now[0] = 5
    assert scaler.poll(1) == 5  # 900/100 = 9, but at most +4 per 15 s
    now[0] = 6
    assert scaler.poll(5) is None
    now[0] = 10
    assert scaler.poll(5) is None  # Redis unreadable: no decision
    now[0] = 15
    assert scaler.poll(5) == 5  # empty, but the scale-down window remembers 9
    now[0] = 66  # the window has passed, and the minute of the scale-up too
    assert scaler.poll(5) == 2  # at most half per minute: int(5 * 0.5)
    assert readings == []


async def test_backlog_signal_reads_redis_and_survives_it_being_down(
    redis7: EmbeddedRedis, namespace: str
) -> None:
    app = App(workflows=[slow.slow], redis_url=redis7.url, namespace=namespace, partitions=4)
    async with AsyncClient(app=app) as client:
        for i in range(7):
            await client.start("slow", i)
    source = BacklogSignal(app.settings, app.queues)
    try:
        # a worker-less queue: every first step waits undelivered
        assert await asyncio.to_thread(source.read) == 7
    finally:
        await asyncio.to_thread(source.close)
    down = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    blind = BacklogSignal(down, ["default"])
    try:
        assert await asyncio.to_thread(blind.read) is None
    finally:
        await asyncio.to_thread(blind.close)


def test_cli_refuses_bad_autoscale_options(redis7: EmbeddedRedis, namespace: str) -> None:
    env = {"REDIS_URL": redis7.url, "CONVEYOR_NAMESPACE": namespace}
    assert_one_line_error(
        conveyor("worker", "conveyor.demo:app", "--autoscale", "4:2", env=env),
        "--autoscale needs 1 <= MIN <= MAX",
    )
    assert_one_line_error(
        conveyor("worker", "conveyor.demo:app", "--autoscale", "many", env=env),
        "--autoscale takes MIN:MAX",
    )
    assert_one_line_error(
        conveyor("worker", "conveyor.demo:app", "-p", "2", "--autoscale", "1:2", env=env),
        "use either --processes or --autoscale",
    )
    assert_one_line_error(
        conveyor(
            "worker",
            "conveyor.demo:app",
            "--autoscale",
            "1:2",
            "--scale-down-window",
            "-1",
            env=env,
        ),
        "a stabilization window cannot be negative",
    )


def test_health_board_reports_stalls_and_readiness() -> None:
    board = HealthBoard(3)
    assert board.problems([], ready=False) == ["no worker process running"]
    board.starting(0)
    now = time.time()
    assert board.problems([0], ready=False) == []  # just started: alive
    assert board.problems([0], ready=True) == ["process 0: starting"]
    board.tick(0, beat=now)
    board.tick(1, beat=now - 30)
    assert board.problems([0], ready=True) == []
    assert board.problems([0, 1], ready=True) == ["process 1: no heartbeat reached Redis for 30s"]
    assert board.problems([0, 1], ready=False) == []  # Redis away is not a reason to restart
    later = now + STALL_AFTER + 1
    assert board.problems([0], ready=False, now=later) == [
        f"process 0: event loop stalled for {STALL_AFTER + 1:.0f}s"
    ]
    board.draining = True
    assert board.problems([0], ready=True) == ["draining"]


@pytest.mark.timeout(180)
async def test_autoscale_grows_through_a_burst_shrinks_after_and_loses_nothing(
    redis7: EmbeddedRedis, namespace: str
) -> None:
    """2:4 processes, each running two 0.2 s steps at a time. A burst of 60 three-step
    workflows asks for 4; after it drains, while a trickle keeps steps in flight, the
    scale-down window passes and two processes are let go (drained, not killed). Every
    workflow completes with each step committed once and run once."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis7.url,
        "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_PARTITIONS": "4",
        "TEST_STEP_SECONDS": "0.2",
        "PYTHONPATH": str(ROOT),
    }
    supervisor = spawn(
        [
            sys.executable, "-m", "conveyor", "worker", "tests.apps.slow:app",
            "--autoscale", "2:4", "--autoscale-target", "10", "--autoscale-interval", "0.5",
            "--scale-down-window", "3", "--concurrency", "2", "--drain-timeout", "10",
            "--metrics-port", str(port), "--log-format", "console",
        ],
        env,
    )  # fmt: skip
    app = App(workflows=[slow.slow], redis_url=redis7.url, namespace=namespace, partitions=4)
    client = AsyncClient(app=app)
    r = aredis.Redis.from_url(redis7.url)
    seen: list[int] = []

    async def live_workers() -> int:
        snap = await queue_snapshot(client.store, ["default"])
        seen.append(len(snap.workers))
        return len(snap.workers)

    try:
        ids: list[str] = []
        try:
            await until_async(
                lambda: _ready(port), 30, "the supervisor's two processes to be ready"
            )
            assert await live_workers() == 2, (namespace, await r.keys("*"))
            ids += [await client.start("slow", i) for i in range(60)]
            await until_async(lambda: _equals(live_workers(), 4), 30, "a scale-up to 4 processes")

            async def trickle() -> None:
                for i in range(60, 200):
                    ids.append(await client.start("slow", i))
                    await asyncio.sleep(0.1)

            feeding = asyncio.create_task(trickle())
            try:
                await until_async(lambda: _equals(live_workers(), 2), 60, "a scale-down to 2")
            finally:
                feeding.cancel()
            await until_async(lambda: _ready(port), 15, "readiness after the scale-down")
            for wf_id in ids:
                result = await client.result(wf_id, timeout=60)
                assert result == {"value": (int(await _input(client, wf_id)) + 1) * 2}
        finally:
            supervisor.send_signal(signal.SIGTERM)
            output = supervisor.communicate(timeout=40)[0].decode()
        assert supervisor.returncode == 0, output
        assert re.search(r"autoscale: backlog \d+ for 2 processes .*: 2 -> 4", output), output
        down = r"autoscale: backlog \d+ for [34] processes .*: [34] -> [23]"
        assert re.search(down, output), output
        assert re.search(r"autoscale: .*: [34] -> 2\n", output), output
        # let go, not killed: the first let-go process's exit is always logged; the second's may
        # be reaped in the shutdown that SIGTERM starts (its heartbeat goes, which the test
        # waits for, just before the supervisor sees it exit)
        assert 1 <= output.count("drained and exited (0)") <= 2, output
        assert "did not stop in time" not in output, output
        assert max(seen) == 4
        for wf_id in ids:
            st = await client.status(wf_id)
            assert [h.step for h in st.history if h.status == "completed"] == STEPS, wf_id
            for step in STEPS:  # drained, not cut short: no step ran twice
                assert int(await r.get(f"{namespace}:ran:{wf_id}:{step}") or 0) == 1
    finally:
        await client.close()
        await r.aclose()


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


async def _ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{port}/readyz", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


async def _equals(value: Any, expected: int) -> bool:
    return await value == expected


async def _input(client: AsyncClient, wf_id: str) -> Any:
    return (await client.status(wf_id)).input
