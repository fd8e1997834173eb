"""Each Lua transition against real Redis: the whole resulting keyspace is asserted, the call
is repeated to prove it is idempotent, and each of its result codes is reached."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any
from unittest.mock import ANY

import pytest
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from conveyor import BackPressureError, ReplayError, Settings, WorkflowNotFoundError, codec
from conveyor.errors import DeadLetterNotFoundError, ScriptCode
from conveyor.storage.records import Task
from conveyor.storage.store import Store
from conveyor.storage.transitions import Transition

GROUP = "agents"


async def snapshot(r: aredis.Redis, namespace: str) -> dict[str, Any]:
    """Every key of the namespace with its full contents (and, for streams, the PEL)."""
    out: dict[str, Any] = {}
    async for raw in r.scan_iter(match=f"{namespace}:*"):
        key = raw.decode()
        kind = (await r.type(key)).decode()
        if kind == "hash":
            out[key] = await r.hgetall(key)
        elif kind == "list":
            out[key] = await r.lrange(key, 0, -1)
        elif kind == "zset":
            out[key] = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            groups = {g["name"] for g in await r.xinfo_groups(key)}
            pending = (
                (await r.xpending(key, GROUP))["pending"] if GROUP.encode() in groups else None
            )
            out[key] = (await r.xrange(key), pending)
        else:
            out[key] = await r.get(key)
    return out


@pytest.fixture
async def store(redis: aredis.Redis, namespace: str) -> Store:
    s = Store(redis, Settings(namespace=namespace, partitions=2, max_backlog=4))
    await s.ensure_groups(["default"])
    return s


async def read_one(store: Store) -> Task:
    entries = await store.read(store.keys.streams("default"), "c1", 10, None)
    assert len(entries) == 1
    return store.parse_entry(*entries[0])


def record(task: Task, status: str = "completed") -> bytes:
    return codec.dumps({"step": task.step, "task": task.task, "attempt": task.attempt,
                        "status": status, "worker": "c1"})  # fmt: skip


def complete_call(
    store: Store, task: Task, rec: bytes, *, next_step: str | None, next_queue: str | None,
    payload: bytes, state: bytes, now: int,
) -> Transition:  # fmt: skip
    """Move ``task`` on to ``next_step``, or (None) finish its workflow with ``payload``."""
    if next_step is not None:
        return store.transitions.next(task, rec, now, state, next_step, next_queue or "", payload)
    return store.transitions.returned(task, rec, now, state, payload, None)


def fail_call(
    store: Store, task: Task, rec: bytes, *, retry_delay: float | None, error: dict[str, Any],
    reason: str, now: int,
) -> Transition:  # fmt: skip
    """Retry ``task`` after ``retry_delay`` seconds, or (None) dead-letter it."""
    if retry_delay is not None:
        return store.transitions.retry(task, rec, now, int(retry_delay * 1000), task.attempt + 1)
    return store.transitions.dead(task, rec, now, error=error, reason=reason, frame_queues=None)


def poison_call(
    store: Store, stream: str, entry_id: bytes, fields: dict[bytes, bytes], reason: str
) -> Transition:
    partition, queue = store.stream_info(stream)
    return store.transitions.poison(stream, partition, queue, entry_id, fields, reason, 1)


def test_every_lua_file_opens_with_its_header() -> None:
    folder = resources.files("conveyor.storage").joinpath("scripts")
    files = {p.name.removesuffix(".lua") for p in folder.iterdir() if p.name.endswith(".lua")}
    for name in files:  # each opens with its header: purpose, KEYS, ARGV, returns
        text = folder.joinpath(f"{name}.lua").read_text()
        assert text.startswith(f"-- {name}:")
        assert name == "lib" or ("KEYS" in text and "Returns" in text)


async def test_start_creates_state_and_first_task(store: Store, namespace: str) -> None:
    wf_id, created = await store.start("w", "first", "default", {"a": 1}, request_id="req-1")
    assert created
    keys = store.keys
    p = keys.partition(wf_id)
    snap = await snapshot(store.redis, namespace)
    assert set(snap) == {
        keys.workflow(wf_id), keys.stream(0, "default"), keys.stream(1, "default"),
        keys.recent(p),
    }  # fmt: skip
    assert snap[keys.recent(p)] == [(wf_id.encode(), ANY)]  # indexed for listings
    state = snap[keys.workflow(wf_id)]
    assert state[b"status"] == b"running" and state[b"step"] == b"first"
    assert state[b"t:1"] == b"first" and state[b"seq"] == b"1" and state[b"request_id"] == b"req-1"
    entries, pending = snap[keys.stream(p, "default")]
    assert pending == 0 and len(entries) == 1
    fields = entries[0][1]
    assert fields[b"workflow_id"] == wf_id.encode() and fields[b"input"] == b'{"a":1}'
    assert (fields[b"task"], fields[b"attempt"], fields[b"request_id"]) == (b"1", b"1", b"req-1")
    assert await store.redis.ttl(keys.workflow(wf_id)) == -1  # running: never expires


async def test_start_with_idempotency_key_runs_once(store: Store, namespace: str) -> None:
    first, created = await store.start("w", "s", "default", 1, idempotency_key="k")
    before = await snapshot(store.redis, namespace)
    again, created_again = await store.start("w", "s", "default", 2, idempotency_key="k")
    assert created and not created_again and first == again
    assert await snapshot(store.redis, namespace) == before
    other, _ = await store.start("w", "s", "default", 1, idempotency_key="k2")
    assert other != first


async def test_start_refuses_past_backlog_and_writes_nothing(store: Store, namespace: str) -> None:
    # max_backlog 4 over 2 partitions: each partition's stream takes 2 tasks
    started = 0
    with pytest.raises(BackPressureError, match="is full") as info:
        for _ in range(10):
            await store.start("w", "s", "default", None)
            started += 1
    assert 2 <= started <= 4 and info.value.retry_after > 0
    snap = await snapshot(store.redis, namespace)
    workflows = [k for k in snap if ":wf:" in k]
    assert len(workflows) == started  # the refused start left no state behind
    assert sum(len(v[0]) for k, v in snap.items() if ":q:" in k) == started


async def test_complete_enqueues_next_then_is_idempotent(store: Store, namespace: str) -> None:
    wf_id, _ = await store.start("w", "a", "default", 1, request_id="r")
    task = await read_one(store)
    call = complete_call(store, task, record(task), next_step="b", next_queue="default",
                               payload=b"2", state=b'{"n":1}', now=123)  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    keys = store.keys
    snap = await snapshot(store.redis, namespace)
    state = snap[keys.workflow(wf_id)]
    assert b"t:1" not in state and state[b"t:2"] == b"b" and state[b"seq"] == b"2"
    assert state[b"step"] == b"b" and state[b"state"] == b'{"n":1}'
    assert snap[keys.history(wf_id)] == [record(task)]
    entries, pending = snap[task.stream]
    assert pending == 0 and entries[0][0] == task.entry_id  # ACKed, kept for trim
    nxt = entries[1][1]
    assert (nxt[b"step"], nxt[b"task"], nxt[b"input"], nxt[b"state"]) == (
        b"b",
        b"2",
        b"2",
        b'{"n":1}',
    )
    assert nxt[b"request_id"] == b"r"
    # a redelivered copy of the same entry is dropped: nothing changes
    assert await store.commit([call]) == [ScriptCode.DUPLICATE]
    assert await snapshot(store.redis, namespace) == snap


async def test_complete_done_finishes_publishes_and_expires(
    store: Store, redis: aredis.Redis, namespace: str
) -> None:
    wf_id, _ = await store.start("w", "a", "default", 1)
    task = await read_one(store)
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.finished_channel(task.partition))
    call = complete_call(store, task, record(task), next_step=None, next_queue=None,
                               payload=b'{"ok":true}', state=b"", now=5000)  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.ENDED_COMPLETED]
    status = await store.get(wf_id)
    assert status.status == "completed" and status.result == {"ok": True}
    assert status.finished_at is not None and status.finished_at.timestamp() == 5.0
    for key in (store.keys.workflow(wf_id), store.keys.history(wf_id)):
        assert 0 < await redis.ttl(key) <= store.settings.retention
    message = None
    for _ in range(20):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            break
    assert message is not None and message["data"] == wf_id.encode()
    await pubsub.aclose()
    snap = await snapshot(redis, namespace)
    assert await store.commit([call]) == [ScriptCode.DUPLICATE]
    assert await snapshot(redis, namespace) == snap


async def test_fail_retry_then_promote(store: Store, namespace: str) -> None:
    wf_id, _ = await store.start("w", "a", "default", {"x": 1}, request_id="r")
    task = await read_one(store)
    error = {"type": "E", "message": "m", "traceback": None, "step": "a"}
    call = fail_call(store, task, record(task, "failed"), retry_delay=0.0, error=error,
                           reason="step failed", now=1)  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    keys = store.keys
    snap = await snapshot(store.redis, namespace)
    delayed = snap[keys.delayed(task.partition, "default")]
    assert len(delayed) == 1
    assert snap[task.stream] == ([(task.entry_id, ANY)], 0)  # acknowledged
    assert snap[keys.workflow(wf_id)][b"t:1"] == b"a"  # the task stays active for its retry
    assert await store.commit([call]) == [ScriptCode.DUPLICATE]
    assert await snapshot(store.redis, namespace) == snap
    assert await store.promote(["default"]) == (1, False)
    retry = await read_one(store)
    assert (retry.task, retry.attempt, retry.input, retry.request_id) == (1, 2, b'{"x":1}', "r")
    assert await store.redis.zcard(keys.delayed(task.partition, "default")) == 0
    assert await store.promote(["default"]) == (0, False)
    await store.commit([fail_call(store, retry, record(retry, "failed"), retry_delay=60,
                                        error=error, reason="r", now=1)])  # fmt: skip
    assert await store.promote(["default"]) == (0, True)  # not due yet, still waiting


async def test_fail_dead_letters_and_fails_workflow(store: Store, namespace: str) -> None:
    wf_id, _ = await store.start("w", "a", "default", 7)
    task = await read_one(store)
    error = {"type": "ValueError", "message": "bad", "traceback": "tb", "step": "a"}
    call = fail_call(store, task, record(task, "failed"), retry_delay=None, error=error,
                           reason="step failed", now=1000)  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.ENDED_FAILED]
    status = await store.get(wf_id)
    assert status.status == "failed" and status.error is not None
    assert (status.error.type, status.error.message, status.error.traceback) == (
        "ValueError",
        "bad",
        "tb",
    )
    assert await store.redis.ttl(store.keys.workflow(wf_id)) > 0
    [letter] = await store.dead_letters()
    assert letter.workflow_id == wf_id and letter.step == "a" and letter.queue == "default"
    assert letter.error is not None and letter.error.message == "bad"
    snap = await snapshot(store.redis, namespace)
    assert snap[task.stream] == ([(task.entry_id, ANY)], 0)
    assert await store.commit([call]) == [ScriptCode.DUPLICATE]
    assert await snapshot(store.redis, namespace) == snap


async def test_poison_entry_is_dead_lettered(store: Store, namespace: str) -> None:
    stream = store.keys.stream(1, "default")
    await store.redis.xadd(stream, {"garbage": "1"})
    [(s, entry_id, fields)] = await store.read([stream], "c1", 10, None)
    assert await store.commit([poison_call(store, s, entry_id, fields, "undecodable")]) == [0]
    [letter] = await store.dead_letters()
    assert (
        letter.reason == "undecodable" and letter.workflow_id is None and letter.queue == "default"
    )
    assert (await snapshot(store.redis, namespace))[stream] == ([(entry_id, ANY)], 0)
    with pytest.raises(ReplayError, match="names no workflow task"):
        await store.replay(letter.id)
    await store.drop_dead_letter(letter.id)
    assert await store.dead_letters() == []
    with pytest.raises(DeadLetterNotFoundError):
        await store.drop_dead_letter(letter.id)


async def test_heartbeat_renews_own_entries_only(store: Store) -> None:
    await store.start("w", "a", "default", 1)
    task = await read_one(store)
    await asyncio.sleep(0.05)
    assert await store.heartbeat("c1", {task.stream: [task.entry_id]}) == []
    [info] = await store.redis.xpending_range(task.stream, GROUP, "-", "+", 10)
    assert info["time_since_delivered"] < 50 and info["times_delivered"] == 1
    # someone else took it over: c1 no longer owns it and must not steal it back
    await store.redis.xclaim(task.stream, GROUP, "c2", 0, [task.entry_id])
    assert await store.heartbeat("c1", {task.stream: [task.entry_id]}) == [task.entry_id]
    [info] = await store.redis.xpending_range(task.stream, GROUP, "-", "+", 10)
    assert info["consumer"] == b"c2"
    # once committed (ACKed) it is neither renewed nor reported lost
    await store.redis.xack(task.stream, GROUP, task.entry_id)
    assert await store.heartbeat("c1", {task.stream: [task.entry_id]}) == []
    assert await store.redis.xpending_range(task.stream, GROUP, "-", "+", 10) == []


async def test_reclaim_takes_idle_entries_with_delivery_counts(store: Store) -> None:
    await store.start("w", "a", "default", 1)
    task = await read_one(store)
    plan = [(s, 10) for s in store.keys.streams("default")]
    assert await store.reclaim(plan, "c2", 60_000) == []  # not idle long enough
    await asyncio.sleep(0.05)
    [(stream, entry_id, fields, deliveries)] = await store.reclaim(plan, "c2", 10)
    assert (stream, entry_id, deliveries) == (task.stream, task.entry_id, 2)
    assert fields[b"workflow_id"] == task.workflow_id.encode()
    # handed back entries are idle at once, so the next reclaim takes them immediately
    await store.hand_back("c2", {stream: [entry_id]})
    [(_, _, _, deliveries)] = await store.reclaim(plan, "c3", 1000)
    assert deliveries == 3


async def test_reclaim_finds_a_stalled_entry_behind_live_ones(store: Store) -> None:
    """XPENDING IDLE skips the live entries on the server: a stalled entry behind many
    fresh ones is found in one call, whatever the count asked for."""
    stream = store.keys.stream(0, "default")
    ids = [await store.redis.xadd(stream, {"n": i}) for i in range(40)]
    await store.redis.xreadgroup(GROUP, "alive", {stream: ">"}, count=39)
    await store.redis.xreadgroup(GROUP, "dead", {stream: ">"}, count=1)  # ids[39]: stalls
    await asyncio.sleep(0.1)
    await store.redis.xclaim(stream, GROUP, "alive", 0, ids[:39], justid=True)  # renewed
    taken = [eid for _, eid, _, _ in await store.reclaim([(stream, 1)], "c9", 50)]
    assert taken == [ids[39]]


async def test_reclaim_takes_one_suspect_at_a_time(store: Store) -> None:
    """Entries delivered more than once (their consumer died holding them) are taken at most
    ``suspects`` at a time; first deliveries and entries past the limit are not bounded."""
    stream = store.keys.stream(0, "default")
    ids = [await store.redis.xadd(stream, {"n": i}) for i in range(6)]
    await store.redis.xreadgroup(GROUP, "dead", {stream: ">"}, count=6)
    # ids[0..2] were delivered twice, ids[5] more than max_deliveries times
    await store.redis.xclaim(stream, GROUP, "dead", 0, ids[:3])
    for _ in range(store.settings.max_deliveries):
        await store.redis.xclaim(stream, GROUP, "dead", 0, [ids[5]])
    await asyncio.sleep(0.05)
    taken = await store.reclaim([(stream, 10)], "c9", 20, suspects=1)
    got = {eid: deliveries for _, eid, _, deliveries in taken}
    past = store.settings.max_deliveries + 2
    assert got == {ids[0]: 3, ids[3]: 2, ids[4]: 2, ids[5]: past}
    # taken just now by c9, so not idle: with no suspect allowed, nothing else is taken
    assert await store.reclaim([(stream, 10)], "c8", 20, suspects=0) == []
    rest = await store.reclaim([(stream, 10)], "c7", 0)  # no bound: the other suspects too
    assert {ids[1], ids[2]} <= {eid for _, eid, _, _ in rest}


async def test_replay_codes_and_success(store: Store, namespace: str) -> None:
    with pytest.raises(DeadLetterNotFoundError, match="invalid dead-letter id"):
        await store.replay("nope")
    with pytest.raises(DeadLetterNotFoundError, match="no dead letter"):
        await store.replay("p0:1-0")
    wf_id, _ = await store.start("w", "a", "default", 7)
    task = await read_one(store)
    error = {"type": "E", "message": "m", "traceback": None, "step": "a"}
    await store.commit([fail_call(store, task, record(task, "failed"), retry_delay=None,
                                        error=error, reason="r", now=1)])  # fmt: skip
    [letter] = await store.dead_letters()
    assert await store.replay(letter.id) == wf_id
    status = await store.get(wf_id)
    assert status.status == "running" and status.error is None and status.finished_at is None
    assert await store.redis.ttl(store.keys.workflow(wf_id)) == -1
    assert await store.dead_letters() == []
    again = await read_one(store)
    assert (again.task, again.attempt, again.input) == (1, 1, b"7")
    # NOT_FAILED: a dead letter whose workflow is running again is kept, not replayed twice
    await store.redis.xadd(store.keys.dead(task.partition), {
        "workflow_id": wf_id, "workflow": "w", "step": "a", "task": 1, "queue": "default",
        "input": b"7", "reason": "r"})  # fmt: skip
    [letter] = await store.dead_letters()
    with pytest.raises(ReplayError, match="is 'running', not failed"):
        await store.replay(letter.id)
    # NOT_FOUND (workflow): its state expired
    await store.redis.delete(store.keys.workflow(wf_id))
    with pytest.raises(ReplayError, match="has expired"):
        await store.replay(letter.id)
    assert len(await store.dead_letters()) == 1


async def test_cancel_codes_and_drops_the_active_task(store: Store, namespace: str) -> None:
    with pytest.raises(WorkflowNotFoundError):
        await store.cancel("missing")
    wf_id, _ = await store.start("w", "a", "default", 1)
    task = await read_one(store)
    assert await store.cancel(wf_id) == "cancelled"
    state = await store.redis.hgetall(store.keys.workflow(wf_id))
    assert state[b"status"] == b"cancelled" and not [f for f in state if f.startswith(b"t:")]
    assert await store.redis.ttl(store.keys.workflow(wf_id)) > 0
    assert await store.cancel(wf_id) == "cancelled"  # FINISHED: nothing written
    call = complete_call(store, task, record(task), next_step="b", next_queue="default",
                               payload=b"1", state=b"", now=1)  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.DUPLICATE]
    snap = await snapshot(store.redis, namespace)
    assert snap[task.stream] == ([(task.entry_id, ANY)], 0)  # dropped, nothing enqueued


async def test_scripts_reload_after_script_flush(store: Store) -> None:
    await store.redis.script_flush()
    wf_id, created = await store.start("w", "a", "default", 1)
    assert created
    task = await read_one(store)
    await store.redis.script_flush()
    call = complete_call(store, task, record(task), next_step=None, next_queue=None,
                               payload=b"1", state=b"", now=1)  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.ENDED_COMPLETED]
    assert (await store.get(wf_id)).status == "completed"


async def test_partition_count_is_checked(redis: aredis.Redis, namespace: str) -> None:
    from conveyor import ConfigurationError

    await Store(redis, Settings(namespace=namespace, partitions=2)).check_partitions()
    await Store(redis, Settings(namespace=namespace, partitions=2)).check_partitions()
    with pytest.raises(ConfigurationError, match="created with 2 partitions"):
        await Store(redis, Settings(namespace=namespace, partitions=3)).check_partitions()


async def test_trim_deletes_only_acknowledged_entries(store: Store) -> None:
    """Never a pending or an undelivered entry: only those before the oldest pending one
    (or, with none pending, up to the group's last delivered id)."""
    stream = store.keys.stream(0, "default")
    ids = [await store.redis.xadd(stream, {"n": i}) for i in range(6)]
    assert await store.trim(["default"]) == 0  # nothing delivered yet
    await store.redis.xreadgroup(GROUP, "c", {stream: ">"}, count=4)  # 0..3 delivered
    await store.redis.xack(stream, GROUP, ids[0], ids[1], ids[3])  # 2 stays pending
    assert await store.trim(["default"]) == 2
    assert [e[0] for e in await store.redis.xrange(stream)] == ids[2:]
    await store.redis.xack(stream, GROUP, ids[2])  # nothing pending: trim up to 3
    assert await store.trim(["default"]) == 2
    assert [e[0] for e in await store.redis.xrange(stream)] == ids[4:]  # undelivered kept
    assert await store.trim(["default"]) == 0
    # a stream without the group is left alone
    await store.redis.xadd(store.keys.stream(0, "other"), {"n": 1})
    assert await store.trim(["other"]) == 0


async def test_complete_batch_mixes_outcomes_and_partitions(store: Store, namespace: str) -> None:
    """Completions of one partition go out as one batch call; each keeps its own result."""
    store = Store(store.redis, Settings(namespace=namespace, partitions=2))
    ids = [(await store.start("w", "a", "default", i))[0] for i in range(12)]
    entries = await store.read(store.keys.streams("default"), "c1", 100, None)
    tasks = [store.parse_entry(*e) for e in entries]
    assert len(tasks) == 12 and len({t.partition for t in tasks}) == 2
    calls = [
        complete_call(store, t, record(t), next_step=None if i % 2 else "b", next_queue="default",
                            payload=b"1", state=b"", now=1)
        for i, t in enumerate(tasks)
    ]  # fmt: skip
    fail = fail_call(store, tasks[0], record(tasks[0], "failed"), retry_delay=None,
                           error={"type": "E", "message": "m"}, reason="r", now=1)  # fmt: skip
    # the first task both fails and completes: whichever runs first wins, the other is a duplicate
    results = await store.commit([fail, *calls, calls[3]])
    assert results[0] == ScriptCode.ENDED_FAILED and results[1] == ScriptCode.DUPLICATE
    # odd tasks end their workflows (no next step), even ones move on
    ended, moved = ScriptCode.ENDED_COMPLETED, ScriptCode.OK
    assert results[2:13] == [ended if i % 2 else moved for i in range(1, 12)]
    assert results[13] == ScriptCode.DUPLICATE
    statuses = [(await store.get(i)).status for i in ids]
    # odd tasks finished; even ones moved on to "b", but task 0 had failed first
    assert statuses.count("failed") == 1 and statuses.count("completed") == 6
    assert statuses.count("running") == 5


async def test_a_failed_partition_does_not_fail_the_starts_of_the_others(store: Store) -> None:
    """Starts of several partitions go out in one pipeline: a call that fails (here: the
    partition's stream is not a stream) fails only its own starts; the others are written
    and reported as started, not as errors."""
    candidates = [
        store.start_request("w", "a", "default", 1, idempotency_key=f"k{i}") for i in range(50)
    ]
    requests = [next(r for r in candidates if r.partition == p) for p in (0, 1)]
    await store.redis.delete(store.keys.stream(1, "default"))
    await store.redis.set(store.keys.stream(1, "default"), "not a stream")
    ok, failed = await store.start_many(requests)
    assert ok == (requests[0].workflow_id, True)
    assert isinstance(failed, ResponseError) and "WRONGTYPE" in str(failed)
    assert await store.get_status(requests[0].workflow_id) == "running"
