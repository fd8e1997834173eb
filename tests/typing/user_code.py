"""Written as a user would write it; `mypy --strict` must accept it (see test_typing.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from conveyor import (
    App,
    AsyncClient,
    BatchContext,
    Client,
    Limit,
    RateLimited,
    Step,
    StepContext,
    Workflow,
    WorkflowStatus,
    done,
    error_of,
    fan_out,
    goto,
    is_timeout,
    sleep,
    start_child,
    wait,
)
from conveyor.workflow import Done, FanOut, Goto, Sleep, StartChild, Wait

orders = Workflow("orders")


class Order(BaseModel):
    sku: str
    qty: int


@orders.step(start=True, retries=3, backoff=0.5, timeout=30, queue="io")
async def receive(ctx: StepContext, order: Order) -> Goto:
    ctx.state["received"] = True
    return goto(price, {"sku": order.sku, "qty": order.qty})


@orders.step
def price(ctx: StepContext, job: dict[str, Any]) -> Done:
    return done({"total": job["qty"] * 9.5, "key": ctx.idempotency_key})


agent = Workflow("agent", max_steps=200)
llm = Limit("llm", "90000/min", cost=lambda job: len(str(job)) // 4)


@agent.step(start=True)
async def plan(ctx: StepContext, topic: str) -> FanOut:
    return fan_out(research, [f"{topic} {i}" for i in range(3)], then=review, max_parallel=2)


@agent.step(rate_limit=llm, concurrency_key=lambda q: "tenant", max_concurrency=4)
async def research(ctx: StepContext, query: str) -> str:
    if ctx.cancelled:
        return ""
    ctx.charge(120)
    if not query:
        raise RateLimited(2.0)
    return query.upper()


@agent.step(cache_ttl=3600)
async def review(ctx: StepContext, notes: list[Any]) -> Wait:
    assert all(error_of(n) is None for n in notes)
    return wait("approval", then=publish, timeout=3600, on_timeout=remind)


@agent.step
async def remind(ctx: StepContext, marker: Any) -> Sleep:
    assert is_timeout(marker)
    return sleep(60, then=review, input=[])


@agent.step
async def publish(ctx: StepContext, approval: Any) -> StartChild:
    return start_child(orders, {"sku": "x", "qty": 1}, then=archived)


@agent.step(batch_size=32, batch_wait_ms=5)
def embed(ctx: BatchContext, texts: list[str]) -> list[list[float]]:
    return [[float(len(t))] for t in texts]


@agent.step(on_cancel=True)
async def archived(ctx: StepContext, outcome: Any) -> Done:
    return done(outcome)


assert isinstance(receive, Step)
app = App(workflows=[orders, agent], namespace="shop", partitions=8)


async def use_async() -> float:
    async with AsyncClient(app=app) as client:
        wf_id: str = await client.start("orders", {"sku": "a", "qty": 2}, idempotency_key="o-1")
        status: WorkflowStatus = await client.status(wf_id)
        assert status.status in {"running", "completed"}
        result: dict[str, float] = await client.result(wf_id, timeout=5)
        later: str = await client.start("agent", "redis", delay=30.0, max_steps=50)
        outcome: str = await client.signal(later, "approval", {"ok": True})
        assert outcome in {"delivered", "buffered"}
        return result["total"]


def use_sync() -> str:
    with Client("redis://localhost:6379/0", "shop", partitions=8) as client:
        return client.cancel(client.start("orders", {"sku": "b", "qty": 1}))


if __name__ == "__main__":
    asyncio.run(use_async())
