"""`conveyor top`: the view model from two snapshots (numbers, not pixels), and the command
as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest
from rich.console import Console

from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.observability.top import Latency, QueueRow, WorkerRow, build_view, render
from conveyor.settings import Settings
from conveyor.storage.connection import connect
from conveyor.storage.snapshot import QueueSnapshot, StreamStats
from conveyor.storage.store import Store
from tests.observability.test_exporter import CLI, ROOT, heartbeat, prepare


def beat(
    name: str, started_at: float, completed: int, failed: int = 0, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name, "host": "box", "pid": 7, "queues": ["default"], "started_at": started_at,
        "seen_at": started_at, "concurrency": 8, "in_flight": 0,
        "stats": {"completed": completed, "failed": failed}, **extra,
    }  # fmt: skip


def snapshot(
    now: float,
    workers: list[dict[str, Any]],
    streams: list[StreamStats] | None = None,
    recorded: int | None = 4,
) -> QueueSnapshot:
    return QueueSnapshot(now, streams or [], [0, 2, 0, 1], workers, None, recorded, 1)


def stream(
    queue: str, p: int, length: int, pending: int, lag: int, age: float, delayed: int
) -> StreamStats:
    return StreamStats(queue, p, f"ns:{{p{p}}}:q:{queue}", length, pending, lag, age, delayed)


def test_throughput_from_two_snapshots_as_workers_come_and_go() -> None:
    before = snapshot(100.0, [
        beat("steady", 50, completed=10, failed=1, seen_at=99.5),
        beat("restarted", 60, completed=500, seen_at=99.8),
        beat("stopped", 70, completed=7, seen_at=99.9),
        beat("quiet", 80, completed=3, seen_at=99.6),
    ])  # fmt: skip
    after = snapshot(102.0, [
        # +20 and +1 in the 2 s between its own heartbeats
        beat("steady", 50, completed=30, failed=2, seen_at=101.5),
        # a new process (another start time): 4 in its first 0.5 s
        beat("restarted", 101, completed=4, seen_at=101.5),
        # started in between: 6 and 1 in its first second
        beat("new", 100.5, completed=6, failed=1, seen_at=101.5),
        # ran before but was not seen: no baseline yet
        beat("unseen", 20, completed=1000, seen_at=101.5),
        # no heartbeat since the previous snapshot: nothing to compare
        beat("quiet", 80, completed=3, seen_at=99.6),
    ])  # fmt: skip
    rates = build_view(after, before).rates
    assert rates is not None and rates.measured == 3
    assert rates.per_second == {"completed": 10 + 8 + 6, "failed": 0.5 + 1, "retried": 0, "dead": 0}
    assert build_view(after, None).rates is None  # first frame: nothing to compare with


def test_counters_never_make_negative_rates() -> None:
    before = snapshot(10.0, [beat("w", 1, completed=10, seen_at=9.0)])
    after = snapshot(11.0, [beat("w", 1, completed=3, seen_at=10.0)])
    rates = build_view(after, before).rates
    assert rates is not None and rates.per_second["completed"] == 0


def test_latency_is_merged_over_workers() -> None:
    workers = [
        beat("a", 1, 0, latency={"step": {"p50": 0.010, "p95": 0.05, "p99": 0.1, "count": 30}}),
        beat("b", 1, 0, latency={"step": {"p50": 0.020, "p95": 0.04, "p99": 0.3, "count": 10},
                                 "workflow": {"p50": 2.0, "p95": 3.0, "p99": 4.0, "count": 5}}),
        beat("idle", 1, 0, latency={"step": {"p50": None, "p95": None, "p99": None, "count": 0}}),
        beat("old", 1, 0),  # a heartbeat without latency
    ]  # fmt: skip
    view = build_view(snapshot(5.0, workers), None)
    assert view.step_latency == Latency(p50=pytest.approx(0.0125), p95=0.05, p99=0.3, count=40)
    assert view.workflow_latency == Latency(p50=2.0, p95=3.0, p99=4.0, count=5)
    assert build_view(snapshot(5.0, []), None).step_latency == Latency(None, None, None, 0)


def test_queues_workers_and_dead_letters() -> None:
    streams = [
        stream("default", 0, 6, 2, 4, 9.0, 0), stream("default", 1, 3, 0, 3, 4.0, 2),
        stream("llm", 0, 0, 0, 0, 0.0, 0), stream("llm", 1, 1, 1, 0, 1.0, 3),
    ]  # fmt: skip
    w = beat("w1", 90, completed=12, in_flight=3)
    w["seen_at"] = 99.5
    view = build_view(snapshot(100.0, [w], streams), None)
    assert view.queues == [
        QueueRow("default", backlog=9, lag=7, pending=2, oldest_age=9.0, delayed=2, workers=1),
        QueueRow("llm", backlog=1, lag=0, pending=1, oldest_age=1.0, delayed=3, workers=0),
    ]
    assert view.workers == [WorkerRow("w1", "box", 7, ["default"], 3, 8, 12, 0.5)]
    assert view.dead_letters == 3
    assert view.warning is None
    assert "CONVEYOR_PARTITIONS=16" in (
        build_view(snapshot(1.0, [], recorded=16), None).warning or ""
    )
    console = Console(record=True, width=160)
    console.print(render(view, "title"))
    text = console.export_text()
    assert "default" in text and "w1" in text and "dead letters: 3" in text


# -- the command -----------------------------------------------------------------------------


def top(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "top", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
    )  # fmt: skip


def row(output: str, first_cell: str) -> list[str]:
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


async def test_top_once_prints_the_queues(redis7: EmbeddedRedis, namespace: str) -> None:
    redis = connect(redis7.url)
    store = Store(redis, Settings(redis_url=redis7.url, namespace=namespace, partitions=4))
    try:
        await prepare(store)
        await heartbeat(store, "w1", ["default", "llm"], in_flight=2,
                        stats={"completed": 41, "failed": 0})  # fmt: skip
    finally:
        await redis.aclose()
    env = {"REDIS_URL": redis7.url, "CONVEYOR_NAMESPACE": namespace, "CONVEYOR_PARTITIONS": "4"}
    result = top(env, "--once", "--interval", "0.1", "--queue", "default", "--queue", "llm")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # queue, backlog, lag, pending, oldest, delayed, workers
    default = row(out, "default")
    assert default[:4] == ["default", "11", "7", "4"] and default[5:] == ["2", "1"]
    assert 9 <= float(default[4].removesuffix(" s")) < 15
    assert row(out, "llm")[:4] == ["llm", "3", "2", "1"]
    assert row(out, "llm")[5:] == ["3", "1"]
    worker = row(out, "w1")
    assert worker[1:6] == ["box", "4242", "default,llm", "2/64", "41"]
    assert "steps/s: completed 0.0  failed 0.0  retried 0.0  dead 0.0" in out
    assert "dead letters: 3" in out


def test_top_once_without_redis_is_one_readable_line() -> None:
    result = top({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "--once")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis"), result.stderr


def test_top_live_keeps_trying_until_ctrl_c() -> None:
    proc = subprocess.Popen(
        [*CLI, "top", "--interval", "0.2"], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    )  # fmt: skip
    try:
        time.sleep(2.0)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "cannot reach Redis" in out
    assert "Traceback" not in out + err
