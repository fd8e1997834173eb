"""Bugs the property-based machine (test_properties.py) found, reproduced by hand:

- a wait timer that had won lost its claim when its entry was delivered again (a takeover,
  or a retry of its step), dropping the task;
- a child workflow replayed from its dead letter resumed its parent a second time when it
  ended again (the parent's continuation, holding the child's failure, was still queued):
  two entries for one task.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aredis

from conveyor import Settings, codec
from conveyor.errors import ScriptCode
from conveyor.storage.records import Task
from conveyor.storage.store import Store


@pytest.fixture
async def store(redis: aredis.Redis, namespace: str) -> Store:
    s = Store(redis, Settings(namespace=namespace, partitions=2))
    await s.ensure_groups(["default"])
    return s


async def fired_timer(store: Store, consumer: str) -> tuple[str, Task]:
    """A workflow waits for signal 'ok' with a timeout that is due at once; ``consumer``
    reads the timer and wins its claim (the worker's admission): the step now runs."""
    wf_id, _ = await store.start("w", "ask", "default", None)
    [entry] = await store.read(store.keys.streams("default"), consumer, 10, None)
    task = store.parse_entry(*entry)
    call = store.transitions.wait(
        task, b'{"task":1}', 1, b"", signal="ok", step="then", queue="default",
        timeout_ms=0, timer_step="then", timer_queue="default", marker=b'{"$timeout":true}',
    )  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    assert await store.promote(["default"]) == (1, False)
    [entry] = await store.read(store.keys.streams("default"), consumer, 10, None)
    timer = store.parse_entry(*entry)
    assert timer.wait == "ok"
    assert await store.claim_timers([timer]) == [True]
    return wf_id, timer


async def admit_and_finish(store: Store, task: Task) -> list[int | Exception]:
    """What a worker does with a delivered task: a timer must win its claim, else it is
    acknowledged unrun; a task that runs returns (ends its workflow)."""
    if task.wait and await store.claim_timers([task]) == [False]:
        return await store.commit([store.transitions.ack(task)])
    call = store.transitions.returned(task, b'{"task":2}', 2, b"", b'"done"', None)
    return await store.commit([call])


async def test_timer_won_then_taken_over_is_not_dropped(store: Store) -> None:
    """A timer's claim is kept per task: after a takeover the new consumer's claim wins
    again (the wait is gone, resolved by this very timer), so the step runs."""
    wf_id, _ = await fired_timer(store, "c1")
    # c1 dies while running the timer's step; c2 takes its entry over
    plan = [(s, 10) for s in store.keys.streams("default")]
    [taken] = await store.reclaim(plan, "c2", 0)
    again = store.parse_entry(*taken[:3])
    await admit_and_finish(store, again)
    assert await store.get_status(wf_id) == "completed"


async def test_timer_won_then_retried_is_not_dropped(store: Store) -> None:
    """A retry of a task started by its wait timer carries the 'wait' field
    (transitions.retry copies it): the retried entry claims again and wins."""
    wf_id, timer = await fired_timer(store, "c1")
    # the timer's step fails and is retried
    retry = store.transitions.retry(timer, b'{"task":2}', 2, 0, timer.attempt + 1)
    assert await store.commit([retry]) == [ScriptCode.OK]
    assert await store.promote(["default"]) == (1, False)
    [entry] = await store.read(store.keys.streams("default"), "c1", 10, None)
    await admit_and_finish(store, store.parse_entry(*entry))
    assert await store.get_status(wf_id) == "completed"


async def test_a_replayed_child_does_not_resume_its_parent_twice(store: Store) -> None:
    t = store.transitions
    parent_id, _ = await store.start("w", "ask", "default", None)
    [entry] = await store.read(store.keys.streams("default"), "c1", 10, None)
    task = store.parse_entry(*entry)
    call = t.child(
        task, b'{"task":1}', 1, b"", child_workflow="kid", first_step="k1",
        first_queue="default", payload=b"1", step="after", queue="default", max_steps=0,
        on_cancel="",
    )  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    [entry] = await store.read(store.keys.streams("default"), "c1", 10, None)
    child = store.parse_entry(*entry)
    dead = t.dead(
        child,
        b'{"task":1}',
        2,
        error={"type": "Boom", "message": "no"},
        reason="r",
        frame_queues=None,
    )
    assert await store.commit([dead]) == [ScriptCode.ENDED_FAILED]
    [letter] = await store.dead_letters()
    assert await store.replay(letter.id) == child.workflow_id
    # the parent's continuation (with the child's failure) and the child's replayed task
    entries = await store.read(store.keys.streams("default"), "c1", 10, None)
    tasks = {(x.workflow_id, x.task): x for x in (store.parse_entry(*e) for e in entries)}
    assert set(tasks) == {(parent_id, 2), (child.workflow_id, 1)}
    assert codec.loads(tasks[parent_id, 2].input)["$error"]["type"] == "Boom"
    done = t.returned(tasks[child.workflow_id, 1], b'{"task":1}', 3, b"", b'"ok"', None)
    assert await store.commit([done]) == [ScriptCode.ENDED_COMPLETED]
    # the parent got its child's outcome once: nothing more to run for its task 2
    assert await store.read(store.keys.streams("default"), "c1", 10, None) == []
