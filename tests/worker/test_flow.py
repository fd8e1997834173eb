"""Agentic flow control end to end through real workers: fan-out/fan-in, signals and waits,
durable timers, cancellation, child workflows and the step budget."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import (
    App,
    AsyncClient,
    SignalError,
    StepBudgetExceededError,
    Workflow,
    WorkflowFailedError,
    done,
    error_of,
    fan_out,
    goto,
    is_timeout,
    sleep,
    start_child,
    wait,
)
from tests.conftest import drain, running
from tests.helpers import until_async as until

MakeApp = Callable[..., App]
ClientFor = Callable[[App], AsyncClient]


# -- fan-out / fan-in --------------------------------------------------------------------------


def fan_app(make_app: MakeApp, **fan: Any) -> tuple[App, dict[str, Any]]:
    seen: dict[str, Any] = {"running": 0, "peak": 0, "joins": 0}
    wf = Workflow("fan")

    @wf.step(start=True)
    async def split(ctx, items: list[Any]):
        return fan_out(square, items, then=join, **fan)

    @wf.step(retries=0)
    async def square(ctx, x: Any):
        seen["running"] += 1
        seen["peak"] = max(seen["peak"], seen["running"])
        await asyncio.sleep(0.01)
        seen["running"] -= 1
        if x == "boom":
            raise ValueError("branch failed")
        return x * x

    @wf.step
    async def join(ctx, results: list[Any]):
        seen["joins"] += 1
        return results

    return make_app(wf), seen


async def test_fan_out_joins_results_in_item_order(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    app, seen = fan_app(make_app)
    client = client_for(app)
    wf_id = await client.start("fan", list(range(12)))
    worker = await drain(app)
    assert await client.result(wf_id, timeout=1) == [x * x for x in range(12)]
    assert seen["joins"] == 1 and worker.stats.duplicates == 0
    st = await client.status(wf_id)
    assert [h.step for h in st.history].count("square") == 12
    assert st.tasks == 14  # split + 12 branches + join


async def test_fan_out_of_nothing_goes_straight_to_the_join(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    app, seen = fan_app(make_app)
    client = client_for(app)
    wf_id = await client.start("fan", [])
    await drain(app)
    assert await client.result(wf_id, timeout=1) == []
    assert seen["joins"] == 1


async def test_fan_out_respects_max_parallel(make_app: MakeApp, client_for: ClientFor) -> None:
    app, seen = fan_app(make_app, max_parallel=3)
    client = client_for(app)
    wf_id = await client.start("fan", list(range(10)))
    await drain(app, concurrency=32)
    assert await client.result(wf_id, timeout=1) == [x * x for x in range(10)]
    assert seen["peak"] == 3  # never more, and the width was used


async def test_failed_branch_fails_the_workflow(make_app: MakeApp, client_for: ClientFor) -> None:
    app, seen = fan_app(make_app)
    client = client_for(app)
    wf_id = await client.start("fan", [1, "boom", 3])
    await drain(app)
    with pytest.raises(WorkflowFailedError, match="branch failed"):
        await client.result(wf_id, timeout=1)
    assert seen["joins"] == 0
    assert len(await client.dead_letters()) == 1


async def test_collected_branch_error_fills_its_slot(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    app, seen = fan_app(make_app, on_error="collect")
    client = client_for(app)
    wf_id = await client.start("fan", [2, "boom", 4])
    await drain(app)
    assert seen["joins"] == 1
    first, failed, last = await client.result(wf_id, timeout=1)
    assert (first, last) == (4, 16)
    error = error_of(failed)
    assert (
        error is not None and error["type"] == "ValueError" and "branch failed" in error["message"]
    )
    assert error_of(first) is None
    assert await client.dead_letters() == []  # handled by the join: not a dead letter


async def test_nested_fan_outs_and_branches_that_go_on(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    """A branch may loop with goto and fan out again; each level joins in order."""
    wf = Workflow("tree")

    @wf.step(start=True)
    async def root(ctx, n: int):
        return fan_out(outer, list(range(n)), then=total)

    @wf.step
    async def outer(ctx, i: int):
        return fan_out(inner, [i * 10 + k for k in range(3)], then=outer_join)

    @wf.step
    async def inner(ctx, v: int):
        return goto(inner_again, {"v": v, "round": 0})

    @wf.step
    async def inner_again(ctx, job: dict[str, int]):
        if job["round"] < 2:
            return goto(inner_again, {**job, "round": job["round"] + 1})
        return done(job["v"])  # ends the branch with its value

    @wf.step
    async def outer_join(ctx, values: list[int]):
        return values

    @wf.step
    async def total(ctx, groups: list[list[int]]):
        return groups

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("tree", 4)
    worker = await drain(app)
    assert await client.result(wf_id, timeout=1) == [
        [i * 10 + k for k in range(3)] for i in range(4)
    ]
    assert worker.stats.duplicates == 0


# -- signals and waits -------------------------------------------------------------------------


def approval_app(make_app: MakeApp, **wait_options: Any) -> App:
    wf = Workflow("approve")

    @wf.step(start=True)
    async def ask(ctx, doc: str):
        ctx.state["doc"] = doc
        return wait("approval", then=decide, **wait_options)

    @wf.step
    async def decide(ctx, answer: Any):
        if is_timeout(answer):
            return {"doc": ctx.state["doc"], "outcome": "timed out"}
        return {"doc": ctx.state["doc"], "outcome": answer}

    @wf.step
    async def escalate(ctx, answer: Any):
        return {"escalated": is_timeout(answer)}

    return make_app(wf)


async def test_wait_parks_until_the_signal(make_app: MakeApp, client_for: ClientFor) -> None:
    app = approval_app(make_app)
    client = client_for(app)
    wf_id = await client.start("approve", "d1")
    await drain(app)
    st = await client.status(wf_id)
    assert st.status == "waiting" and st.waiting_for == ["approval"]
    assert st.waits[0].step == "decide" and st.waits[0].deadline is None
    assert await client.signal(wf_id, "approval", {"ok": True}) == "delivered"
    assert (await client.status(wf_id)).status == "running"
    await drain(app)
    assert await client.result(wf_id, timeout=1) == {"doc": "d1", "outcome": {"ok": True}}


async def test_signal_before_the_wait_is_buffered(make_app: MakeApp, client_for: ClientFor) -> None:
    app = approval_app(make_app)
    client = client_for(app)
    wf_id = await client.start("approve", "d2")
    # no worker yet: the workflow has not reached its wait
    assert await client.signal(wf_id, "approval", "first") == "buffered"
    assert await client.signal(wf_id, "approval", "second") == "buffered"
    await drain(app)
    assert await client.result(wf_id, timeout=1) == {"doc": "d2", "outcome": "first"}


async def test_wait_timeout_gives_the_marker_or_runs_on_timeout(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    app = approval_app(make_app, timeout=0.2)
    client = client_for(app)
    wf_id = await client.start("approve", "d3")
    await drain(app)
    assert await client.result(wf_id, timeout=1) == {"doc": "d3", "outcome": "timed out"}
    with pytest.raises(SignalError, match="already finished"):
        await client.signal(wf_id, "approval", 1)

    app = approval_app(make_app, timeout=0.2, on_timeout="escalate")
    client = client_for(app)
    wf_id = await client.start("approve", "d4")
    await drain(app)
    assert await client.result(wf_id, timeout=1) == {"escalated": True}


async def test_signal_racing_its_timeout_resolves_exactly_once(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    """Many workflows whose signal arrives right around their timeout: each resolves one way
    only (decide runs once), whichever came first."""
    app = approval_app(make_app, timeout=0.3)
    client = client_for(app)
    async with running(app) as worker:
        ids = [await client.start("approve", f"r{i}") for i in range(20)]
        await until(lambda: worker.stats.completed >= 20)
        await asyncio.sleep(0.25)
        for wf_id in ids:
            with contextlib.suppress(SignalError):  # the timeout may have finished it already
                await client.signal(wf_id, "approval", "yes")
        statuses = await client.wait(ids, timeout=10)
    outcomes = {s.result["outcome"] for s in statuses}
    assert outcomes <= {"yes", "timed out"}
    for st in statuses:
        assert st.status == "completed"
        assert [h.step for h in st.history].count("decide") == 1


async def test_unknown_signal_target(client_for: ClientFor, make_app: MakeApp) -> None:
    from conveyor import DefinitionError, WorkflowNotFoundError

    client = client_for(approval_app(make_app))
    with pytest.raises(WorkflowNotFoundError):
        await client.signal("0" * 32, "approval", 1)
    with pytest.raises(DefinitionError, match="invalid signal name"):
        await client.signal("0" * 32, "bad name", 1)


# -- durable timers ----------------------------------------------------------------------------


async def test_sleep_and_delayed_start(make_app: MakeApp, client_for: ClientFor) -> None:
    wf = Workflow("nap")

    @wf.step(start=True)
    async def begin(ctx, x: int):
        return sleep(0.3, then=wake, input={"x": x, "slept_at": time.time()})

    @wf.step
    async def wake(ctx, job: dict[str, Any]):
        return {"x": job["x"], "slept": time.time() - job["slept_at"]}

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("nap", 1)
    await drain(app)
    result = await client.result(wf_id, timeout=1)
    assert result["x"] == 1 and result["slept"] >= 0.25

    started = time.time()
    delayed = await client.start("nap", 2, delay=0.4)
    st = await client.status(delayed)
    assert st.status == "running" and st.history == []
    await drain(app)
    st = await client.status(delayed)
    assert st.status == "completed" and st.history[0].started_at is not None
    assert st.history[0].started_at.timestamp() >= started + 0.35


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_reaches_queued_delayed_waiting_and_running_steps(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    seen: dict[str, Any] = {"ran": [], "cleanup": [], "saw_cancel": False}
    gate = threading.Event()
    wf = Workflow("job")

    @wf.step(start=True)
    async def route(ctx, mode: str):
        seen["ran"].append(mode)
        if mode == "sleep":
            return sleep(2, then=after)
        if mode == "wait":
            return wait("go", then=after)
        if mode == "run":
            return goto(slow, mode)
        return goto(after, mode)

    @wf.step
    def slow(ctx, mode: str):
        gate.set()
        deadline = time.time() + 10
        while not ctx.cancelled and time.time() < deadline:
            time.sleep(0.01)
        seen["saw_cancel"] = ctx.cancelled
        return "finished anyway"  # discarded: the workflow was cancelled

    @wf.step
    async def after(ctx, _: Any):
        seen["ran"].append("after")
        return "after"

    @wf.step(on_cancel=True)
    async def cleanup(ctx, info: dict[str, Any]):
        seen["cleanup"].append((info["workflow_id"], info["reason"]))
        return "cleaned"

    app = make_app(wf)
    client = client_for(app)
    queued = await client.start("job", "queued")
    assert await client.cancel(queued) == "cancelled"  # before any worker saw it
    sleeping = await client.start("job", "sleep")
    waiting = await client.start("job", "wait")
    runner = await client.start("job", "run")
    async with running(app) as worker:
        await until(gate.is_set)
        await until(lambda: worker.stats.completed >= 2)  # sleep and wait reached
        for wf_id in (sleeping, waiting, runner):
            assert await client.cancel(wf_id) == "cancelled"
        await until(lambda: len(seen["cleanup"]) == 4)
        await until(lambda: not worker.inflight)
    assert seen["saw_cancel"] is True
    assert "queued" not in seen["ran"] and "after" not in seen["ran"]  # dropped unrun
    assert sorted(i for i, _ in seen["cleanup"]) == sorted([queued, sleeping, waiting, runner])
    for wf_id in (queued, sleeping, waiting, runner):
        st = await client.status(wf_id)
        assert st.status == "cancelled" and st.waits == [] and st.cancel_reason == "cancelled"
        assert [h.step for h in st.history].count("cleanup") == 1
        assert "after" not in [h.step for h in st.history]
    assert await client.cancel(runner) == "cancelled"  # again: nothing more runs
    with pytest.raises(SignalError):
        await client.signal(waiting, "go", 1)
    # the sleep timer is still in the delayed set; when due, admission drops it unrun
    await drain(app)
    assert seen["cleanup"].count((runner, "cancelled")) == 1


# -- child workflows ---------------------------------------------------------------------------


def family_app(make_app: MakeApp) -> App:
    parent = Workflow("parent")
    child = Workflow("child")

    @parent.step(start=True)
    async def spawn(ctx, n: int):
        return start_child(child, n, then=collect)

    @parent.step
    async def collect(ctx, outcome: Any):
        error = error_of(outcome)
        return {"error": error["message"]} if error else {"child": outcome}

    @child.step(start=True)
    async def work(ctx, n: int):
        if n < 0:
            raise ValueError("negative")
        if n == 0:
            return goto(park, n)
        return n * 2

    @child.step
    async def park(ctx, n: int):
        return wait("never", then=work)

    return make_app(parent, child)


async def test_child_workflow_result_and_failure_resume_the_parent(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    app = family_app(make_app)
    client = client_for(app)
    ok = await client.start("parent", 21)
    bad = await client.start("parent", -1)
    await drain(app)
    assert await client.result(ok, timeout=1) == {"child": 42}
    assert await client.result(bad, timeout=1) == {"error": "negative"}
    st = await client.status(ok)
    child_id = f"{ok}~1"
    assert st.children == []  # finished children are no longer listed
    child = await client.status(child_id)
    assert child.workflow == "child" and child.parent == ok and child.result == 42


async def test_cancelling_a_parent_cancels_its_child_and_cancelling_a_child_resumes_it(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    app = family_app(make_app)
    client = client_for(app)
    first = await client.start("parent", 0)
    second = await client.start("parent", 0)
    await drain(app)  # both children wait forever
    assert (await client.status(first)).children == [f"{first}~1"]
    assert await client.cancel(first) == "cancelled"
    assert (await client.status(f"{first}~1")).status == "cancelled"
    assert await client.cancel(f"{second}~1") == "cancelled"
    await drain(app)
    result = await client.result(second, timeout=1)
    assert "was cancelled" in result["error"]


# -- step budget -------------------------------------------------------------------------------


async def test_runaway_loop_stops_at_the_step_budget(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    wf = Workflow("loop", max_steps=8)

    @wf.step
    async def again(ctx, n: int):
        return goto(again, n + 1)

    app = make_app(wf)
    client = client_for(app)
    wf_id = await client.start("loop", 0)
    bigger = await client.start("loop", 0, max_steps=20)
    await drain(app)
    with pytest.raises(StepBudgetExceededError, match="budget of 8 steps") as caught:
        await client.result(wf_id, timeout=1)
    assert isinstance(caught.value, WorkflowFailedError)
    st = await client.status(wf_id)
    assert st.error is not None and st.error.type == "StepBudgetExceeded"
    assert len(st.history) == 8 and st.max_steps == 8
    assert len((await client.status(bigger)).history) == 20
    with pytest.raises(ValueError, match="max_steps"):
        await client.start("loop", 0, max_steps=0)


async def test_replay_while_a_worker_runs_is_not_dropped_as_stopped(
    make_app: MakeApp, client_for: ClientFor
) -> None:
    """A failed workflow is in the workers' mirror of stopped workflows; replaying it makes
    its task active again. A running worker that reads the replayed task before it hears of
    the replay must run it, not drop it."""
    from conveyor import NonRetryableError

    broken = {"on": True}
    wf = Workflow("phoenix")

    @wf.step
    async def rise(ctx, x: int):
        if broken["on"]:
            raise NonRetryableError("not yet")
        return x + 1

    app = make_app(wf)
    client = client_for(app)
    async with running(app) as worker:
        wf_id = await client.start("phoenix", 1)
        await until(lambda: wf_id in worker.stopped)  # failed, and the worker heard of it
        [letter] = await client.dead_letters()
        broken["on"] = False
        worker.stopped._apply(f"stop {wf_id}")  # keep it there: the race's worst case
        worker.stopped.resumed = lambda _id: None  # type: ignore[method-assign]
        await client.replay(letter.id)
        worker.stopped._apply(f"stop {wf_id}")  # the 'resume' message comes late
        assert await client.result(wf_id, timeout=10) == 2
