"""Workflows end to end through a real worker: transitions, retries, dead letters, replay,
back-pressure, idempotency and retention."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aredis
from pydantic import BaseModel

from conveyor import (
    App,
    AsyncClient,
    BackPressureError,
    NonRetryableError,
    ResultTimeoutError,
    Retry,
    UnknownWorkflowError,
    Workflow,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    done,
    goto,
)
from tests.conftest import drain

MakeApp = Callable[..., App]
ClientFor = Callable[[App], AsyncClient]


async def test_pipeline_runs_every_step_once(make_app: MakeApp, client_for: ClientFor) -> None:
    async def one(ctx, x):
        return x + 1

    def two(ctx, x):  # sync: runs in the thread pool
        assert threading.current_thread().name.startswith("conveyor-step")
        return x * 10

    async def three(ctx, x):
        return {"value": x, "workflow": ctx.workflow, "task": ctx.task}

    app = make_app(Workflow.pipeline("p", [one, two, three]))
    client = client_for(app)
    ids = [await client.start("p", i) for i in range(20)]
    worker = await drain(app)
    assert worker.stats.completed == 60 and worker.stats.duplicates == 0
    for i, wf_id in enumerate(ids):
        assert await client.result(wf_id, timeout=1) == {
            "value": (i + 1) * 10,
            "workflow": "p",
            "task": 3,
        }
        st = await client.status(wf_id)
        assert [(h.step, h.status, h.attempt) for h in st.history] == [
            ("one", "completed", 1), ("two", "completed", 1), ("three", "completed", 1)
        ]  # fmt: skip
        assert all(h.worker == worker.name and h.started_at and h.finished_at for h in st.history)
        assert st.history[0].result == i + 1  # each step's result is recorded
        assert st.created_at and st.finished_at and st.created_at <= st.finished_at


async def test_goto_loop_state_and_done(make_app: MakeApp, client_for: ClientFor) -> None:
    wf = Workflow("loop")

    @wf.step(start=True)
    async def begin(ctx, n: int):
        ctx.state["seen"] = []
        return goto(count, {"n": n, "i": 0})

    @wf.step
    def count(ctx, job: dict):
        ctx.state["seen"].append(job["i"])
        if job["i"] < job["n"]:  # a loop decided at run time
            return goto(count, {**job, "i": job["i"] + 1})
        return done({"seen": ctx.state["seen"], "idem": ctx.idempotency_key})

    @wf.step
    async def never(ctx, x):
        raise AssertionError("not reached: done() ends the workflow")

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("loop", 3)
    await drain(app)
    result = await client.result(wf_id, timeout=1)
    assert result == {"seen": [0, 1, 2, 3], "idem": f"{wf_id}:5"}
    st = await client.status(wf_id)
    assert [h.step for h in st.history] == ["begin", "count", "count", "count", "count"]
    assert st.state == {"seen": [0, 1, 2, 3]}


async def test_then_routes_plain_return_values(make_app: MakeApp, client_for: ClientFor) -> None:
    wf = Workflow("t")

    @wf.step(start=True, then="second")
    def first(ctx, x):
        return x + 1

    @wf.step
    def second(ctx, x):
        return x * 2  # no then: the workflow ends with this value

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("t", 4)
    await drain(app)
    assert await client.result(wf_id, timeout=1) == 10


class Payment(BaseModel):
    amount: float
    currency: str


async def test_pydantic_input_converted_or_failed_without_retry(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    wf = Workflow("pay")
    calls: list[Payment] = []

    @wf.step(retries=3)
    def charge(ctx, payment: Payment):
        calls.append(payment)
        return payment.amount * 2

    app = make_app(wf)
    client = client_for(app)
    good = await client.start("pay", {"amount": "2.5", "currency": "EUR"})
    bad = await client.start("pay", {"amount": "lots"})
    await drain(app)
    assert await client.result(good, timeout=1) == 5.0
    assert calls == [Payment(amount=2.5, currency="EUR")]
    with pytest.raises(WorkflowFailedError) as info:
        await client.result(bad, timeout=1)
    err = info.value.error
    assert err["type"] == "StepInputError" and err["step"] == "charge"
    assert (
        "amount: Input should be a valid number" in err["message"] and "currency" in err["message"]
    )
    st = await client.status(bad)
    assert [h.attempt for h in st.history] == [1]  # no retry for invalid input


async def test_retry_then_success(make_app: MakeApp, client_for: ClientFor) -> None:
    attempts: list[int] = []
    wf = Workflow("flaky")

    @wf.step(retries=3, backoff=0.01)
    async def call_api(ctx, x):
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("upstream down")
        return x

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("flaky", "ok")
    worker = await drain(app)
    assert await client.result(wf_id, timeout=1) == "ok"
    assert attempts == [1, 2, 3]
    assert worker.stats.retried == 2 and worker.stats.completed == 1
    st = await client.status(wf_id)
    assert [(h.attempt, h.status) for h in st.history] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert st.history[0].error is not None and st.history[0].error.type == "ConnectionError"


async def test_retry_signal_sets_delay_and_nonretryable_stops(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    wf = Workflow("signals")
    seen: list[tuple[int, float]] = []

    @wf.step(retries=5, backoff=60)  # the backoff would be far too long: Retry overrides it
    async def step(ctx, x):
        seen.append((ctx.attempt, time.monotonic()))
        if x == "retry" and ctx.attempt == 1:
            raise Retry(delay=0.05)
        if x == "stop":
            raise NonRetryableError("input can never work")
        return x

    app = make_app(wf)
    client = client_for(app)
    ok = await client.start("signals", "retry")
    stop = await client.start("signals", "stop")
    await drain(app)
    assert await client.result(ok, timeout=1) == "retry"
    with pytest.raises(WorkflowFailedError, match="NonRetryableError: input can never work"):
        await client.result(stop, timeout=1)
    assert [h.attempt for h in (await client.status(stop)).history] == [1]


async def test_retries_exhausted_dead_letter_then_replay(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    broken = {"on": True}
    wf = Workflow("fragile")

    @wf.step(start=True)
    async def prepare(ctx, x):
        return goto(send, x)

    @wf.step(retries=2, backoff=0.01)
    def send(ctx, x):
        if broken["on"]:
            raise ValueError(f"cannot send {x}")
        return done({"sent": x, "attempt": ctx.attempt})

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("fragile", "mail")
    worker = await drain(app)
    assert worker.stats.retried == 2 and worker.stats.dead == 1
    with pytest.raises(WorkflowFailedError) as info:
        await client.result(wf_id, timeout=1)
    error = info.value.error
    assert (error["type"], error["message"], error["step"]) == (
        "ValueError",
        "cannot send mail",
        "send",
    )
    assert "Traceback" in error["traceback"] and "raise ValueError" in error["traceback"]
    [letter] = await client.dead_letters()
    assert (letter.workflow_id, letter.step, letter.workflow) == (wf_id, "send", "fragile")
    assert letter.error is not None and letter.error.type == "ValueError"
    # fix the cause, replay: the failed step runs again and the workflow completes
    broken["on"] = False
    assert await client.replay(letter.id) == wf_id
    assert (await client.status(wf_id)).status == "running"
    await drain(app)
    assert await client.result(wf_id, timeout=1) == {"sent": "mail", "attempt": 1}
    assert await client.dead_letters() == []
    history = (await client.status(wf_id)).history
    assert [(h.step, h.status) for h in history] == [
        ("prepare", "completed"), ("send", "failed"), ("send", "failed"), ("send", "failed"),
        ("send", "completed"),
    ]  # fmt: skip


async def test_step_timeout_fails_the_attempt(make_app: MakeApp, client_for: ClientFor) -> None:
    wf = Workflow("slow")

    @wf.step(timeout=0.1, retries=1, backoff=0.01)
    async def crawl(ctx, x):
        assert ctx.deadline is not None and ctx.time_left is not None
        if ctx.attempt == 1:
            await asyncio.sleep(5)
        return "fast enough"

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("slow", None)
    await drain(app)
    assert await client.result(wf_id, timeout=1) == "fast enough"
    first = (await client.status(wf_id)).history[0]
    assert first.error is not None and first.error.type == "StepTimeoutError"
    assert "timeout of 0.1s" in first.error.message


async def test_unserializable_result_fails_clearly(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    wf = Workflow("bad_result")

    @wf.step(retries=3)
    def produce(ctx, x):
        return object()

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("bad_result", None)
    await drain(app)
    with pytest.raises(WorkflowFailedError, match=r"ResultEncodingError: step bad_result\.produce"):
        await client.result(wf_id, timeout=1)


async def test_unknown_step_and_poison_entries_are_dead_lettered(
    make_app: MakeApp, client_for: ClientFor, redis: aredis.Redis
) -> None:
    wf = Workflow("known")
    wf.step(lambda ctx, x: x, name="only")
    app = make_app(wf)
    client = client_for(app)
    # A task of a workflow this app does not define (say, a newer deployment's)
    stray, _ = await client.store.start("ghost", "haunt", "default", 1)
    stream = client.store.keys.stream(0, "default")
    await client.store.ensure_groups(["default"])
    await redis.xadd(stream, {"not": "a task"})
    worker = await drain(app)
    assert worker.stats.dead == 1 and worker.stats.poison == 1
    with pytest.raises(WorkflowFailedError, match="UnknownStepError"):
        await client.result(stray, timeout=1)
    reasons = sorted(d.reason for d in await client.dead_letters())
    assert reasons[0] == "step failed" and reasons[1].startswith("undecodable task entry")


async def test_back_pressure_refuses_and_recovers(make_app: MakeApp, client_for: ClientFor) -> None:
    def echo(ctx, x):
        return x

    app = make_app(Workflow.pipeline("bp", [echo]), partitions=1, max_backlog=5)
    client = client_for(app)
    ids = [await client.start("bp", i) for i in range(5)]
    with pytest.raises(BackPressureError, match="queue 'default' is full"):
        await client.start("bp", 99)
    await drain(app)
    assert [await client.result(i, timeout=1) for i in ids] == [0, 1, 2, 3, 4]
    assert await client.start("bp", 5)  # room again once the backlog drained


async def test_idempotency_key_one_id_one_run(make_app: MakeApp, client_for: ClientFor) -> None:
    runs: list[int] = []
    wf = Workflow("once")

    @wf.step
    def charge(ctx, x):
        runs.append(x)
        return x

    app = make_app(wf)
    client = client_for(app)
    first = await client.start("once", 1, idempotency_key="order-42")
    second = await client.start("once", 2, idempotency_key="order-42")
    assert first == second
    await drain(app)
    third = await client.start("once", 3, idempotency_key="order-42")  # after it finished
    await drain(app)
    assert third == first and runs == [1]
    assert await client.result(first, timeout=1) == 1


async def test_ttl_only_on_finished_workflows(
    make_app: MakeApp, client_for: ClientFor, redis: aredis.Redis
) -> None:
    wf = Workflow("ttl")

    @wf.step
    def finish(ctx, x):
        if x == "fail":
            raise NonRetryableError("no")
        return x

    app = make_app(wf, retention=120)
    client = client_for(app)
    ok, failed = [await client.start("ttl", v) for v in ("ok", "fail")]
    keys = client.store.keys
    await drain(app)
    queued = await client.start("ttl", "later")  # never drained: stays running
    for wf_id in (ok, failed):
        assert 0 < await redis.ttl(keys.workflow(wf_id)) <= 120
        assert 0 < await redis.ttl(keys.history(wf_id)) <= 120
    assert await redis.ttl(keys.workflow(queued)) == -1
    cancelled = await client.start("ttl", "cancel me")
    assert await client.cancel(cancelled) == "cancelled"
    assert 0 < await redis.ttl(keys.workflow(cancelled)) <= 120


async def test_client_errors(make_app: MakeApp, client_for: ClientFor) -> None:
    wf = Workflow("c")
    wf.step(lambda ctx, x: x, name="s")
    app = make_app(wf)
    client = client_for(app)
    with pytest.raises(UnknownWorkflowError, match="unknown workflow 'nope'"):
        await client.start("nope", 1)
    with pytest.raises(WorkflowNotFoundError):
        await client.status("0" * 32)
    wf_id = await client.start("c", 1)
    with pytest.raises(ResultTimeoutError, match=r"did not finish within 0\.1s"):
        await client.result(wf_id, timeout=0.1)
    await client.cancel(wf_id)
    with pytest.raises(WorkflowCancelledError):
        await client.result(wf_id, timeout=1)
    worker = await drain(app)
    assert worker.stats.dropped == 1  # the cancelled workflow's task was dropped unrun


async def test_result_waits_without_polling(make_app: MakeApp, client_for: ClientFor) -> None:
    wf = Workflow("w")
    wf.step(lambda ctx, x: x * 2, name="double")
    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("w", 21)
    waiter = asyncio.create_task(client.result(wf_id, timeout=10))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    started = time.monotonic()
    await drain(app)
    assert await waiter == 42
    assert time.monotonic() - started < 5


async def test_client_without_app_uses_the_registry(
    make_app: MakeApp, client_for: ClientFor, redis_server, namespace: str
) -> None:
    wf = Workflow("reg")
    wf.step(lambda ctx, x: x, name="s", queue="special")
    app = make_app(wf)
    async with AsyncClient(redis_server.url, namespace, partitions=4) as bare:
        with pytest.raises(UnknownWorkflowError, match="start a worker first"):
            await bare.start("reg", 1)
        from conveyor import Worker

        async with Worker(app, block_ms=50) as worker:  # registers its workflows at start
            running = asyncio.create_task(worker.run())
            wf_id = await bare.start("reg", 7)
            assert await bare.result(wf_id, timeout=5) == 7
            worker.request_stop()
            await running


def test_sync_client(make_app: MakeApp) -> None:
    from conveyor import Client, Worker

    wf = Workflow("sync")
    wf.step(lambda ctx, x: x + 1, name="inc")
    app = make_app(wf)
    with Client(app=app) as client:
        wf_id = client.start("sync", 1)
        asyncio.run(Worker(app, block_ms=50).run(until_idle=True))
        assert client.result(wf_id, timeout=2) == 2
        assert client.status(wf_id).status == "completed"


async def test_emptied_state_is_persisted(make_app: MakeApp, client_for: ClientFor) -> None:
    wf = Workflow("state")

    @wf.step(start=True)
    def fill(ctx, x):
        ctx.state["items"] = [1, 2]
        return goto(empty, x)

    @wf.step
    def empty(ctx, x):
        assert ctx.state == {"items": [1, 2]}
        ctx.state.clear()
        return goto(check, x)

    @wf.step
    def check(ctx, x):
        return {"state_seen": dict(ctx.state)}

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("state", 0)
    await drain(app)
    assert await client.result(wf_id, timeout=1) == {"state_seen": {}}
    assert (await client.status(wf_id)).state == {}


async def test_many_concurrent_starts_and_waits(make_app: MakeApp, client_for: ClientFor) -> None:
    """More concurrent calls than pool connections wait for a connection instead of failing,
    and all waiters share one pub/sub connection."""
    wf = Workflow("burst")
    wf.step(lambda ctx, x: x, name="echo")
    app = make_app(wf)
    client = client_for(app)
    ids = await asyncio.gather(*(client.start("burst", i) for i in range(300)))
    waiting = asyncio.create_task(client.wait(ids, timeout=30))
    await asyncio.sleep(0.1)
    await drain(app)
    statuses = await waiting
    assert [s.result for s in statuses] == list(range(300))
    assert all(s.status == "completed" for s in statuses)


async def test_concurrent_starts_are_coalesced_and_keep_their_errors(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    wf = Workflow("many")
    wf.step(lambda ctx, x: x, name="echo")
    app = make_app(wf, partitions=1, max_backlog=50)
    client = client_for(app)
    batches: list[int] = []
    real = client.store.start_many

    async def recording(requests):  # a spy on our own method: Redis itself is real
        batches.append(len(requests))
        return await real(requests)

    client.store.start_many = recording  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(client.start("many", i) for i in range(60)), return_exceptions=True
    )
    ids = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, BackPressureError)]
    assert len(ids) == 50 and len(refused) == 10  # each start keeps its own outcome
    assert sum(batches) == 60 and len(batches) <= 3  # a burst goes out in a few pipelines
    await drain(app)
    values = {await client.result(i, timeout=1) for i in ids}
    assert len(values) == 50 and values <= set(range(60))


async def test_workers_serve_only_their_queues(make_app: MakeApp, client_for: ClientFor) -> None:
    from conveyor import ConfigurationError, Worker

    wf = Workflow("split")

    @wf.step(start=True, queue="fast", then="heavy")
    def light(ctx, x):
        return x + 1

    @wf.step(queue="gpu")
    def heavy(ctx, x):
        return {"value": x, "worker": ctx.worker}

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("split", 1)
    fast = await drain(app, queues=["fast"], name="fast-worker")
    st = await client.status(wf_id)
    assert fast.stats.completed == 1 and st.status == "running" and st.step == "heavy"
    await drain(app, queues=["gpu"], name="gpu-worker")
    assert await client.result(wf_id, timeout=1) == {"value": 2, "worker": "gpu-worker"}
    with pytest.raises(
        ConfigurationError, match=r"no step of this app runs on queue\(s\) \['nope'\]"
    ):
        Worker(app, queues=["nope"])
