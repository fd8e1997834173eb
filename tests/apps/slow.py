"""An app for crash and drain tests, run by `conveyor worker tests.apps.slow:app` in a
subprocess. Each step records that it ran (INCR, a side effect outside the transition) and
takes STEP_SECONDS, so a test can kill or stop a worker while steps are in flight."""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aredis

from conveyor import App, Workflow, fan_out

STEP_SECONDS = float(os.environ.get("TEST_STEP_SECONDS", "0.3"))
_clients: dict[int, aredis.Redis] = {}


def _redis() -> aredis.Redis:
    loop_id = id(asyncio.get_running_loop())
    if loop_id not in _clients:
        _clients[loop_id] = aredis.Redis.from_url(os.environ["REDIS_URL"])
    return _clients[loop_id]


async def _ran(ctx) -> None:
    ns = os.environ["CONVEYOR_NAMESPACE"]
    await _redis().incr(f"{ns}:ran:{ctx.workflow_id}:{ctx.step}")
    await _redis().incr(f"{ns}:running")
    await asyncio.sleep(STEP_SECONDS)


async def fetch(ctx, n):
    await _ran(ctx)
    return n + 1


async def enrich(ctx, n):
    await _ran(ctx)
    return n * 2


async def store(ctx, n):
    await _ran(ctx)
    return {"value": n}


slow = Workflow.pipeline("slow", [fetch, enrich, store])

# fan-out under crashes: split -> 6 slow branches -> one join
fan = Workflow("fan")


@fan.step(start=True)
async def split(ctx, n):
    return fan_out(branch, [n * 10 + i for i in range(6)], then=join)


@fan.step
async def branch(ctx, x):
    await _ran(ctx)
    return x * 2


@fan.step
async def join(ctx, results):
    ns = os.environ["CONVEYOR_NAMESPACE"]
    await _redis().incr(f"{ns}:joins:{ctx.workflow_id}")
    return results


app = App(workflows=[slow, fan])
