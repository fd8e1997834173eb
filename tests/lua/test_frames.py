"""lib.lua's frame, parent and on_cancel helpers and storage/frames.py are two sides of one
format: what the scripts build, Python parses into the parts it was built from, and what
Python builds (an on_cancel step) the scripts read."""

from __future__ import annotations

import pytest
import redis.asyncio as aredis

from conveyor import Settings, codec
from conveyor.errors import ScriptCode
from conveyor.storage import frames
from conveyor.storage.frames import Branch, Parent
from conveyor.storage.records import Task
from conveyor.storage.store import Store
from conveyor.storage.transitions import child_workflow_id


@pytest.fixture
async def store(redis: aredis.Redis, namespace: str) -> Store:
    s = Store(redis, Settings(namespace=namespace, partitions=2))
    await s.ensure_groups(["default", "kids", "undo-q"])
    return s


async def read(store: Store, queue: str = "default") -> list[Task]:
    entries = await store.read(store.keys.streams(queue), "c1", 100, None)
    return [store.parse_entry(*e) for e in entries]


def rec(task: Task) -> bytes:
    return codec.dumps({"step": task.step, "task": task.task, "attempt": 1, "status": "completed"})


async def test_branch_frames_and_parents_built_by_lua_parse_in_python(store: Store) -> None:
    await store.start("w", "split", "default", None)
    [task] = await read(store)
    t = store.transitions
    call = t.fan_out(
        task, rec(task), 1, b"", step="branch", queue="default", join="join",
        join_queue="default", max_parallel=0, collect=False, items=[b"1", b"2"],
    )  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    branches = await read(store)
    assert [frames.parse_branch(b.frame) for b in branches] == [
        Branch(1, 1, "branch", "join"), Branch(1, 2, "branch", "join")]  # fmt: skip
    # a child started inside a branch resumes its parent in that branch
    first = branches[0]
    call = t.child(
        first, rec(first), 1, b"", child_workflow="kid", first_step="k1", first_queue="kids",
        payload=b"null", step="after", queue="default", max_steps=5, on_cancel="",
    )  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    [kid] = await read(store, "kids")
    # its continuation is task 4 (1 was the start, 2 and 3 the branches)
    assert frames.parse_parent(kid.parent) == Parent(
        first.workflow_id, 4, "after", "default", first.frame
    )
    assert kid.workflow_id == child_workflow_id(first.workflow_id, first.task)
    assert (await store.get(kid.workflow_id)).parent == first.workflow_id


async def test_an_on_cancel_step_built_in_python_is_read_by_lua(store: Store) -> None:
    wf, _ = await store.start("w", "first", "default", None, on_cancel=("undo", "undo-q"))
    assert await store.cancel(wf) == "cancelled"
    [task] = await read(store, "undo-q")
    assert (task.step, task.frame) == ("undo", frames.CANCEL_FRAME)
