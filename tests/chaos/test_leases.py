"""Long steps under leases: 1,000 steps, each running for several visibility timeouts at
once, are never taken over while their workers renew them; and the steps of a hung worker
(SIGSTOP) are taken over and re-run within the visibility timeout + 5 s, its late commits
dropped, and it carries on once it wakes up."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from .checker import Job, by_task, takeovers
from .conftest import Lab
from .harness import rounded, sized, wait_until

LIVE_STEPS = 1_000
WORKERS = 3
STEP_SECONDS = sized(5.0, 20.0)  # each a few visibility timeouts long
VISIBILITY_TIMEOUT = 2.0
HUNG_STEPS = sized(30, 60)

pytestmark = pytest.mark.timeout(sized(150, 900))


async def test_long_steps_keep_their_leases(lab: Lab) -> None:
    server = lab.redis()
    await server.start()
    env = lab.env(
        server.url, CHAOS_LONG_SECONDS=str(STEP_SECONDS),
        CONVEYOR_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
    )  # fmt: skip
    concurrency = LIVE_STEPS // (WORKERS - 1)  # two of them hold them all; room to spare
    fleet = lab.fleet(env, "--concurrency", str(concurrency))
    workers = await fleet.start(WORKERS)
    checker = lab.checker(server.url, [lab.client(server.url)])
    report = lab.report

    # 1. every step runs at once for several visibility timeouts: none is taken over
    began = time.monotonic()
    await checker.submit_all(Job("long", n, expect_result=n) for n in range(LIVE_STEPS))
    await wait_until(
        lambda: lab.attempts.approximate_count() >= LIVE_STEPS, 60, "every step to start"
    )
    await checker.drain(STEP_SECONDS + 60)
    first = time.monotonic() - began
    live = lab.attempts.read()
    stolen = sum(1 for items in by_task(live).values() if len(items) > 1)
    spread = live[-1].at - live[0].at  # under STEP_SECONDS: all of them ran at the same time
    report.add(
        live_steps=LIVE_STEPS, step_seconds=STEP_SECONDS,
        visibility_timeout_s=VISIBILITY_TIMEOUT, starts_spread_s=rounded(spread),
        live_phase_s=rounded(first),
    )  # fmt: skip
    report.require("stolen", stolen, "== 0", stolen == 0)
    report.require("live_step_attempts", len(live), f"== {LIVE_STEPS}", len(live) == LIVE_STEPS)
    report.require("starts_spread_s", rounded(spread), f"< {STEP_SECONDS:g}", spread < STEP_SECONDS)

    # 2. a hung worker: its steps are taken over by the others
    await checker.submit_all(Job("long", n, expect_result=n) for n in range(HUNG_STEPS))
    await wait_until(
        lambda: lab.attempts.approximate_count() >= LIVE_STEPS + HUNG_STEPS, 60, "hung phase"
    )
    phase = [a for a in lab.attempts.read() if a.at > live[-1].at]
    holders = {a.worker for a in phase}
    hung = max(workers, key=lambda w: sum(a.worker == w.names[0] for a in phase))
    held = sum(a.worker == hung.names[0] for a in phase)
    frozen_at = fleet.signal(hung, signal.SIGSTOP)

    def rerun_all() -> bool:
        mine = {a.ref for a in phase if a.worker == hung.names[0]}
        later = {a.ref for a in lab.attempts.read() if a.at > frozen_at}
        return mine <= later

    await wait_until(rerun_all, VISIBILITY_TIMEOUT + 30, "the hung worker's steps to be re-run")
    thawed_at = fleet.signal(hung, signal.SIGCONT)
    await checker.drain(STEP_SECONDS + 60)
    await wait_until(lambda: hung.alive, 1, "the hung worker still running")
    await asyncio.sleep(1.5)  # a worker that woke up to an error would exit now
    alive = hung.alive
    exits = await fleet.stop()
    verdict = await checker.verdict()
    attempts = lab.attempts.read()
    hung_phase = [a for a in attempts if a.at > live[-1].at]
    taken = takeovers(hung_phase, hung.names[0], frozen_at)
    bound = VISIBILITY_TIMEOUT + 5
    worst = max(taken.seconds, default=0.0)
    report.add(
        hung_phase_steps=HUNG_STEPS, hung_worker_held=held, workers_holding=len(holders),
        frozen_s=rounded(thawed_at - frozen_at), **taken.figures(),
    )  # fmt: skip
    verdict.require_clean(report)
    report.require("hung_worker_held", held, ">= 1", held >= 1)
    report.require("orphaned_steps", taken.orphans, f"== {held}", taken.orphans == held)
    report.require("orphans_never_rerun", taken.never_rerun, "== 0", taken.never_rerun == 0)
    report.require("rerun_after_max_s", rounded(worst), f"<= {bound:g}", worst <= bound)
    report.require("hung_worker_alive_after_thaw", alive, "True", alive)
    report.require("clean_stops", sorted(set(exits.values())), "all 0",
                   all(code == 0 for code in exits.values()))  # fmt: skip
    unexpected = fleet.unexpected_exits()
    report.require("unexpected_worker_exits", len(unexpected), "== 0", not unexpected)
    report.assert_met()
