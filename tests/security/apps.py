"""The app the security tests run under a least-privilege ACL user and over TLS, in-process
and as `conveyor worker` / `conveyor api tests.security.apps:app` subprocesses: between them
its workflows use every engine feature that talks to Redis (fan-out and join, the step cache,
rate and concurrency limits, batches, sleep, signals and waits, child workflows, retries,
dead letters, cancellation with an on_cancel step, emitted events)."""

from __future__ import annotations

from typing import Any

from conveyor import (
    App,
    BatchContext,
    Limit,
    StepContext,
    Workflow,
    done,
    fan_out,
    goto,
    sleep,
    start_child,
    wait,
)

tour = Workflow("tour")
child = Workflow("child")
doomed = Workflow("doomed")
waiter = Workflow("waiter")
batched = Workflow("batched")


@tour.step(start=True)
async def split(ctx: StepContext, n: int) -> Any:
    ctx.emit({"split": n})
    return fan_out(square, [n, n + 1, n + 2], then=gather)


@tour.step(
    cache_ttl=60,
    rate_limit=Limit("security-api", "1000/s"),
    concurrency_key=lambda x: "shared",
    max_concurrency=2,
)
async def square(ctx: StepContext, x: int) -> Any:
    ctx.charge(1)
    return x * x


@tour.step
async def gather(ctx: StepContext, squares: list[int]) -> Any:
    return sleep(0.05, then=ask, input=sum(squares))


@tour.step
async def ask(ctx: StepContext, total: int) -> Any:
    ctx.state["total"] = total
    return wait("approve", then=spawn, timeout=60)


@tour.step
async def spawn(ctx: StepContext, answer: Any) -> Any:
    ctx.state["answer"] = answer
    return start_child(child, ctx.state["total"], then=finish)


@tour.step
async def finish(ctx: StepContext, outcome: Any) -> Any:
    return done({"total": ctx.state["total"], "answer": ctx.state["answer"], "child": outcome})


@child.step(start=True, retries=1, backoff=0.01)
async def flaky(ctx: StepContext, n: int) -> Any:
    if ctx.attempt == 1:
        raise ConnectionError("the first attempt always fails")
    return n * 2


@doomed.step(start=True)
async def explode(ctx: StepContext, n: int) -> Any:
    raise ValueError(f"cannot handle {n}")


@waiter.step(start=True)
async def park(ctx: StepContext, n: int) -> Any:
    return wait("never", then=unpark, timeout=600)


@waiter.step
async def unpark(ctx: StepContext, payload: Any) -> Any:
    return payload


@waiter.step(on_cancel=True)
async def cleanup(ctx: StepContext, info: dict[str, Any]) -> Any:
    return {"cleaned": info["reason"]}


@batched.step(start=True, batch_size=4, batch_wait_ms=20)
async def embed(ctx: BatchContext, texts: list[str]) -> list[Any]:
    return [goto(store, {"text": t, "size": len(texts)}) for t in texts]


@batched.step
async def store(ctx: StepContext, item: dict[str, Any]) -> Any:
    return item["text"].upper()


app = App(workflows=[tour, child, doomed, waiter, batched])
