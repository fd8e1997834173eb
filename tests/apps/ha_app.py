"""An app that uses every engine feature, for the topology tests (Cluster, Sentinel, ACL,
TLS): `conveyor worker tests.apps.ha_app:app` in a subprocess, or in-process Workers.

``tour`` walks through a fan-out with its join, a wait for a signal, a durable sleep, a child
workflow, a retried step, a rate limit, a concurrency limit and the step-result cache, and
returns what each produced, so one completed run proves every script ran on that topology.
``triple`` is a plain three-step pipeline for failover runs."""

from __future__ import annotations

from typing import Any

from conveyor import (
    App,
    Limit,
    StepContext,
    Workflow,
    fan_out,
    goto,
    sleep,
    start_child,
    wait,
)

tour = Workflow("tour")
square = Workflow("square")


@tour.step(start=True)
async def begin(ctx: StepContext, n: int) -> Any:
    ctx.state["n"] = n
    return fan_out(branch, list(range(n)), then=joined)


@tour.step(rate_limit=Limit("ha", "1000/s"))
async def branch(ctx: StepContext, i: int) -> int:
    return i * i


@tour.step(concurrency_key=lambda results: "tenant", max_concurrency=2)
async def joined(ctx: StepContext, results: list[int]) -> Any:
    ctx.state["squares"] = results
    return wait("go", then=after_signal, timeout=60)


@tour.step
async def after_signal(ctx: StepContext, payload: Any) -> Any:
    ctx.state["signal"] = payload
    return sleep(0.2, then=napped, input=ctx.state["n"])


@tour.step
async def napped(ctx: StepContext, n: int) -> Any:
    return start_child(square, n, then=from_child)


@tour.step(retries=2, backoff=0.05)
async def from_child(ctx: StepContext, value: int) -> Any:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails on purpose")
    summary = {"squares": ctx.state["squares"], "signal": ctx.state["signal"], "child": value}
    return goto(cached, summary)


@tour.step(cache_ttl=60)  # keyed by its input, which names the signal's sender: no collisions
async def cached(ctx: StepContext, summary: dict[str, Any]) -> Any:
    return {**summary, "attempt": ctx.attempt}


@square.step(start=True)
async def compute(ctx: StepContext, n: int) -> int:
    return n * n


async def one(ctx: StepContext, n: int) -> int:
    return n + 1


async def two(ctx: StepContext, n: int) -> int:
    return n * 2


async def three(ctx: StepContext, n: int) -> dict[str, int]:
    return {"value": n}


triple = Workflow.pipeline("triple", [one, two, three])

app = App(workflows=[tour, square, triple])


def expected_tour(n: int, signal: Any) -> dict[str, Any]:
    return {"squares": [i * i for i in range(n)], "signal": signal, "child": n * n, "attempt": 1}
