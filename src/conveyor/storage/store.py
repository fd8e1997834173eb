"""The Redis store: the small semantic interface the worker, client and CLI talk through.

Transitions (start, complete, fail, promote, heartbeat, replay, cancel) are Lua scripts; this
module builds their keys and arguments and decodes what comes back. No other module builds a
key or calls a transition script.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import OutOfMemoryError, ResponseError

from .. import codec
from ..errors import (
    BackPressureError,
    ConfigurationError,
    DeadLetterNotFoundError,
    ReplayError,
    ScriptCode,
    SignalError,
    WorkflowNotFoundError,
)
from ..observability.tracing import TRACING
from ..settings import Settings
from ..status import RunStatus
from .connection import UNAVAILABLE, RedisClient, is_cluster
from .durability import Confirmation, warn_about_server
from .frames import parent_target, parse_step_ref, step_ref
from .keys import Keys
from .records import DeadLetter, StepError, Task, WorkflowStatus, from_ms
from .scripts import ScriptRegistry
from .transitions import Transition, Transitions

__all__ = ["COMMIT_BATCH", "StartRequest", "Store", "Transition", "now_ms"]

#: Most transitions sent in one call of the commit script (bounds how long one call runs).
COMMIT_BATCH = 64
#: Most starts sent in one call of the start script.
START_BATCH = 128
#: On a Cluster, workers poll their streams (see Store._read_slots): the first and the
#: longest pause between two reads that found nothing, ms.
CLUSTER_POLL_MS = (1, 25)


@dataclass(slots=True)
class StartRequest:
    """A prepared start (see Store.start_request), run by Store.start_many."""

    workflow_id: str
    partition: int
    queue: str
    keys: list[str]
    argv: list[Any]


def now_ms() -> int:
    return int(time.time() * 1000)


def new_workflow_id() -> str:
    """32 random hex digits (as uuid4().hex, at a fifth of its cost: starts make many)."""
    return os.urandom(16).hex()


def idempotent_workflow_id(workflow: str, idempotency_key: str) -> str:
    """The same (workflow, key) always maps to the same id, so a repeated start is a no-op."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"conveyor:{workflow}:{idempotency_key}").hex


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _entry_order(letter: DeadLetter) -> tuple[int, int]:
    """Stream entry ids are <ms>-<seq>: order dead letters by when they were written."""
    ms, _, seq = letter.id.partition(":")[2].partition("-")
    return int(ms), int(seq or 0)


class Store:
    """Semantic operations on one namespace of one Redis deployment."""

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        # redis-py's command annotations are unions of sync and async results: type the
        # client loosely here and keep this module's own signatures precise instead
        self.redis: Any = redis
        self.settings = settings
        self.keys = Keys(settings.namespace, settings.partitions)
        self.scripts = ScriptRegistry()
        self.transitions = Transitions(self.keys, settings)
        self._stream_index: dict[str, tuple[int, str]] = {}
        self._signal_queues: dict[str, str] = {}  # signal name -> queue its waiter was on
        self._retention = int(settings.retention)
        self.cluster = is_cluster(redis)
        #: WAIT for replicas after writes (durability "replicated"), else None
        self.confirm = (
            Confirmation(settings.durability_replicas, int(settings.durability_timeout * 1000))
            if settings.durability == "replicated"
            else None
        )
        self._server_checked = False
        self._poll_ms = CLUSTER_POLL_MS[0]  # a Cluster's current pause between empty reads

    # -- set-up -----------------------------------------------------------------------------

    async def check_partitions(self) -> None:
        """Record the partition count on first use; refuse to run with a different one.
        The first time, also warn about Redis settings that can lose acknowledged work."""
        if not self._server_checked:
            warned = await warn_about_server(self.redis, self.settings.durability)
            self._server_checked = warned is not None
        key = self.keys.meta
        await self.redis.hsetnx(key, "partitions", self.settings.partitions)
        stored = await self.redis.hget(key, "partitions")
        if stored is not None and int(stored) != self.settings.partitions:
            raise ConfigurationError(
                f"namespace {self.settings.namespace!r} was created with {int(stored)} "
                f"partitions, but this process is configured with {self.settings.partitions}; "
                "set CONVEYOR_PARTITIONS to match (workflow ids map to partitions)"
            )

    async def ensure_groups(self, queues: Iterable[str]) -> None:
        """Create every partition stream of ``queues`` with its consumer group (idempotent)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            for stream in self.keys.streams(queue):
                pipe.xgroup_create(stream, self.settings.group, id="0", mkstream=True)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, ResponseError) and "BUSYGROUP" not in str(result):
                raise result

    async def register(self, descriptions: dict[str, dict[str, Any]]) -> None:
        """Publish workflow descriptions so clients without the code can start them."""
        if descriptions:
            mapping = {name: codec.dumps(desc) for name, desc in descriptions.items()}
            await self.redis.hset(self.keys.registry, mapping=mapping)

    async def lookup(self, workflow: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.keys.registry, workflow)
        return codec.loads(raw) if raw else None

    def stream_info(self, stream: str) -> tuple[int, str]:
        """(partition, queue) of a task stream key."""
        info = self._stream_index.get(stream)
        if info is None:
            tag, _, queue = stream[len(self.settings.namespace) + 1 :].partition(":q:")
            info = (int(tag.strip("{}p")), queue)
            self._stream_index[stream] = info
        return info

    # -- start ------------------------------------------------------------------------------

    def start_request(
        self,
        workflow: str,
        step: str,
        queue: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        max_steps: int = 0,
        delay: float | None = None,
        on_cancel: tuple[str, str] | None = None,
    ) -> StartRequest:
        """Prepare a start: choose the workflow id (deterministic with an idempotency key).
        ``delay`` seconds before the first step (a durable timer); ``max_steps`` bounds the
        tasks it may create (0: unbounded); ``on_cancel`` is (step, queue) of its cancel
        handler."""
        if idempotency_key is not None:
            workflow_id = idempotent_workflow_id(workflow, idempotency_key)
        else:
            workflow_id = new_workflow_id()
        if delay is not None and delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, not {delay}")
        partition = self.keys.partition(workflow_id)
        now = now_ms()
        keys = [
            self.keys.workflow(workflow_id, partition),
            self.keys.stream(partition, queue),
            self.keys.delayed(partition, queue),
            self.keys.recent(partition),
        ]
        argv = [
            workflow_id,
            workflow,
            step,
            codec.dumps(input),
            self.settings.backlog_per_partition,
            now,
            request_id or "",
            max_steps,
            int((delay or 0) * 1000),
            step_ref(*on_cancel) if on_cancel else "",
            self._retention,
            TRACING.start_carrier(now, workflow),
        ]
        return StartRequest(workflow_id, partition, queue, keys, argv)

    async def start(self, *args: Any, **kwargs: Any) -> tuple[str, bool]:
        """Create a workflow and enqueue its first task. Returns (id, created).
        Arguments as for :meth:`start_request`."""
        [outcome] = await self.start_many([self.start_request(*args, **kwargs)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def start_many(self, requests: list[StartRequest]) -> list[tuple[str, bool] | Exception]:
        """Run starts in one pipeline: one script call per partition for up to START_BATCH
        of them. Each result is (id, created), the BackPressureError of that start (its
        queue is full, or Redis is out of memory), or the error of its script call: a call
        that failed does not fail the starts of other partitions, which were written."""
        by_partition: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            by_partition.setdefault(request.partition, []).append(i)
        calls: list[list[Any]] = []
        owners: list[list[int]] = []
        for members in by_partition.values():
            for start in range(0, len(members), START_BATCH):
                chunk = members[start : start + START_BATCH]
                keys = [k for i in chunk for k in requests[i].keys]
                argv = [a for i in chunk for a in requests[i].argv]
                calls.append(self.scripts.args("start", keys, argv))
                owners.append(chunk)
        out: list[tuple[str, bool] | Exception | None] = [None] * len(requests)
        for chunk, reply in zip(
            owners, await self.scripts.call_many(self.redis, calls, self.confirm), strict=True
        ):
            # redis-py raises OutOfMemoryError (without the "OOM" prefix) for "-OOM ..."
            if isinstance(reply, OutOfMemoryError) or (
                isinstance(reply, ResponseError) and str(reply).startswith("OOM")
            ):
                for i in chunk:
                    out[i] = BackPressureError(
                        "Redis is out of memory (maxmemory reached): start refused; retry later",
                        retry_after=5.0,
                    )
                continue
            if isinstance(reply, Exception):
                for i in chunk:
                    out[i] = reply
                continue
            for i, (code, detail) in zip(chunk, reply, strict=True):
                request = requests[i]
                if code == ScriptCode.BACKPRESSURE:
                    out[i] = BackPressureError(
                        f"queue {request.queue!r} is full: partition {request.partition} holds "
                        f"{int(detail)} tasks (bound {self.settings.backlog_per_partition}); "
                        "retry later"
                    )
                else:
                    out[i] = (request.workflow_id, code == ScriptCode.OK)
        return [x for x in out if x is not None]

    # -- reading ----------------------------------------------------------------------------

    def parse_entry(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Task:
        """Decode an entry's routing fields; raises KeyError/ValueError for a poison entry."""
        partition, queue = self.stream_info(stream)
        get = fields.get
        # positional, and the optional fields decoded inline: this runs once per task
        request_id, frame, parent, wait, trace = (
            get(b"request_id"), get(b"frame"), get(b"parent"), get(b"wait"), get(b"trace"),
        )  # fmt: skip
        return Task(
            stream,
            entry_id,
            partition,
            queue,
            fields[b"workflow_id"].decode(),
            fields[b"workflow"].decode(),
            fields[b"step"].decode(),
            int(fields[b"task"]),
            int(fields[b"attempt"]),
            get(b"input") or b"null",
            get(b"state"),
            request_id.decode() if request_id else None,
            frame.decode() if frame else "",
            parent.decode() if parent else "",
            wait.decode() if wait else None,
            trace.decode() if trace else "",
        )

    async def read(
        self, streams: Sequence[str], consumer: str, count: int, block_ms: int | None
    ) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """New entries for ``consumer`` from ``streams`` (XREADGROUP >), as raw triples."""
        if self.cluster:
            return await self._read_slots(streams, consumer, count, block_ms)
        response = await self.redis.xreadgroup(
            self.settings.group,
            consumer,
            dict.fromkeys(streams, ">"),
            count=count,
            block=block_ms,
        )
        entries: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        for stream, items in response or ():
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in items:
                entries.append((name, entry_id, fields or {}))
        return entries

    async def _read_slots(
        self, streams: Sequence[str], consumer: str, count: int, block_ms: int | None
    ) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """:meth:`read` on a Cluster, where one XREADGROUP cannot span hash slots (and each
        partition is a slot): one read per slot, pipelined (each master answers for its own
        in parallel), without BLOCK. When all come back empty the call pauses before
        returning, from 1 ms doubling to 25 ms while the streams stay empty, as a blocking
        read would have waited."""
        by_slot: dict[str, dict[str, str]] = {}
        for stream in streams:
            by_slot.setdefault(stream.partition("}")[0], {})[stream] = ">"
        pipe = self.redis.pipeline(transaction=False)
        for group in by_slot.values():
            pipe.xreadgroup(self.settings.group, consumer, group, count=count)
        entries: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        for response in await pipe.execute():
            for stream, items in response or ():
                name = stream.decode() if isinstance(stream, bytes) else stream
                for entry_id, fields in items:
                    entries.append((name, entry_id, fields or {}))
        if entries:
            self._poll_ms = CLUSTER_POLL_MS[0]
        elif block_ms:
            await asyncio.sleep(min(self._poll_ms, block_ms) / 1000)
            self._poll_ms = min(self._poll_ms * 2, CLUSTER_POLL_MS[1])
        return entries

    async def reclaim(
        self,
        plan: Sequence[tuple[str, int]],
        consumer: str,
        min_idle_ms: int,
        *,
        suspects: int | None = None,
        skipped: list[int] | None = None,
    ) -> list[tuple[str, bytes, dict[bytes, bytes], int]]:
        """Take over entries idle longer than ``min_idle_ms`` (their consumer is presumed dead),
        at most ``count`` from each ``(stream, count)`` of ``plan``. Two pipelined round trips:
        ``XPENDING … IDLE`` lists the idle entries with their delivery counts (Redis skips
        the live ones itself), then ``XCLAIM`` (with the same minimum idle time, so an entry
        another worker took meanwhile is left alone) takes the chosen ones.

        ``suspects`` bounds the entries taken that were already delivered more than once:
        they outlived a consumer that died while holding them, and may be what killed it. A
        worker that runs at most one of them at a time keeps a step that crashes its process
        from taking the healthy steps around it along, delivery after delivery, until those
        too are dead-lettered. None: no bound. ``skipped`` (a list) gets the number of
        suspects left for later appended.

        Returns (stream, id, fields, deliveries) for each entry taken; entries deleted while
        pending (Redis 6.2 claims them with no fields) are acknowledged and skipped.
        """
        group = self.settings.group
        pipe = self.redis.pipeline(transaction=False)
        for stream, count in plan:
            # a few more than wanted: suspects among them do not hide first-time orphans
            pipe.xpending_range(stream, group, "-", "+", count + 8, idle=min_idle_ms)
        listed = await pipe.execute()
        left = suspects
        held_back = 0
        chosen: list[tuple[str, list[bytes], dict[bytes, int]]] = []
        for (stream, count), pending in zip(plan, listed, strict=True):
            ids: list[bytes] = []
            counts: dict[bytes, int] = {}
            for p in pending:
                if len(ids) >= count:
                    break
                delivered = int(p["times_delivered"])
                if delivered > 1 and delivered <= self.settings.max_deliveries:
                    if left is not None and left <= 0:
                        held_back += 1
                        continue  # past its limit it is dead-lettered unrun: no risk
                    if left is not None:
                        left -= 1
                ids.append(p["message_id"])
                counts[p["message_id"]] = delivered + 1
            if ids:
                chosen.append((stream, ids, counts))
        if skipped is not None:
            skipped.append(held_back)
        if not chosen:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids, _ in chosen:
            pipe.xclaim(stream, group, consumer, min_idle_ms, ids)
        out: list[tuple[str, bytes, dict[bytes, bytes], int]] = []
        gone: list[tuple[str, list[bytes]]] = []
        for (stream, _, counts), claimed in zip(chosen, await pipe.execute(), strict=True):
            deleted = [eid for eid, fields in claimed if eid is not None and not fields]
            if deleted:
                gone.append((stream, deleted))
            out.extend(
                (stream, eid, fields, counts.get(eid, 2))
                for eid, fields in claimed
                if eid is not None and fields
            )
        if gone:
            pipe = self.redis.pipeline(transaction=False)
            for stream, ids in gone:
                pipe.xack(stream, group, *ids)
            await pipe.execute()
        return out

    async def heartbeat(self, consumer: str, entries: dict[str, list[bytes]]) -> list[bytes]:
        """Renew the lease of entries ``consumer`` runs; returns the ids it no longer owns."""
        calls = [
            self.scripts.args("heartbeat", [stream], [self.settings.group, consumer, *ids])
            for stream, ids in entries.items()
            if ids
        ]
        lost: list[bytes] = []
        for result in await self.scripts.call_many(self.redis, calls):
            if isinstance(result, Exception):
                raise result
            lost.extend(result)
        return lost

    async def hand_back(self, consumer: str, entries: dict[str, list[bytes]]) -> None:
        """Mark entries this consumer will not finish as idle for a whole visibility timeout,
        so another worker takes them over at its next reclaim instead of after a wait."""
        idle = int(self.settings.visibility_timeout * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in entries.items():
            if ids:
                pipe.xclaim(stream, self.settings.group, consumer, 0, ids, idle=idle, justid=True)
        await pipe.execute()

    async def promote(self, queues: Iterable[str], limit: int = 1000) -> tuple[int, bool]:
        """Move due delayed tasks of ``queues`` (all partitions) onto their streams.
        Returns (tasks moved, whether any task is still waiting)."""
        calls = [
            self.scripts.args("promote", [self.keys.delayed(p, q), self.keys.stream(p, q)], [limit])
            for q in queues
            for p in range(self.settings.partitions)
        ]
        moved, waiting = 0, False
        for result in await self.scripts.call_many(self.redis, calls):
            if isinstance(result, Exception):
                raise result
            moved += int(result[0])
            waiting = waiting or int(result[1]) >= 0
        return moved, waiting

    async def trim(self, queues: Iterable[str]) -> int:
        """Delete acknowledged entries of ``queues``' streams in bulk (see trim.lua)."""
        calls = [
            self.scripts.args("trim", [self.keys.stream(p, q)], [self.settings.group])
            for q in queues
            for p in range(self.settings.partitions)
        ]
        deleted = 0
        for result in await self.scripts.call_many(self.redis, calls):
            if isinstance(result, Exception):
                raise result
            deleted += int(result)
        return deleted

    async def commit(self, transitions: list[Transition]) -> list[int | Exception]:
        """Run transitions in one pipeline, batched per partition (one script call for up to
        COMMIT_BATCH of them). Each result is a ScriptCode value, or the error of its call (a
        script error). A connection error, or any other "unavailable" error of one call,
        raises: it is then unknown which ran, and since every transition is idempotent the
        caller simply commits the same transitions again."""
        calls: list[list[Any]] = []
        owners: list[list[int]] = []  # for each call, the transitions it carries
        batches: dict[int, list[int]] = {}
        for i, t in enumerate(transitions):
            batches.setdefault(t.partition, []).append(i)
        head = [self.settings.group, self._retention, "1" if self.settings.events else "0"]
        for members in batches.values():
            for start in range(0, len(members), COMMIT_BATCH):
                chunk = members[start : start + COMMIT_BATCH]
                keys: list[str] = []
                argv: list[Any] = list(head)
                for i in chunk:
                    t = transitions[i]
                    keys += t.keys
                    argv += [len(t.keys), len(t.argv), *t.argv]
                calls.append(self.scripts.args("commit", keys, argv))
                owners.append(chunk)
        results: list[int | Exception] = [0] * len(transitions)
        replies = await self.scripts.call_many(self.redis, calls, self.confirm)
        transient = next((r for r in replies if isinstance(r, UNAVAILABLE)), None)
        if transient is not None:
            # a call met a passing condition (a slot moving between Cluster masters, a
            # failover): raise it, so the whole batch is sent again (repeats are DUPLICATE)
            raise transient
        for members, reply in zip(owners, replies, strict=True):
            if isinstance(reply, Exception):
                for i in members:
                    results[i] = reply
            else:
                for i, code in zip(members, reply, strict=True):
                    results[i] = int(code)
        return results

    # -- reading workflows ------------------------------------------------------------------

    async def get(self, workflow_id: str) -> WorkflowStatus:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.workflow(workflow_id))
        pipe.lrange(self.keys.history(workflow_id), 0, -1)
        fields, history = await pipe.execute()
        if not fields:
            raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}")
        return WorkflowStatus.from_redis(workflow_id, fields, history)

    async def get_status(self, workflow_id: str) -> RunStatus | None:
        raw = await self.redis.hget(self.keys.workflow(workflow_id), "status")
        return RunStatus(raw.decode()) if raw else None

    async def cancel(self, workflow_id: str, reason: str = "cancelled") -> RunStatus:
        """Cancel a workflow and, in turn, its running child workflows; returns the status it
        ends in ('cancelled', or the status it had already finished with)."""
        partition = self.keys.partition(workflow_id)
        key = self.keys.workflow(workflow_id, partition)
        parent, on_cancel = await self.redis.hmget(key, "parent", "on_cancel")
        cancel_stream = parent_key = parent_stream = key
        if on_cancel:
            cancel_stream = self.keys.stream(partition, parse_step_ref(on_cancel.decode())[1])
        if parent:
            parent_id, parent_queue = parent_target(parent.decode())
            parent_key = self.keys.workflow(parent_id, partition)
            parent_stream = self.keys.stream(partition, parent_queue)
        keys = [
            key,
            self.keys.history(workflow_id, partition),
            cancel_stream,
            parent_key,
            parent_stream,
            self.keys.stopped(partition),
            self.keys.events(workflow_id, partition),
        ]
        argv = [
            now_ms(),
            self._retention,
            self.keys.finished_channel(partition),
            workflow_id,
            reason,
        ]
        code, status, *children = await self.scripts.call(
            self.redis, "cancel", keys, argv, self.confirm
        )
        if code == ScriptCode.NOT_FOUND:
            raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}")
        for child in children:
            await self.cancel(child.decode(), f"parent {workflow_id} cancelled")
        return RunStatus(status.decode() if isinstance(status, bytes) else status)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> str:
        """Send signal ``name`` to a workflow: resume its wait, or buffer the payload for a
        later wait. Returns 'delivered' or 'buffered'."""
        partition = self.keys.partition(workflow_id)
        key = self.keys.workflow(workflow_id, partition)
        buffer = self.keys.signals(workflow_id, name, partition)
        body = codec.dumps(payload)
        # the queue of the waiting step: guessed from the last signal of this name (usually
        # right: one round trip), else the script says which (CHANGED) and we call again
        queue = self._signal_queues.get(name, "")
        for _ in range(10):
            stream = self.keys.stream(partition, queue) if queue else key
            argv = [name, body, now_ms(), queue, self._retention, workflow_id]
            code, detail = await self.scripts.call(
                self.redis, "signal", [key, buffer, stream], argv, self.confirm
            )
            detail = detail.decode() if isinstance(detail, bytes) else str(detail)
            if code == ScriptCode.NOT_FOUND:
                raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}")
            if code == ScriptCode.FINISHED:
                raise SignalError(
                    f"workflow {workflow_id} has already finished ({detail}); signal "
                    f"{name!r} not delivered"
                )
            if code == ScriptCode.OK:
                if queue:
                    if len(self._signal_queues) > 1000:  # many distinct names: stay small
                        self._signal_queues.clear()
                    self._signal_queues[name] = queue
                return detail
            queue = detail
        raise SignalError(f"signal {name!r} to {workflow_id}: the wait kept changing; retry")

    async def stopped_since(self, since_ms: int) -> dict[str, int]:
        """Workflows that stopped early (cancelled or failed) since ``since_ms``: id -> when."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.settings.partitions):
            pipe.zrangebyscore(self.keys.stopped(p), since_ms, "+inf", withscores=True)
        out: dict[str, int] = {}
        for members in await pipe.execute():
            out.update((m.decode(), int(score)) for m, score in members)
        return out

    async def claim_timers(self, tasks: list[Task]) -> list[bool]:
        """For wait timers that fired: whether each still resolves its wait (see claim.lua)."""
        calls = [
            self.scripts.args(
                "claim",
                [self.keys.workflow(t.workflow_id, t.partition)],
                [t.wait or "", t.task],
            )
            for t in tasks
        ]
        out = []
        for result in await self.scripts.call_many(self.redis, calls):
            if isinstance(result, Exception):
                raise result
            out.append(bool(result))
        return out

    # -- dead letters -----------------------------------------------------------------------

    @staticmethod
    def _split_dead_id(dead_id: str) -> tuple[int, str]:
        tag, sep, entry = dead_id.partition(":")
        if not sep or not tag.startswith("p") or not tag[1:].isdigit():
            raise DeadLetterNotFoundError(
                f"invalid dead-letter id {dead_id!r}: expected p<partition>:<entry id>"
            )
        return int(tag[1:]), entry

    @staticmethod
    def _dead_letter(partition: int, entry_id: bytes, f: dict[bytes, bytes]) -> DeadLetter:
        error = codec.loads(f.get(b"error"))
        task = f.get(b"task")
        return DeadLetter(
            id=f"p{partition}:{entry_id.decode()}",
            workflow_id=_text(f.get(b"workflow_id")),
            workflow=_text(f.get(b"workflow")),
            step=_text(f.get(b"step")),
            task=int(task) if task else None,
            queue=_text(f.get(b"queue")),
            reason=_text(f.get(b"reason")) or "",
            error=StepError.model_validate(error) if error else None,
            failed_at=from_ms(f.get(b"failed_at")),
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of every partition, oldest first, at most ``limit``."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.settings.partitions):
            pipe.xrange(self.keys.dead(p), count=limit)
        letters: list[DeadLetter] = []
        for p, entries in enumerate(await pipe.execute()):
            letters.extend(self._dead_letter(p, eid, f) for eid, f in entries)
        letters.sort(key=_entry_order)
        return letters[:limit]

    async def dead_letter(self, dead_id: str) -> DeadLetter:
        partition, entry = self._split_dead_id(dead_id)
        found = await self.redis.xrange(self.keys.dead(partition), entry, entry)
        if not found:
            raise DeadLetterNotFoundError(f"no dead letter {dead_id!r}")
        return self._dead_letter(partition, found[0][0], found[0][1])

    async def replay(self, dead_id: str) -> str:
        """Re-run the failed step of a dead letter's workflow; returns the workflow id."""
        letter = await self.dead_letter(dead_id)
        if not letter.workflow_id or not letter.queue or letter.task is None:
            raise ReplayError(f"dead letter {dead_id} names no workflow task: drop it instead")
        partition, entry = self._split_dead_id(dead_id)
        keys = [
            self.keys.dead(partition),
            self.keys.workflow(letter.workflow_id),
            self.keys.history(letter.workflow_id),
            self.keys.stream(partition, letter.queue),
            self.keys.stopped(partition),
        ]
        code, detail = await self.scripts.call(
            self.redis, "replay", keys, [entry, now_ms()], self.confirm
        )
        detail = detail.decode() if isinstance(detail, bytes) else str(detail)
        if code == ScriptCode.NOT_FOUND and detail == "entry":
            raise DeadLetterNotFoundError(f"no dead letter {dead_id!r}")
        if code == ScriptCode.NOT_FOUND:
            raise ReplayError(
                f"workflow {letter.workflow_id} of dead letter {dead_id} has expired; "
                "its state is gone, so it cannot be replayed"
            )
        if code == ScriptCode.NOT_FAILED:
            raise ReplayError(
                f"workflow {letter.workflow_id} is {detail!r}, not failed; nothing replayed"
            )
        return letter.workflow_id

    async def drop_dead_letter(self, dead_id: str) -> None:
        partition, entry = self._split_dead_id(dead_id)
        if not await self.redis.xdel(self.keys.dead(partition), entry):
            raise DeadLetterNotFoundError(f"no dead letter {dead_id!r}")

    # -- queues -----------------------------------------------------------------------------

    async def backlog(self, queues: Iterable[str]) -> dict[str, dict[str, int]]:
        """Per queue: tasks in its streams (waiting or running) and tasks delayed."""
        queues = list(queues)
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            for p in range(self.settings.partitions):
                pipe.xlen(self.keys.stream(p, q))
                pipe.zcard(self.keys.delayed(p, q))
        values = await pipe.execute()
        out: dict[str, dict[str, int]] = {}
        per_queue = 2 * self.settings.partitions
        for i, q in enumerate(queues):
            chunk = values[i * per_queue : (i + 1) * per_queue]
            out[q] = {"stream": sum(chunk[0::2]), "delayed": sum(chunk[1::2])}
        return out
