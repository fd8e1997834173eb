"""The flow-control transitions at the script level, where races are decided: every order
of redelivered branch results and of a signal against its timer resolves exactly once."""

from __future__ import annotations

import itertools

import pytest
import redis.asyncio as aredis

from conveyor import Settings, codec
from conveyor.errors import ScriptCode
from conveyor.storage.records import Task
from conveyor.storage.store import Store
from conveyor.storage.transitions import Transition

GROUP = "agents"


@pytest.fixture
async def store(redis: aredis.Redis, namespace: str) -> Store:
    s = Store(redis, Settings(namespace=namespace, partitions=2))
    await s.ensure_groups(["default"])
    return s


async def read_all(store: Store) -> list[Task]:
    entries = await store.read(store.keys.streams("default"), "c1", 1000, None)
    return [store.parse_entry(*e) for e in entries]


def rec(task: Task) -> bytes:
    return codec.dumps({"step": task.step, "task": task.task, "attempt": 1, "status": "completed"})


async def fan_out(store: Store, items: list[int], max_parallel: int = 0) -> tuple[str, list[Task]]:
    wf_id, _ = await store.start("w", "split", "default", items)
    [task] = await read_all(store)
    call = store.transitions.fan_out(
        task, rec(task), 1, b"", step="branch", queue="default", join="join",
        join_queue="default", max_parallel=max_parallel, collect=False, items=[codec.dumps(i) for i in items],
    )  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    return wf_id, await read_all(store)


def branch_return(store: Store, task: Task) -> Transition:
    value = codec.dumps(int(codec.loads(task.input)) * 10)
    return store.transitions.returned(task, rec(task), 1, b"", value, ("default", "default"))


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
async def test_join_runs_once_with_results_in_item_order(
    store: Store, order: tuple[int, ...]
) -> None:
    wf_id, branches = await fan_out(store, [1, 2, 3])
    assert [t.frame.split("|")[1] for t in branches] == ["1", "2", "3"]
    calls = [branch_return(store, branches[i]) for i in order]
    # every branch result is delivered twice (a redelivery after a crash): the copy is dropped
    codes = await store.commit([*calls, *calls])
    assert codes == [ScriptCode.OK] * 3 + [ScriptCode.DUPLICATE] * 3
    [join] = await read_all(store)
    assert (join.step, codec.loads(join.input), join.frame) == ("join", [10, 20, 30], "")
    fields = await store.redis.hgetall(store.keys.workflow(wf_id))
    assert not [f for f in fields if f[:2] in (b"g:", b"r:", b"i:")]  # the group is cleaned up


async def test_max_parallel_launches_the_next_item_as_each_branch_ends(store: Store) -> None:
    _, branches = await fan_out(store, [1, 2, 3, 4, 5], max_parallel=2)
    assert len(branches) == 2
    seen = []
    while branches:
        seen += [codec.loads(t.input) for t in branches]
        await store.commit([branch_return(store, t) for t in branches])
        branches = [t for t in await read_all(store) if t.step == "branch"]
        assert len(branches) <= 2
    assert seen == [1, 2, 3, 4, 5]


async def wait_for_signal(store: Store, timeout_ms: int) -> tuple[str, Task]:
    wf_id, _ = await store.start("w", "ask", "default", None)
    [task] = await read_all(store)
    call = store.transitions.wait(
        task, rec(task), 1, b"", signal="ok", step="then", queue="default",
        timeout_ms=timeout_ms, timer_step="then", timer_queue="default",
        marker=b'{"$timeout":{}}',
    )  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    return wf_id, task


async def fired_timer(store: Store) -> Task:
    await store.promote(["default"])
    [timer] = await read_all(store)
    assert timer.wait == "ok" and timer.step == "then"
    return timer


async def test_timer_first_then_the_signal_is_buffered(store: Store) -> None:
    wf_id, _ = await wait_for_signal(store, 0)
    timer = await fired_timer(store)
    assert await store.claim_timers([timer]) == [True]
    assert await store.signal(wf_id, "ok", "late") == "buffered"  # not a second resolution
    # delivered again (a takeover, a retry), the timer that won still runs its step (the
    # same task: dropping it would lose the task), and resolves nothing new
    assert await store.claim_timers([timer]) == [True]
    assert (await store.get(wf_id)).status == "running"
    assert await store.redis.llen(store.keys.signals(wf_id, "ok")) == 1  # still buffered


async def test_signal_first_then_the_timer_is_stale(store: Store) -> None:
    wf_id, _ = await wait_for_signal(store, 0)
    assert (await store.get(wf_id)).status == "waiting"
    assert await store.signal(wf_id, "ok", "yes") == "delivered"
    [resumed, timer] = sorted(await read_all_after_promote(store), key=lambda t: bool(t.wait))
    assert codec.loads(resumed.input) == "yes" and resumed.task == timer.task
    assert await store.claim_timers([timer]) == [False]  # drop it: the signal won
    assert (await store.get(wf_id)).status == "running"


async def read_all_after_promote(store: Store) -> list[Task]:
    await store.promote(["default"])
    return await read_all(store)


async def test_signal_to_a_wait_on_another_queue_is_redone(store: Store) -> None:
    """The caller names the stream the waiting step's task goes to; if the wait is on
    another queue (or gone), the script writes nothing and says which (CHANGED)."""
    wf_id, _ = await wait_for_signal(store, 60_000)
    key = store.keys.workflow(wf_id)
    stream = store.keys.stream(store.keys.partition(wf_id), "other")
    keys = [key, store.keys.signals(wf_id, "ok"), stream]
    argv = ["ok", b"1", 1, "other", 60, wf_id]
    assert await store.scripts.call(store.redis, "signal", keys, argv) == [
        ScriptCode.CHANGED,
        b"default",
    ]
    assert (await store.get(wf_id)).status == "waiting"  # nothing written
    assert await store.signal(wf_id, "ok", 1) == "delivered"


async def test_parallel_waits_for_one_signal_resolve_oldest_first(store: Store) -> None:
    """Two branches wait for the same signal: each signal resumes one of them, in order."""
    wf_id, branches = await fan_out(store, [1, 2])
    for branch in branches:
        call = store.transitions.wait(
            branch, rec(branch), 1, b"", signal="ok", step="branch2", queue="default",
            timeout_ms=None, timer_step="branch2", timer_queue="default", marker=b"{}",
        )  # fmt: skip
        assert await store.commit([call]) == [ScriptCode.OK]
    st = await store.get(wf_id)
    assert st.status == "waiting" and st.waiting_for == ["ok", "ok"]
    assert await store.signal(wf_id, "ok", "a") == "delivered"
    assert (await store.get(wf_id)).status == "waiting"  # one wait left
    assert await store.signal(wf_id, "ok", "b") == "delivered"
    resumed = await read_all(store)
    assert [(t.frame.split("|")[1], codec.loads(t.input)) for t in resumed] == [
        ("1", "a"), ("2", "b"),
    ]  # fmt: skip
    assert (await store.get(wf_id)).status == "running"
    assert await store.signal(wf_id, "ok", "c") == "buffered"
