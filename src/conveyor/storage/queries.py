"""Read-only queries over a namespace for the HTTP API and operators: recent workflows, the
inbox of waits, queue statistics, a workflow's event stream, readiness. Nothing here writes
state, except removing index entries whose workflow is gone or no longer waiting. (The queue
snapshot of the exporter and `conveyor top` is in snapshot.py.)"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import codec
from ..models import QueueStats, WaitEntry, WorkflowSummary
from ..status import FINISHED, RunStatus
from .records import from_ms
from .snapshot import queue_snapshot
from .store import Store

__all__ = ["Page", "Queries", "QueueStats", "WaitEntry", "WorkflowSummary"]

#: Index entries read per partition and round while paging (more rounds when filtered out).
PAGE_FACTOR = 2
#: Dead letters read per partition to count them by queue (GET /v1/queues).
DEAD_SCAN = 10_000


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    cursor: str | None  # pass back to get the next page; None at the end


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
                if wf is None or st is None:
                    continue  # expired
                if (name and wf != name) or (status and st != status):
                    continue
                out.append(WorkflowSummary(
                    id=wf_id, workflow=wf, status=RunStatus(st), step=step,
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
        if not fields or (status is not None and status.decode() in FINISHED):
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
        """Per queue, over all partitions: the queue snapshot's totals (what the exporter
        serves) and the dead letters of each queue (counted over the newest 10,000 dead
        letters of each partition)."""
        snap = await queue_snapshot(self.store, queues)
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.store.settings.partitions):
            pipe.xrevrange(self.keys.dead(p), count=DEAD_SCAN)
        dead: dict[str, int] = {}
        for entries in await pipe.execute():
            for _, f in entries:
                q = (f.get(b"queue") or b"").decode()
                dead[q] = dead.get(q, 0) + 1
        workers = snap.workers_per_queue()
        return [
            QueueStats(
                queue=t.queue, stream=t.backlog, pending=t.pending, lag=t.lag,
                oldest_age=t.oldest_age, delayed=t.delayed, dead=dead.get(t.queue, 0),
                workers=workers.get(t.queue, 0),
            )
            for t in snap.totals()
        ]  # fmt: skip

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
