"""Worker processes SIGKILLed at random while three-step workflows run: nothing lost, no
transition committed twice, and every step a killed worker left behind re-run within the
visibility timeout + 5 s."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import pytest

from tests.apps.chaos import expected

from .checker import Job, orphan_recoveries, reruns
from .conftest import Lab
from .harness import Fleet, rounded, sized, wait_until

WORKFLOWS = sized(10_000, 100_000)
KILLS = sized(10, 20)  # CI: fewer, so the fleet is not churning all the time
WORKERS = sized(3, 4)
VISIBILITY_TIMEOUT = 2.0

pytestmark = pytest.mark.timeout(sized(180, 3600))


async def kill_as_work_progresses(
    lab: Lab, fleet: Fleet, rng: random.Random, expected_attempts: int
) -> list[tuple[str, float]]:
    """SIGKILL a random serving worker each time another 1/(KILLS + 1) of the expected step
    attempts has started, and start a replacement at once (as an orchestrator would).
    Never leaves fewer than two serving workers. Returns (worker name, when) of each kill."""
    kills: list[tuple[str, float]] = []
    for i in range(KILLS):
        mark = expected_attempts * (i + 1) / (KILLS + 1)

        def reached(mark: float = mark) -> bool:
            return lab.attempts.approximate_count() >= mark

        await wait_until(reached, 600, "progress")
        await wait_until(lambda: len(fleet.serving()) >= 2, 120, "two serving workers")
        victim = rng.choice(fleet.serving())
        kills.append((victim.names[0], fleet.signal(victim, signal.SIGKILL)))
        fleet.spawn()
    return kills


async def test_worker_sigkills(lab: Lab) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = lab.redis()
    await server.start()
    # the engine's default delivery limit (5), not the suite's 3: with kills this dense, a
    # healthy step is sometimes held by three of the killed workers in turn, and at 3 it is
    # then dead-lettered as a step that kills workers, which is what that limit is for
    env = lab.env(
        server.url, CHAOS_STEP_MS="2", CONVEYOR_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        CONVEYOR_MAX_DELIVERIES="5",
    )  # fmt: skip
    fleet = lab.fleet(env, "--concurrency", "32")
    await fleet.start(WORKERS)
    checker = lab.checker(server.url, [lab.client(server.url)])
    began = time.monotonic()
    jobs = (Job("pipeline", n, expect_result=expected(n)) for n in range(WORKFLOWS))
    submitting = asyncio.create_task(checker.submit_all(jobs, concurrency=256))
    kills = await kill_as_work_progresses(lab, fleet, rng, 3 * WORKFLOWS)
    await submitting
    drained = await checker.drain(sized(120, 900))
    elapsed = time.monotonic() - began
    exits = await fleet.stop()
    verdict = await checker.verdict()

    attempts = lab.attempts.read()
    recovery = orphan_recoveries(attempts, kills, checker.committed_by())
    bound = VISIBILITY_TIMEOUT + 5
    report = lab.report
    report.add(
        seed=seed, workflows=WORKFLOWS, steps=3 * WORKFLOWS, workers=WORKERS, kills=len(kills),
        visibility_timeout_s=VISIBILITY_TIMEOUT, seconds=rounded(elapsed),
        drain_s=rounded(drained), workflows_per_s=rounded(WORKFLOWS / elapsed, 1),
        step_attempts=len(attempts), reruns=reruns(attempts),
        worker_processes=len(fleet.processes), **recovery.figures(),
    )  # fmt: skip
    verdict.require_clean(report)
    report.require("kills", len(kills), f"== {KILLS}", len(kills) == KILLS)
    report.require("orphaned_steps", recovery.orphans, "> 0", recovery.orphans > 0)
    report.require("orphans_never_rerun", recovery.never_rerun, "== 0", recovery.never_rerun == 0)
    worst = max(recovery.seconds, default=0.0)
    report.require("rerun_after_max_s", rounded(worst), f"<= {bound:g}", worst <= bound)
    report.require("completed", verdict.finished.get("completed", 0), f"== {WORKFLOWS}",
                   verdict.finished.get("completed", 0) == WORKFLOWS)  # fmt: skip
    unexpected = fleet.unexpected_exits()
    report.require("unexpected_worker_exits", len(unexpected), "== 0", not unexpected)
    report.require("clean_stops", sorted(set(exits.values())), "all 0",
                   all(code == 0 for code in exits.values()))  # fmt: skip
    report.assert_met()
