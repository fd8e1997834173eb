"""Scale-down under load: four worker processes become one as a worker and then a
`--processes 2` supervisor get SIGTERM while workflows run. Each exits 0 within its grace period, steps that outlive
the drain are handed back and re-run elsewhere, and nothing is lost or committed twice."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.apps.chaos import expected

from .checker import Job, orphan_recoveries, reruns
from .conftest import Lab
from .harness import WorkerProcess, rounded, sized, wait_until

WORKFLOWS = sized(1_200, 20_000)
LONG = sized(6, 40)  # workflows whose one step outlives the drain
RATE = sized(150.0, 400.0)  # submissions per second
DRAIN = sized(3.0, 20.0)  # --drain-timeout
GRACE = sized(10.0, 30.0)  # what an orchestrator waits before SIGKILL
VISIBILITY_TIMEOUT = 2.0
STEP_MS = sized(100, 20)  # each step's time: the last worker standing must get through
CONCURRENCY = sized(16, 64)

pytestmark = pytest.mark.timeout(sized(150, 1800))


async def test_scale_down_with_sigterm(lab: Lab) -> None:
    server = lab.redis()
    await server.start()
    env = lab.env(
        server.url, CHAOS_STEP_MS=str(STEP_MS), CHAOS_LONG_SECONDS=str(3 * DRAIN),
        CONVEYOR_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
    )  # fmt: skip
    fleet = lab.fleet(env, "--concurrency", str(CONCURRENCY), "--drain-timeout", str(DRAIN))
    singles = [fleet.spawn() for _ in range(2)]
    supervisor = fleet.spawn("--processes", "2")
    await fleet.ready(singles)
    await wait_until(lambda: supervisor.serving(2), 60, "the supervisor's two workers")
    checker = lab.checker(server.url, [lab.client(server.url)])
    jobs = [Job("pipeline", n, expect_result=expected(n)) for n in range(WORKFLOWS)]
    jobs[:: WORKFLOWS // LONG] = [Job("long", i, expect_result=i) for i in range(LONG)]
    began = time.monotonic()
    submitting = asyncio.create_task(checker.submit_all(jobs, rate=RATE))
    window = WORKFLOWS / RATE
    stops: list[tuple[WorkerProcess, float, asyncio.Task[float]]] = []  # (who, sent, exited)
    for victim, when in zip([singles[0], supervisor], (0.33, 0.66), strict=True):
        await asyncio.sleep(max(0.0, began + when * window - time.monotonic()))
        sent = fleet.signal(victim, signal.SIGTERM)
        stops.append((victim, sent, asyncio.create_task(fleet.exited(victim, GRACE + 30))))
    await submitting
    exited = [await task for _, _, task in stops]
    drained = await checker.drain(sized(120, 600))
    elapsed = time.monotonic() - began
    exits = await fleet.stop()
    verdict = await checker.verdict()

    attempts = lab.attempts.read()
    handed = sum(p.handed_back() for p in fleet.processes)
    # what the stopped workers left unfinished: re-run after they exited
    left = orphan_recoveries(
        attempts,
        [(name, at) for (p, _, _), at in zip(stops, exited, strict=True) for name in p.names],
        checker.committed_by(),
    )  # fmt: skip
    exit_seconds = [at - sent for (_, sent, _), at in zip(stops, exited, strict=True)]
    codes = [p.poll() for p, _, _ in stops]
    report = lab.report
    report.add(
        workflows=len(jobs), long_steps=LONG, drain_timeout_s=DRAIN, grace_s=GRACE,
        seconds=rounded(elapsed), drain_s=rounded(drained),
        exit_after_s=[rounded(s) for s in exit_seconds],
        exit_codes=codes, handed_back=handed,
        reruns=reruns(attempts), **left.figures(),
    )  # fmt: skip
    verdict.require_clean(report)
    report.require("exit_codes", codes, "all 0", codes == [0, 0])
    worst = max(exit_seconds)
    report.require("exit_after_max_s", rounded(worst), f"<= {GRACE:g}", worst <= GRACE)
    report.require("handed_back", handed, ">= 1", handed >= 1)
    report.require("orphans_never_rerun", left.never_rerun, "== 0", left.never_rerun == 0)
    report.require("clean_stops", sorted(set(exits.values())), "all 0",
                   all(code == 0 for code in exits.values()))  # fmt: skip
    unexpected = fleet.unexpected_exits()
    report.require("unexpected_worker_exits", len(unexpected), "== 0", not unexpected)
    report.assert_met()
