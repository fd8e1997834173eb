"""The task streams: reading new entries, taking over those of dead consumers (reclaim),
keeping this consumer's leases (heartbeat, hand back), moving due delayed tasks onto their
streams (promote), deleting acknowledged entries (trim) and counting what waits (backlog).
These run in the worker's hot path: each is one pipelined round trip (or two, for reclaim).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from .base import Backend, Role
from .records import Task

#: On a Cluster, workers poll their streams (see Streams._read_slots): the first and the
#: longest pause between two reads that found nothing, ms.
CLUSTER_POLL_MS = (1, 25)


class Streams(Role):
    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self._stream_index: dict[str, tuple[int, str]] = {}
        self._poll_ms = CLUSTER_POLL_MS[0]  # a Cluster's current pause between empty reads

    def stream_info(self, stream: str) -> tuple[int, str]:
        """(partition, queue) of a task stream key."""
        info = self._stream_index.get(stream)
        if info is None:
            tag, _, queue = stream[len(self.settings.namespace) + 1 :].partition(":q:")
            info = (int(tag.strip("{}p")), queue)
            self._stream_index[stream] = info
        return info

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
