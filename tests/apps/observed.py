"""The app the observability tests run in real worker and API processes: a three-step
pipeline whose middle step runs on another queue (so another worker process), a step that
fails once and then succeeds, and one that always fails. Steps log, so their log lines can
be joined by workflow and trace."""

from __future__ import annotations

import logging
from typing import Any

from conveyor import App, StepContext, Workflow, goto

log = logging.getLogger("tests.observed")

pipeline = Workflow("pipeline")


@pipeline.step(start=True, queue="front")
async def fetch(ctx: StepContext, n: int) -> Any:
    log.info("fetching %d", n)
    return goto(score, n)


@pipeline.step(queue="back")
def score(ctx: StepContext, n: int) -> Any:  # sync: runs in a thread, logs keep their fields
    log.info("scoring %d", n)
    return goto(publish, n * 2)


@pipeline.step(queue="front")
async def publish(ctx: StepContext, n: int) -> Any:
    log.info("publishing %d", n)
    return n + 1


flaky = Workflow("flaky")


@flaky.step(start=True, queue="front", retries=2, backoff=0.05)
async def once(ctx: StepContext, n: int) -> Any:
    if ctx.attempt == 1:
        raise ConnectionError("the first attempt always fails")
    return n


broken = Workflow("broken")


@broken.step(start=True, queue="front")
async def explode(ctx: StepContext, n: int) -> Any:
    raise ValueError(f"cannot handle {n}")


app = App(workflows=[pipeline, flaky, broken])
