"""Written as a user would write it; `mypy --strict` must accept it (see test_typing.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from conveyor import (
    App,
    AsyncClient,
    Client,
    Step,
    StepContext,
    Workflow,
    WorkflowStatus,
    done,
    goto,
)
from conveyor.workflow import Done, Goto

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


assert isinstance(receive, Step)
app = App(workflows=[orders], namespace="shop", partitions=8)


async def use_async() -> float:
    async with AsyncClient(app=app) as client:
        wf_id: str = await client.start("orders", {"sku": "a", "qty": 2}, idempotency_key="o-1")
        status: WorkflowStatus = await client.status(wf_id)
        assert status.status in {"running", "completed"}
        result: dict[str, float] = await client.result(wf_id, timeout=5)
        return result["total"]


def use_sync() -> str:
    with Client("redis://localhost:6379/0", "shop", partitions=8) as client:
        return client.cancel(client.start("orders", {"sku": "b", "qty": 1}))


if __name__ == "__main__":
    asyncio.run(use_async())
