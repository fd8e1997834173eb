"""The queue snapshot behind the exporter and `conveyor top`: per stream of each queue its
length, pending entries, lag and oldest unacknowledged entry, the delayed tasks, the dead
letters and the live workers, read in one pipelined round trip (two at most, a rare third).
Read-only, except removing workers that died without a clean stop from the workers set."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from .. import codec
from .store import Store

#: A member of the workers set whose key is gone is removed once its last heartbeat is older
#: than this (seconds); younger ones are only skipped (its key may be on its way back).
WORKER_GONE_AFTER = 60.0


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
    return int(entry_id.partition(b"-")[0])


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


async def queue_snapshot(
    store: Store, queues: Sequence[str], *, registry: bool = False
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
    settings, keys, redis = store.settings, store.keys, store.redis
    partitions = range(settings.partitions)
    targets = [(q, p, keys.stream(p, q)) for q in queues for p in partitions]
    pipe = redis.pipeline(transaction=False)
    # TIME has no key: a Cluster pipeline cannot route it, so there it is its own call (to
    # one node: ages are then measured by that node's clock)
    clock = await redis.time() if store.cluster else None
    if clock is None:
        pipe.time()
    pipe.zrange(keys.workers, 0, -1, withscores=True)
    pipe.hget(keys.meta, "partitions")
    if registry:
        pipe.hvals(keys.registry)
    for q, p, stream in targets:
        pipe.xlen(stream)
        pipe.xpending(stream, settings.group)
        pipe.xinfo_groups(stream)
        pipe.zcard(keys.delayed(p, q))
    for p in partitions:
        pipe.xlen(keys.dead(p))
    replies = iter(await pipe.execute(raise_on_error=False))
    seconds, micros = clock if clock is not None else _ok(next(replies))
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
        pipe = redis.pipeline(transaction=False)
        for name, _ in members:  # GETs, not one MGET: on a Cluster the keys are on any node
            pipe.get(keys.worker(name.decode()))
        for r in fixups:
            pipe.xrange(r.stream, r.after, "+", count=1)
        second = iter(await pipe.execute())
        round_trips += 1
        beats = [next(second) for _ in members]
        for r, entries in zip(fixups, second, strict=True):
            if entries:
                r.oldest_ms = _id_ms(entries[0][0])
            else:  # nothing after the group's position: what XLEN counted was acked
                r.lag = 0
    workers, gone = _live_workers(members, beats, now_ms)
    if gone:
        await redis.zrem(keys.workers, *gone)
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
