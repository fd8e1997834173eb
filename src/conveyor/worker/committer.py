"""Commits transitions in batches: whatever finished while earlier batches were in flight goes
out in the next pipeline, so load raises the batch size instead of the round trips. A few
pipelines (lanes) are in flight at once so that Redis and Python work at the same time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ScriptCode
from ..observability.metrics import WorkerMetrics
from ..storage.connection import UNAVAILABLE
from ..storage.records import Task
from ..storage.store import Store, Transition
from ..storage.transitions import TransitionAction
from ..workflow.outcomes import OutcomeKind
from .resilience import Backoff

log = logging.getLogger("conveyor.worker")

# transitions that may put a task in a delayed set (a retry, a sleep, a wait's timer)
SCHEDULES = frozenset({TransitionAction.RETRY, TransitionAction.SLEEP, TransitionAction.WAIT})
GIVE_UP_AFTER = 5  # consecutive unexpected errors before a batch is left for redelivery
# module-level names: an enum member's attribute lookup costs more than a global's
_COMPLETED, _CACHED, _RETRIED = OutcomeKind.COMPLETED, OutcomeKind.CACHED, OutcomeKind.RETRIED
_LIMITED, _DROPPED, _POISON = OutcomeKind.LIMITED, OutcomeKind.DROPPED, OutcomeKind.POISON
_DEAD = OutcomeKind.DEAD


@dataclass(slots=True)
class Stats:
    """Counters of one worker process (read by tests, benchmarks and `conveyor top`)."""

    completed: int = 0
    failed: int = 0  # attempts that raised (retried or dead-lettered)
    retried: int = 0
    dead: int = 0
    duplicates: int = 0
    reclaimed: int = 0
    poison: int = 0
    errors: int = 0
    batches: int = 0
    limited: int = 0  # held back by a rate or concurrency limit (not attempts)
    dropped: int = 0  # delivered but no longer active (cancelled workflows, stale timers)
    cached: int = 0  # completed from the step-result cache


class Committer:
    def __init__(
        self,
        store: Store,
        stats: Stats,
        on_done: Callable[[Task | None], None],
        on_retry: Callable[[], None] = lambda: None,  # something was scheduled
        metrics: WorkerMetrics | None = None,
        max_batch: int = 128,
        lanes: int = 4,
    ) -> None:
        self.on_retry = on_retry
        self.metrics = metrics
        self.lanes = lanes
        self._in_flight = 0  # batches being committed right now
        self.store = store
        self.stats = stats
        self.on_done = on_done
        self.max_batch = max_batch
        self.pending: list[tuple[Transition, Task | None, OutcomeKind]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    def submit(self, call: Transition, task: Task | None, kind: OutcomeKind) -> None:
        self.pending.append((call, task, kind))
        self._idle.clear()
        self._wake.set()

    def __len__(self) -> int:
        return len(self.pending)

    async def run(self) -> None:
        """Commit on ``lanes`` pipelines at once: Redis runs one batch while Python builds
        the next (with one pipeline the two take turns). Safe, since a workflow has at most
        one transition of a task in flight, and repeats are answered DUPLICATE."""
        await asyncio.gather(*(self._lane() for _ in range(self.lanes)))

    async def _lane(self) -> None:
        backoff = Backoff()
        while True:
            if not self.pending:
                if self._in_flight == 0:
                    self._idle.set()
                    if self._closing:
                        self._wake.set()  # let the other lanes see it too
                        return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self.pending[: self.max_batch]
            del self.pending[: len(batch)]
            self._in_flight += 1
            try:
                results = await self.store.commit([call for call, _, _ in batch])
            except Exception as exc:
                self._in_flight -= 1
                await self._failed(batch, backoff, exc)
                continue
            self._in_flight -= 1
            backoff.reset()
            self.stats.batches += 1
            for (call, task, kind), result in zip(batch, results, strict=True):
                self._count(task, kind, result)
                if self.metrics is not None:
                    self._measure(call, task, kind, result)
                if call.action in SCHEDULES and result == ScriptCode.OK:
                    self.on_retry()  # a timer is waiting in a delayed set: poll it closely
                self.on_done(task)

    async def _failed(
        self,
        batch: list[tuple[Transition, Task | None, OutcomeKind]],
        backoff: Backoff,
        exc: Exception,
    ) -> None:
        if isinstance(exc, UNAVAILABLE):
            # It is unknown which calls ran: send them all again once Redis is back
            # (transitions are idempotent; a repeat is answered DUPLICATE).
            self.pending[:0] = batch
            await backoff.wait("committing step results", exc)
            return
        # Not an outage: retry a few times, then give the batch up. Its entries stay pending
        # without a lease, so they are redelivered; nothing is lost.
        if backoff.failures == 0:
            log.exception("committing %d step results failed", len(batch))
        if backoff.failures >= GIVE_UP_AFTER:
            log.error("giving up %d results; their tasks will be redelivered", len(batch))
            self.stats.errors += len(batch)
            for _, task, _ in batch:
                self.on_done(task)
            backoff.reset()
            return
        self.pending[:0] = batch
        await backoff.wait("committing step results", exc)

    def _count(self, task: Task | None, kind: OutcomeKind, result: int | Exception) -> None:
        if isinstance(result, Exception):
            # A script error (a bug, or Redis out of memory): the entry stays pending
            # with no lease, so it is redelivered and finally dead-lettered; never lost.
            self.stats.errors += 1
            log.error("commit of %s for %s failed: %s", kind, task, result)
        elif result == ScriptCode.DUPLICATE:
            self.stats.duplicates += 1
        elif kind == _COMPLETED:
            self.stats.completed += 1
        elif kind == _CACHED:
            self.stats.completed += 1
            self.stats.cached += 1
        elif kind == _RETRIED:
            self.stats.retried += 1
            self.stats.failed += 1
        elif kind == _LIMITED:
            self.stats.limited += 1
        elif kind == _DROPPED:
            self.stats.dropped += 1
        elif kind == _POISON:
            self.stats.poison += 1
        else:
            self.stats.dead += 1
            if kind == _DEAD:
                self.stats.failed += 1

    def _measure(
        self, call: Transition, task: Task | None, kind: OutcomeKind, result: int | Exception
    ) -> None:
        assert self.metrics is not None
        if isinstance(result, Exception):
            self.metrics.commit_error()
            return
        queue = task.queue if task is not None else self.store.stream_info(call.keys[0])[1]
        self.metrics.committed(task, queue, kind, result)

    async def drain(self) -> None:
        """Commit everything submitted so far, then stop the loop."""
        self._closing = True
        self._wake.set()
        await self._idle.wait()
