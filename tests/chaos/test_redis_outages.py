"""Redis unavailable while workers and the API run under load: not there yet when they
start, frozen (SIGSTOP) for a while, restarting and LOADING its data. No HTTP request goes
unanswered past its timeout, no worker exits, nothing accepted is lost, and each way in
(and the workers) works again within 5 s of Redis answering."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor.storage.connection import connect

from .checker import Checker, endless, recovery, reruns, slowest
from .conftest import Lab
from .harness import ApiProcess, Fleet, RedisProcess, WorkerProcess, rounded, sized, wait_until

RATE = sized(100.0, 300.0)  # submissions per second, half through each way in
RECOVERY = 5.0
# CONVEYOR_API_REQUEST_TIMEOUT, the API's bound per request; checked on the API's own latency
# histogram, whose bounds (..., 2.5, 10) leave a margin above it
API_TIMEOUT = sized(1.5, 8.0)
HTTP_TIMEOUT = API_TIMEOUT + 5  # the caller's: an answer later than this is a hang
CLIENT_TIMEOUT = 10.0
ABSENT = sized(3.0, 15.0)  # seconds before Redis first starts
PAUSE = sized(5.0, 30.0)  # seconds Redis stays frozen
BALLAST_KEYS = sized(20_000, 60_000)
LOAD_DELAY_US = sized(100, 200)  # key-load-delay: LOADING lasts about keys x delay

pytestmark = pytest.mark.timeout(sized(120, 900))


class Outage:
    """A fleet of two workers and an API under load, against ``server``."""

    def __init__(self, lab: Lab, server: RedisProcess) -> None:
        self.lab = lab
        self.server = server
        env = lab.env(server.url, CHAOS_STEP_MS="2", CONVEYOR_API_REQUEST_TIMEOUT=str(API_TIMEOUT))
        self.fleet: Fleet = lab.fleet(env, "--concurrency", "32")
        self.workers: list[WorkerProcess] = [self.fleet.spawn() for _ in range(2)]
        self.api: ApiProcess = lab.api(env)
        self.checker: Checker = lab.checker(
            server.url,
            [lab.client(server.url, timeout=CLIENT_TIMEOUT), lab.http(self.api, timeout=HTTP_TIMEOUT)],
        )  # fmt: skip
        self.stop = asyncio.Event()
        self.load: asyncio.Task[int] | None = None
        self.began = time.monotonic()

    async def start_load(self) -> None:
        await self.api.ready()
        self.load = asyncio.create_task(
            self.checker.submit_all(endless(), rate=RATE, stop=self.stop)
        )

    async def finish(self, answering: float, extra: dict[str, Any]) -> None:
        """Run on a while, stop the load, drain, and check everything."""
        await asyncio.sleep(3.0)
        self.stop.set()
        assert self.load is not None
        await self.load
        drained = await self.checker.drain(sized(60, 300))
        await asyncio.sleep(1.2)  # the API writes its metrics once a second
        late, bound = await self.api.slower_than(API_TIMEOUT)
        alive = [p.alive for p in self.workers] + [self.api.popen.poll() is None]
        exits = await self.fleet.stop()
        verdict = await self.checker.verdict()
        attempts = self.lab.attempts.read()
        back = recovery(self.checker, attempts, answering)
        http = [s for s in self.checker.submissions if s.via == "http"]
        slowest_http = max((s.seconds for s in http), default=0.0)
        unanswered = sum(1 for s in http if "no HTTP answer" in s.detail)
        client_waits = [s.seconds for s in self.checker.submissions if s.via == "client"]
        report = self.lab.report
        report.add(
            **extra, recovery_s=back, seconds=rounded(time.monotonic() - self.began),
            drain_s=rounded(drained), api_timeout_s=API_TIMEOUT,
            http_slowest_s=rounded(slowest_http), http_unanswered=unanswered,
            client_slowest_s=rounded(max(client_waits, default=0.0)),
            client_past_timeout=sum(1 for s in self.checker.submissions
                                    if s.via == "client" and "no answer" in s.detail),
            http_latency=self.checker.latency("http"), reruns=reruns(attempts),
        )  # fmt: skip
        verdict.require_clean(report)
        # the API answers every request within its timeout (its own figures), and no caller
        # waited past its own, longer timeout
        report.require(f"api_answers_over_{bound:g}s", late, "== 0", late == 0)
        report.require("http_unanswered", unanswered, "== 0", unanswered == 0)
        for name, seconds in slowest([back]).items():
            report.require(f"recovery_s.{name}", seconds, f"<= {RECOVERY:g}",
                           seconds is not None and seconds <= RECOVERY)  # fmt: skip
        report.require("processes_alive", alive, "all True", all(alive))
        unexpected = self.fleet.unexpected_exits()
        report.require("unexpected_worker_exits", len(unexpected), "== 0", not unexpected)
        report.require("clean_stops", sorted(set(exits.values())), "all 0",
                       all(code == 0 for code in exits.values()))  # fmt: skip
        report.assert_met()


async def test_redis_unreachable_at_start(lab: Lab) -> None:
    server = lab.redis()  # its port is chosen; nothing listens on it yet
    outage = Outage(lab, server)
    await outage.start_load()
    await asyncio.sleep(ABSENT)
    starting = [p.alive and not p.serving() for p in outage.workers]
    await server.start()
    assert server.up_at is not None
    await outage.fleet.ready(outage.workers, 30)
    await outage.finish(server.up_at, {"absent_s": ABSENT, "workers_waited": starting})


async def test_redis_paused(lab: Lab) -> None:
    server = lab.redis()
    await server.start()
    outage = Outage(lab, server)
    await outage.fleet.ready(outage.workers)
    await outage.start_load()
    await asyncio.sleep(2.0)
    frozen = server.pause()
    await asyncio.sleep(PAUSE)
    thawed = server.resume()
    await outage.finish(thawed, {"paused_s": rounded(thawed - frozen)})


async def test_redis_restart_while_loading(lab: Lab) -> None:
    server = lab.redis(appendonly=True)
    await server.start()
    redis: Any = connect(server.url)
    for start in range(0, BALLAST_KEYS, 1000):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(start + 1000, BALLAST_KEYS)):
            pipe.set(f"chaos:ballast:{i}", b"x" * 64)
        await pipe.execute()
    await redis.aclose()
    outage = Outage(lab, server)
    await outage.fleet.ready(outage.workers)
    await outage.start_load()
    await asyncio.sleep(2.0)
    server.stop()  # SIGTERM: Redis flushes its AOF; nothing acknowledged is lost
    stopped = time.time()
    # process events every KB of the file while loading, so clients get -LOADING answers
    server.launch(
        "--key-load-delay", str(LOAD_DELAY_US), "--loading-process-events-interval-bytes", "1024"
    )
    launched = time.time()
    await wait_until(server.answers, 120, "Redis to load its data", every=0.01)
    answering = time.time()
    loading = [s for s in outage.checker.submissions if "LOADING" in s.detail.upper()
               or "BusyLoading" in s.detail]  # fmt: skip
    await outage.finish(answering, {
        "ballast_keys": BALLAST_KEYS, "down_s": rounded(launched - stopped),
        "loading_s": rounded(answering - launched), "answered_while_loading": len(loading),
    })  # fmt: skip
