"""Redis out of memory (small maxmemory, noeviction) under load: the API answers only 202,
429 or 503, the client refuses with BackPressureError, nothing accepted is lost, and starts
are accepted again by themselves once memory frees (here: a ballast key is deleted)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor.storage.connection import connect

from .checker import ACCEPTED, endless, recovery, reruns, slowest
from .conftest import Lab
from .harness import rounded, sized, wait_until

MAXMEMORY = 32 * 1024 * 1024
HEADROOM = sized(1, 4) * 1024 * 1024  # bytes left for workflows before Redis is full
RATE = sized(200.0, 400.0)  # submissions per second, half through each way in
FULL_FOR = sized(3.0, 15.0)  # seconds of refusals before memory frees
ALLOWED = {202, 429, 503}
RECOVERY = 5.0
pytestmark = pytest.mark.timeout(sized(150, 900))


async def used_memory(redis: Any) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def fill(redis: Any, headroom: int) -> int:
    """Write ballast until Redis has ``headroom`` bytes left below maxmemory."""
    written, chunk = 0, b"x" * (256 * 1024)
    while MAXMEMORY - await used_memory(redis) > headroom + len(chunk):
        await redis.set(f"chaos:ballast:{written}", chunk)
        written += 1
    return written


async def test_redis_out_of_memory(lab: Lab) -> None:
    server = lab.redis(maxmemory=str(MAXMEMORY))
    await server.start()
    env = lab.env(server.url, CHAOS_STEP_MS="2")
    fleet = lab.fleet(env, "--concurrency", "32")
    await fleet.start(2)
    api = lab.api(env)
    await api.ready()
    http = lab.http(api)
    checker = lab.checker(server.url, [lab.client(server.url), http])
    redis: Any = connect(server.url)
    ballast = await fill(redis, HEADROOM)
    stop = asyncio.Event()
    began = time.monotonic()
    load = asyncio.create_task(checker.submit_all(endless(), rate=RATE, stop=stop))

    full: list[float] = []

    async def is_full() -> bool:
        if not full and await used_memory(redis) >= MAXMEMORY:
            full.append(time.time())
        return bool(full)

    def refused_for_memory() -> int:
        return sum(1 for s in checker.submissions if full and s.sent_at >= full[0]
                   and s.answered_at < freed_at and s.outcome != ACCEPTED)  # fmt: skip

    freed_at = float("inf")
    full_after = await wait_until(is_full, 60, "Redis to be full")
    await wait_until(lambda: refused_for_memory() >= 10, 60, "starts to be refused")
    await asyncio.sleep(FULL_FOR)
    peak = await used_memory(redis)
    freed_at = time.time()
    await redis.delete(*[f"chaos:ballast:{i}" for i in range(ballast)])
    await asyncio.sleep(3.0)
    stop.set()
    await load
    drained = await checker.drain(sized(60, 300))
    elapsed = time.monotonic() - began
    after = await used_memory(redis)
    await redis.aclose()
    exits = await fleet.stop()
    verdict = await checker.verdict()

    attempts = lab.attempts.read()
    back = recovery(checker, attempts, freed_at)
    statuses = dict(sorted(http.statuses.items()))
    report = lab.report
    report.add(
        maxmemory=MAXMEMORY, ballast_bytes=ballast * 256 * 1024, full_after_s=rounded(full_after),
        refused_for_memory=refused_for_memory(), used_memory_peak=peak,
        used_memory_after=after, http_statuses=statuses, recovery_s=back,
        seconds=rounded(elapsed), drain_s=rounded(drained), reruns=reruns(attempts),
    )  # fmt: skip
    verdict.require_clean(report)
    report.require("errors_started", verdict.errors_started, "== 0", verdict.errors_started == 0)
    report.require("http_statuses", sorted(statuses), f"within {sorted(ALLOWED)}",
                   set(statuses) <= ALLOWED)  # fmt: skip
    report.require("refused_for_memory", refused_for_memory(), ">= 10", refused_for_memory() >= 10)
    for name, seconds in slowest([back]).items():
        report.require(f"recovery_s.{name}", seconds, f"<= {RECOVERY:g}",
                       seconds is not None and seconds <= RECOVERY)  # fmt: skip
    unexpected = fleet.unexpected_exits()
    report.require("unexpected_worker_exits", len(unexpected), "== 0", not unexpected)
    report.require("api_alive", api.popen.poll() is None, "True", api.popen.poll() is None)
    report.require("clean_stops", sorted(set(exits.values())), "all 0",
                   all(code == 0 for code in exits.values()))  # fmt: skip
    report.assert_met()
