"""Read-only queries over a namespace for the HTTP API and operators: recent workflows, the
inbox of waits, queue statistics and snapshots (the exporter, `conveyor top`), a workflow's
event stream, readiness. Nothing here writes state, except removing index entries whose
workflow is gone or no longer waiting, or whose worker died."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from redis.exceptions import ResponseError

from .. import codec
from .records import from_ms
from .store import Store

#: Index entries read per partition and round while paging (more rounds when filtered out).
PAGE_FACTOR = 2
#: A member of the workers set whose key is gone is removed once its last heartbeat is older
#: than this (seconds); younger ones are only skipped (its key may be on its way back).
WORKER_GONE_AFTER = 60.0


class WorkflowSummary(BaseModel):
    id: str
    workflow: str
    status: str
    step: str | None = None
    created_at: Any = None
    updated_at: Any = None


class WaitEntry(BaseModel):
    """One open wait: a workflow waiting for a signal (e.g. a human approval)."""

    workflow_id: str
    workflow: str
    signal: str
    step: str = Field(description="the step the signal's payload goes to")
    waiting_step: str | None = Field(None, description="the step that started the wait")
    since: Any = None
    deadline: Any = None
    state: dict[str, Any] = Field(default_factory=dict, description="the workflow's ctx.state")
    input: Any = Field(None, description="the workflow's input")


class QueueStats(BaseModel):
    queue: str
    stream: int = Field(description="entries in the task streams (waiting or running)")
    pending: int = Field(description="entries delivered to a worker, not yet acknowledged")
    delayed: int = Field(description="retries, timers and held-back tasks not yet due")
    dead: int = Field(description="dead letters of this queue")


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    cursor: str | None  # pass back to get the next page; None at the end


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One task stream (a queue in one partition) as its consumer group sees it."""

    queue: str
    partition: int
    stream: str  # the stream's key
    length: int  # XLEN: acknowledged entries count until the next trim (about a second)
    pending: int  # delivered to a worker, not acknowledged yet: the group's PEL
    lag: int  # not delivered yet (how it is counted: Queries.queue_snapshot)
    oldest_age: float  # seconds since the oldest unacknowledged entry was added; 0: none
    delayed: int  # this queue's tasks of this partition in the delayed set

    @property
    def unacked(self) -> int:
        """What workers still have to do here, delivered or not: the reference HPA's
        ``redis_stream_pending``."""
        return self.lag + self.pending


@dataclass(frozen=True, slots=True)
class QueueTotals:
    """One queue over all its partitions: sums, and the oldest age's maximum."""

    queue: str
    length: int
    backlog: int  # lag + pending
    lag: int
    pending: int
    oldest_age: float
    delayed: int


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """Queues, dead letters and live workers at one moment: ``now`` is Redis ``TIME`` (s)."""

    now: float
    streams: list[StreamStats]
    dead: list[int]  # dead letters per partition (index: partition)
    workers: list[dict[str, Any]]  # live workers' heartbeats, as worker/lease.py writes them
    registered: list[str] | None  # the queues of the workflow registry, when it was read
    partitions_recorded: int | None  # the namespace's partition count (None: no worker yet)
    round_trips: int

    def totals(self) -> list[QueueTotals]:
        by_queue: dict[str, list[StreamStats]] = {}
        for s in self.streams:
            by_queue.setdefault(s.queue, []).append(s)
        return [
            QueueTotals(
                queue=queue,
                length=sum(s.length for s in parts),
                backlog=sum(s.unacked for s in parts),
                lag=sum(s.lag for s in parts),
                pending=sum(s.pending for s in parts),
                oldest_age=max(s.oldest_age for s in parts),
                delayed=sum(s.delayed for s in parts),
            )
            for queue, parts in by_queue.items()
        ]

    def workers_per_queue(self) -> dict[str, int]:
        """Live workers serving each queue (one serving two queues counts for both)."""
        counts = {s.queue: 0 for s in self.streams}
        for worker in self.workers:
            for queue in worker.get("queues") or ():
                counts[queue] = counts.get(queue, 0) + 1
        return counts


@dataclass(slots=True)
class _Reading:
    """A stream's numbers between the first round trip and the second."""

    queue: str
    partition: int
    stream: str
    length: int
    pending: int
    lag: int
    delayed: int
    oldest_ms: int | None  # id time of the oldest unacknowledged entry, when known
    after: str | None  # XRANGE start of a read for the oldest undelivered entry, if needed

    def stats(self, now_ms: int) -> StreamStats:
        age = 0.0 if self.oldest_ms is None else max(0.0, (now_ms - self.oldest_ms) / 1000)
        return StreamStats(
            self.queue, self.partition, self.stream, self.length, self.pending, self.lag,
            age, self.delayed,
        )  # fmt: skip


def registry_queues(descriptions: Iterable[bytes]) -> list[str]:
    """Every queue the registered workflows use (their steps' and start's), sorted."""
    found: set[str] = set()
    for raw in descriptions:
        desc = codec.loads(raw)
        if isinstance(desc, dict):
            found.update(desc.get("steps", {}).values())
            if desc.get("queue"):
                found.add(desc["queue"])
    return sorted(found)


def _ok(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def _missing(reply: Any) -> bool:
    """Whether a reply says the stream or the group does not exist (yet): no worker has
    created it, which reads as zero rather than an error."""
    return isinstance(reply, ResponseError) and str(reply).startswith(("NOGROUP", "no such key"))


def _id_ms(entry_id: bytes) -> int:
    return _stream_id(entry_id.decode())[0]


def _read_stream(
    queue: str, partition: int, stream: str, group: str, replies: Iterable[Any]
) -> _Reading:
    """Decode XLEN, XPENDING (summary), XINFO GROUPS and ZCARD of one stream."""
    xlen, xpending, groups, zcard = replies
    length = int(_ok(xlen))
    summary = None if _missing(xpending) else _ok(xpending)
    pending = int(summary["pending"]) if summary else 0
    info = None
    if not _missing(groups):
        info = next((g for g in _ok(groups) if g["name"].decode() == group), None)
    if info is None:  # no group yet: nothing was delivered
        lag, after = length, "-"
    else:
        lag = info.get("lag")
        if lag is None:  # Redis 6.2, or 7.x after an XDEL past the group's position
            lag = max(0, length - pending)
        after = "(" + info["last-delivered-id"].decode()
    # delivery follows id order, so the PEL's smallest id is the oldest unacknowledged entry;
    # with nothing pending it is the first entry after the group's last delivered one
    oldest = _id_ms(summary["min"]) if summary and pending else None
    return _Reading(
        queue, partition, stream, length, pending, int(lag), int(_ok(zcard)), oldest,
        after if not pending and lag else None,
    )  # fmt: skip


def _live_workers(
    members: list[tuple[bytes, float]], beats: list[bytes | None], now_ms: int
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The heartbeats of live workers, and the members to remove: key gone and last heard
    of more than WORKER_GONE_AFTER ago (a crash; a clean stop removes its own)."""
    live: list[dict[str, Any]] = []
    gone: list[bytes] = []
    for (name, score), raw in zip(members, beats, strict=True):
        try:
            beat = codec.loads(raw)
        except ValueError:  # not written by a worker: skipped, not fatal
            continue
        if isinstance(beat, dict):
            live.append(beat)
        elif raw is None and score < now_ms - WORKER_GONE_AFTER * 1000:
            gone.append(name)
    return live, gone


def _cursor(score: float, member: str) -> str:
    return f"{int(score)}:{member}"


def _parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    score, sep, member = cursor.partition(":")
    if not sep or not score.isdigit():
        raise ValueError(f"invalid cursor {cursor!r}")
    return float(score), member


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Queries:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis: Any = store.redis
        self.keys = store.keys

    async def _newest(
        self, index: Iterable[str], after: tuple[float, str] | None, count: int
    ) -> list[tuple[float, str]]:
        """Up to ``count`` members of the sorted sets ``index`` (all partitions), newest
        first, strictly after the cursor position ``after``."""
        pipe = self.redis.pipeline(transaction=False)
        top = f"({after[0]:.0f}" if after else "+inf"
        for key in index:
            if after:  # every member at the cursor's own score (filtered below): a burst can
                # put more of them in one millisecond than any fixed window would hold
                pipe.zrevrangebyscore(key, after[0], after[0], withscores=True)
            pipe.zrevrangebyscore(key, top, "-inf", start=0, num=count, withscores=True)
        merged: list[tuple[float, str]] = []
        for members in await pipe.execute():
            for member, score in members:
                m = member.decode()
                if after and (score > after[0] or (score == after[0] and m >= after[1])):
                    continue
                merged.append((score, m))
        return heapq.nlargest(count, merged)

    async def workflows(
        self, name: str | None, status: str | None, limit: int, cursor: str | None
    ) -> Page:
        """Recent workflows, newest first, optionally of one name and status."""
        after = _parse_cursor(cursor)
        index = [self.keys.recent(p) for p in range(self.store.settings.partitions)]
        out: list[WorkflowSummary] = []
        last: tuple[float, str] | None = after
        while len(out) < limit:
            want = limit - len(out)
            batch = await self._newest(index, last, max(want * PAGE_FACTOR, 10))
            if not batch:
                return Page(out, None)
            pipe = self.redis.pipeline(transaction=False)
            for _, wf_id in batch:
                pipe.hmget(self.keys.workflow(wf_id), "workflow", "status", "step",
                           "created_at", "updated_at")  # fmt: skip
            for (score, wf_id), fields in zip(batch, await pipe.execute(), strict=True):
                last = (score, wf_id)
                wf, st, step, created, updated = (v.decode() if v else None for v in fields)
                if wf is None:
                    continue  # expired
                if (name and wf != name) or (status and st != status):
                    continue
                out.append(WorkflowSummary(
                    id=wf_id, workflow=wf, status=st or "", step=step,
                    created_at=from_ms(created), updated_at=from_ms(updated),
                ))  # fmt: skip
                if len(out) == limit:
                    break
        return Page(out, _cursor(*last) if last else None)

    async def waits(
        self, signal: str | None, workflow: str | None, limit: int, cursor: str | None
    ) -> Page:
        """Open waits, newest first: who waits for which signal, since when, until when."""
        after = _parse_cursor(cursor)
        partitions = range(self.store.settings.partitions)
        index = [self.keys.waiting(p) for p in partitions]
        out: list[WaitEntry] = []
        last = after
        while len(out) < limit:
            batch = await self._newest(index, last, max((limit - len(out)) * PAGE_FACTOR, 10))
            if not batch:
                return Page(out, None)
            pipe = self.redis.pipeline(transaction=False)
            for _, wf_id in batch:
                pipe.hgetall(self.keys.workflow(wf_id))
            gone = []
            for (score, wf_id), fields in zip(batch, await pipe.execute(), strict=True):
                last = (score, wf_id)
                entries = self._wait_entries(wf_id, fields)
                if not entries:
                    gone.append(wf_id)
                    continue
                for entry in entries:
                    if (signal and entry.signal != signal) or (
                        workflow and entry.workflow != workflow
                    ):
                        continue
                    out.append(entry)
                if len(out) >= limit:
                    break
            if gone:  # its waits ended (signal, timeout, finish): drop it from the index
                pipe = self.redis.pipeline(transaction=False)
                for wf_id in gone:
                    pipe.zrem(self.keys.waiting(self.keys.partition(wf_id)), wf_id)
                await pipe.execute()
        return Page(out[:limit], _cursor(*last) if last else None)

    @staticmethod
    def _wait_entries(wf_id: str, fields: dict[bytes, bytes]) -> list[WaitEntry]:
        status = fields.get(b"status")
        if status in (b"completed", b"failed", b"cancelled") or not fields:
            return []
        entries = []
        for name, value in fields.items():
            if not name.startswith(b"w:"):
                continue
            wait = codec.loads(value)
            entries.append(WaitEntry(
                workflow_id=wf_id,
                workflow=(fields.get(b"workflow") or b"").decode(),
                signal=name[2:].decode().rpartition(":")[0],
                step=wait["step"],
                waiting_step=(fields.get(b"step") or b"").decode() or None,
                since=from_ms(wait.get("since")),
                deadline=from_ms(wait.get("deadline")),
                state=codec.loads(fields.get(b"state")) or {},
                input=codec.loads(fields.get(b"input")),
            ))  # fmt: skip
        entries.sort(key=lambda e: e.since or 0, reverse=True)
        return entries

    async def queues(self, queues: list[str]) -> list[QueueStats]:
        """Per queue, over all partitions: stream length, pending, delayed, dead letters."""
        partitions = range(self.store.settings.partitions)
        group = self.store.settings.group
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            for p in partitions:
                pipe.xlen(self.keys.stream(p, q))
                pipe.zcard(self.keys.delayed(p, q))
                pipe.execute_command("XPENDING", self.keys.stream(p, q), group)
        for p in partitions:
            pipe.xrange(self.keys.dead(p), count=10_000)
        replies = await pipe.execute(raise_on_error=False)
        dead: dict[str, int] = {}
        for entries in replies[len(queues) * len(partitions) * 3 :]:
            for _, f in entries:
                q = (f.get(b"queue") or b"").decode()
                dead[q] = dead.get(q, 0) + 1
        out = []
        for i, q in enumerate(queues):
            chunk = replies[i * len(partitions) * 3 : (i + 1) * len(partitions) * 3]
            pending = sum(int(r[0]) for r in chunk[2::3] if isinstance(r, list | tuple) and r)
            out.append(QueueStats(
                queue=q, stream=sum(chunk[0::3]), pending=pending, delayed=sum(chunk[1::3]),
                dead=dead.get(q, 0),
            ))  # fmt: skip
        return out

    async def queue_snapshot(
        self, queues: Sequence[str], *, registry: bool = False
    ) -> QueueSnapshot:
        """Every partition stream of ``queues``, the dead letters and the live workers, in
        one pipelined round trip, plus one more only when needed: to read the live workers'
        heartbeats, and the oldest undelivered entry of streams with nothing pending (a
        third, rare one removes workers that died without a clean stop). ``registry`` also
        reads the queues of the workflow registry (see :func:`registry_queues`).

        Lag is the group's ``lag`` from XINFO GROUPS (Redis 7.0+). Where Redis gives none
        (6.2, or 7.x after an XDEL past the group's position) it is ``XLEN - pending``, an
        over-estimate: acknowledged entries count until the periodic trim deletes them
        (about a second, or longer while an older entry is still pending, since the trim
        keeps everything after the oldest pending entry); with nothing pending, the read for
        the oldest undelivered entry corrects it to 0 when there is none. A stream without
        the group (no worker started yet) counts every entry as lag; a missing stream, zero.
        """
        settings = self.store.settings
        partitions = range(settings.partitions)
        targets = [(q, p, self.keys.stream(p, q)) for q in queues for p in partitions]
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(self.keys.workers, 0, -1, withscores=True)
        pipe.hget(self.keys.meta, "partitions")
        if registry:
            pipe.hvals(self.keys.registry)
        for q, p, stream in targets:
            pipe.xlen(stream)
            pipe.xpending(stream, settings.group)
            pipe.xinfo_groups(stream)
            pipe.zcard(self.keys.delayed(p, q))
        for p in partitions:
            pipe.xlen(self.keys.dead(p))
        replies = iter(await pipe.execute(raise_on_error=False))
        seconds, micros = _ok(next(replies))
        now_ms = seconds * 1000 + micros // 1000
        members: list[tuple[bytes, float]] = _ok(next(replies))
        recorded = _ok(next(replies))
        registered = registry_queues(_ok(next(replies))) if registry else None
        readings = [
            _read_stream(q, p, stream, settings.group, [next(replies) for _ in range(4)])
            for q, p, stream in targets
        ]
        dead = [int(_ok(next(replies))) for _ in partitions]

        round_trips = 1
        beats: list[Any] = []
        fixups = [r for r in readings if r.after is not None]
        if members or fixups:
            pipe = self.redis.pipeline(transaction=False)
            if members:
                pipe.mget([self.keys.worker(name.decode()) for name, _ in members])
            for r in fixups:
                pipe.xrange(r.stream, r.after, "+", count=1)
            second = iter(await pipe.execute())
            round_trips += 1
            beats = next(second) if members else []
            for r, entries in zip(fixups, second, strict=True):
                if entries:
                    r.oldest_ms = _id_ms(entries[0][0])
                else:  # nothing after the group's position: what XLEN counted was acked
                    r.lag = 0
        workers, gone = _live_workers(members, beats, now_ms)
        if gone:
            await self.redis.zrem(self.keys.workers, *gone)
            round_trips += 1
        return QueueSnapshot(
            now=now_ms / 1000,
            streams=[r.stats(now_ms) for r in readings],
            dead=dead,
            workers=workers,
            registered=registered,
            partitions_recorded=int(recorded) if recorded is not None else None,
            round_trips=round_trips,
        )

    async def events(
        self, workflow_id: str, after: str, block_ms: int | None, count: int = 500
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events after id ``after`` ('0' for all), waiting up to ``block_ms`` for one."""
        key = self.keys.events(workflow_id)
        reply = await self.redis.xread({key: after}, count=count, block=block_ms)
        out = []
        for _, entries in reply or ():
            for entry_id, fields in entries:
                out.append((entry_id.decode(), {k.decode(): v for k, v in fields.items()}))
        return out

    async def ended_by(self, workflow_id: str, after: str) -> bool:
        """Whether the workflow's events ended (with 'end') at or before id ``after``."""
        last = await self.redis.xrevrange(self.keys.events(workflow_id), count=1)
        if not last or last[0][1].get(b"type") != b"end":
            return False
        return _stream_id(last[0][0].decode()) <= _stream_id(after)

    async def ready(self) -> list[str]:
        """What keeps this process from serving ([] when ready): Redis unreachable, or the
        transition scripts not loaded (they are loaded then)."""
        scripts = self.store.scripts
        shas = [s.sha for s in scripts.scripts.values()]
        loaded = await self.redis.script_exists(*shas)
        if not all(loaded):
            await scripts.load_all(self.redis)
        return []
