"""What happens before a step runs, through real workers: the step-result cache, shared rate
and concurrency limits (held back, never failed), RateLimited push-back, ctx.charge, and
micro-batching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import (
    App,
    AsyncClient,
    BatchContext,
    Limit,
    RateLimited,
    Worker,
    Workflow,
    WorkflowFailedError,
    goto,
)
from conveyor.storage.limits import rate_key
from tests.conftest import drain

MakeApp = Callable[..., App]
ClientFor = Callable[[App], AsyncClient]


# -- step-result cache -------------------------------------------------------------------------


async def test_cache_hit_skips_the_step_and_is_recorded(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    calls: list[Any] = []
    wf = Workflow("cached")

    @wf.step(start=True, cache_ttl=60)
    async def expensive(ctx, job: dict[str, Any]):
        calls.append(job)
        return goto(finish, {"answer": job["q"] * 2})

    @wf.step
    async def finish(ctx, out: dict[str, Any]):
        return out["answer"]

    app = make_app(wf)
    client = client_for(app)
    first = await client.start("cached", {"q": 21, "model": "m"})
    await drain(app)
    # same input (keys in another order) from another workflow: served from the cache
    second = await client.start("cached", {"model": "m", "q": 21})
    other = await client.start("cached", {"q": 1, "model": "m"})
    worker = await drain(app)
    assert [await client.result(i, timeout=1) for i in (first, second, other)] == [42, 42, 2]
    assert len(calls) == 2 and worker.stats.cached == 1
    hit = (await client.status(second)).history[0]
    assert hit.step == "expensive" and hit.cached and hit.result == {"answer": 42}
    assert not (await client.status(first)).history[0].cached


async def test_cache_entries_expire(make_app: MakeApp, client_for: ClientFor) -> None:
    calls: list[int] = []
    wf = Workflow("short")

    @wf.step(cache_ttl=0.2)
    async def once(ctx, x: int):
        calls.append(x)
        return x

    app = make_app(wf)
    client = client_for(app)
    await client.start("short", 1)
    await drain(app)
    await asyncio.sleep(0.3)
    await client.start("short", 1)
    await drain(app)
    assert calls == [1, 1]


# -- rate and concurrency limits ---------------------------------------------------------------


async def test_rate_limit_holds_tasks_back_without_failing_them(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    starts: list[float] = []
    wf = Workflow("rated")

    @wf.step(rate_limit=Limit("api", "10/s", burst=2))
    async def call(ctx, x: int):
        starts.append(time.monotonic())
        return {"x": x, "attempt": ctx.attempt}

    app = make_app(wf)
    client = client_for(app)
    ids = [await client.start("rated", i) for i in range(8)]
    worker = await drain(app)
    results = [await client.result(i, timeout=1) for i in ids]
    assert sorted(r["x"] for r in results) == list(range(8))
    assert all(r["attempt"] == 1 for r in results)  # waiting for the limit is not an attempt
    assert worker.stats.limited > 0 and worker.stats.retried == 0 and worker.stats.dead == 0
    # 2 at once, then one per 100 ms: 8 starts span at least ~0.6 s
    assert max(starts) - min(starts) >= 0.45
    for wf_id in ids:  # the hold-backs left no failed attempts in the history
        assert [h.status for h in (await client.status(wf_id)).history] == ["completed"]


async def test_concurrency_limit_is_shared_by_workers(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    wf = Workflow("tenants")

    @wf.step(concurrency_key=lambda job: job["tenant"], max_concurrency=2)
    async def work(ctx, job: dict[str, Any]):
        tenant = job["tenant"]
        running[tenant] = running.get(tenant, 0) + 1
        peak[tenant] = max(peak.get(tenant, 0), running[tenant])
        await asyncio.sleep(0.05)
        running[tenant] -= 1
        return tenant

    app = make_app(wf)
    client = client_for(app)
    ids = [await client.start("tenants", {"tenant": f"t{i % 2}"}) for i in range(16)]
    workers = [Worker(app, block_ms=50, promote_interval=0.02, concurrency=8) for _ in range(2)]
    await asyncio.gather(*(w.run(until_idle=True) for w in workers))
    statuses = await client.wait(ids, timeout=10)
    assert all(s.status == "completed" for s in statuses)
    assert peak == {"t0": 2, "t1": 2}  # two workers, 16 slots, never more than 2 per tenant
    assert sum(w.stats.limited for w in workers) > 0


async def test_rate_limited_step_pushes_the_shared_limit_back(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    attempts: list[float] = []
    wf = Workflow("llm")

    @wf.step(rate_limit=Limit("model", "1000/s"))
    async def ask(ctx, prompt: str):
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RateLimited(0.4, "429 from the model API")
        return f"answer to {prompt}"

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("llm", "hi")
    worker = await drain(app)
    assert await client.result(wf_id, timeout=1) == "answer to hi"
    assert attempts[1] - attempts[0] >= 0.35  # waited out the Retry-After
    st = await client.status(wf_id)
    assert [(h.status, h.attempt) for h in st.history] == [("limited", 1), ("completed", 1)]
    assert worker.stats.retried == 0 and worker.stats.dead == 0


async def test_cost_is_charged_up_front_and_settled_with_ctx_charge(
    make_app: MakeApp, client_for: ClientFor, redis: Any, namespace: str
) -> None:
    limit = Limit("tokens", "1000/s", cost=lambda job: job["estimate"], burst=1000)
    wf = Workflow("tokens")

    @wf.step(rate_limit=limit)
    async def generate(ctx, job: dict[str, int]):
        ctx.charge(job["used"])
        return job["used"]

    app = make_app(wf)
    client = client_for(app)
    await client.start("tokens", {"estimate": 100, "used": 900})
    before = time.time() * 1000
    await drain(app)
    # the theoretical arrival time moved by what was really used (900 units = 900 ms), not
    # by the estimate (100 ms): later callers wait for the real spend
    tat = float(await redis.get(rate_key(namespace, "tokens")))
    assert tat - before >= 700


async def test_bad_concurrency_key_fails_the_task_clearly(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    wf = Workflow("badkey")

    @wf.step(concurrency_key=lambda job: job["tenant"], max_concurrency=1)
    async def work(ctx, job: Any):
        return job

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("badkey", {"no": "tenant"})
    await drain(app)
    with pytest.raises(WorkflowFailedError, match="KeyError"):
        await client.result(wf_id, timeout=1)


# -- micro-batching ----------------------------------------------------------------------------


async def test_batched_step_gets_inputs_of_many_workflows(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    sizes: list[int] = []
    wf = Workflow("embed")

    @wf.step(start=True, batch_size=8, batch_wait_ms=50)
    def embed(ctx: BatchContext, texts: list[str]) -> list[Any]:
        sizes.append(len(texts))
        assert len(ctx) == len(texts) and ctx.items[0].step == "embed"
        return [goto(store, {"text": t, "vector": [len(t)]}) for t in texts]

    @wf.step
    async def store(ctx, item: dict[str, Any]):
        return item

    app = make_app(wf)
    client = client_for(app)
    texts = [f"text-{'x' * i}" for i in range(20)]
    ids = [await client.start("embed", t) for t in texts]
    await drain(app, concurrency=32)
    for wf_id, text in zip(ids, texts, strict=True):
        assert await client.result(wf_id, timeout=1) == {"text": text, "vector": [len(text)]}
    assert sum(sizes) == 20 and max(sizes) <= 8 and max(sizes) > 1


async def test_batched_step_returning_the_wrong_count_fails_each_task(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    wf = Workflow("badbatch")

    @wf.step(batch_size=4, batch_wait_ms=20, retries=3)
    async def broken(ctx: BatchContext, xs: list[int]) -> list[int]:
        return xs[:-1]

    app = make_app(wf)
    client = client_for(app)
    ids = [await client.start("badbatch", i) for i in range(4)]
    await drain(app)
    for wf_id in ids:
        with pytest.raises(WorkflowFailedError, match="must return a list of"):
            await client.result(wf_id, timeout=1)
        assert len((await client.status(wf_id)).history) == 1  # not retried: it cannot help
