"""The app the HTTP API tests serve (`conveyor api tests.apps.api_app:app`) and run workers
for: a validated input, a multi-step workflow that emits events, a wait for approval."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from conveyor import App, StepContext, Workflow, goto, wait


class Order(BaseModel):
    sku: str = Field(min_length=1)
    qty: int = Field(ge=1)


orders = Workflow("orders")


@orders.step(start=True)
async def receive(ctx: StepContext, order: Order) -> Any:
    return {"sku": order.sku, "total": order.qty * 2}


story = Workflow("story")


@story.step(start=True)
async def outline(ctx: StepContext, topic: str) -> Any:
    ctx.emit({"progress": "outlining"})
    return goto(write, {"topic": topic, "round": 0})


@story.step
async def write(ctx: StepContext, job: dict[str, Any]) -> Any:
    for token in f"a story about {job['topic']}".split():
        ctx.emit({"token": token})
        await asyncio.sleep(0.01)
    if job["round"] < 1:
        return goto(write, {**job, "round": job["round"] + 1})
    return goto(finish, job["topic"])


@story.step
def finish(ctx: StepContext, topic: str) -> Any:
    ctx.emit("done")
    return {"story": topic}


approval = Workflow("approval")


@approval.step(start=True)
async def ask(ctx: StepContext, doc: Any) -> Any:
    ctx.state["doc"] = doc
    return wait("approve", then=decide, timeout=3600)


@approval.step
async def decide(ctx: StepContext, answer: Any) -> Any:
    return {"doc": ctx.state["doc"], "answer": answer}


app = App(workflows=[orders, story, approval])
