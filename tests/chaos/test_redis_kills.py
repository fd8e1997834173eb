"""Redis SIGKILLed ten times under load, with the AOF fsynced on every write: no workflow
whose start was acknowledged is lost, no transition is committed twice, and the same worker
and API processes carry on each time (no restart), within a few seconds."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from .checker import endless, recovery, reruns, slowest
from .conftest import Lab
from .harness import rounded, sized

KILLS = 10
UP = sized((0.6, 1.2), (3.0, 6.0))  # seconds Redis runs between kills
DOWN = sized((0.1, 0.6), (0.5, 3.0))  # seconds it stays down
RATE = sized(100.0, 300.0)  # submissions per second, half through each way in
RECOVERY = 5.0

pytestmark = pytest.mark.timeout(sized(150, 900))


async def test_redis_sigkills_with_aof(lab: Lab) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = lab.redis(appendonly=True, fsync="always")
    await server.start()
    env = lab.env(server.url, CHAOS_STEP_MS="5")
    fleet = lab.fleet(env, "--concurrency", "32")
    workers = await fleet.start(2)
    api = lab.api(env)
    await api.ready()
    checker = lab.checker(server.url, [lab.client(server.url), lab.http(api)])
    stop = asyncio.Event()
    load = asyncio.create_task(checker.submit_all(endless(), rate=RATE, stop=stop))
    outages: list[tuple[float, float]] = []  # (killed, answering again)
    began = time.monotonic()
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(*UP))
        killed = server.kill()
        await asyncio.sleep(rng.uniform(*DOWN))
        await server.start()
        assert server.up_at is not None
        outages.append((killed, server.up_at))
    await asyncio.sleep(2.0)
    stop.set()
    await load
    drained = await checker.drain(sized(60, 300))
    elapsed = time.monotonic() - began
    same = [p.alive for p in workers] + [api.popen.poll() is None]
    exits = await fleet.stop()
    verdict = await checker.verdict()

    attempts = lab.attempts.read()
    recoveries = [recovery(checker, attempts, up) for _, up in outages]
    worst = slowest(recoveries)
    report = lab.report
    report.add(
        seed=seed, kills=len(outages), seconds=rounded(elapsed), drain_s=rounded(drained),
        down_s=[rounded(up - killed) for killed, up in outages], recovery_s=worst,
        reruns=reruns(attempts), latency=checker.latency(),
    )  # fmt: skip
    verdict.require_clean(report)
    report.require("kills", len(outages), f"== {KILLS}", len(outages) == KILLS)
    report.require("same_processes", same, "all alive", all(same))
    unexpected = fleet.unexpected_exits()
    report.require("unexpected_worker_exits", len(unexpected), "== 0", not unexpected)
    report.require("worker_processes", len(fleet.processes), "== 2", len(fleet.processes) == 2)
    for name, seconds in worst.items():
        report.require(f"recovery_s.{name}", seconds, f"<= {RECOVERY:g}",
                       seconds is not None and seconds <= RECOVERY)  # fmt: skip
    report.require("clean_stops", sorted(set(exits.values())), "all 0",
                   all(code == 0 for code in exits.values()))  # fmt: skip
    report.assert_met()
