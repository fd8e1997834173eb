"""Commits transitions in batches: whatever finished while earlier batches were in flight goes
out in the next pipeline, so load raises the batch size instead of the round trips. A few
pipelines (lanes) are in flight at once so that Redis and Python work at the same time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..errors import ScriptCode
from ..storage.connection import UNAVAILABLE
from ..storage.records import Task
from ..storage.store import Store, Transition
from ..storage.transitions import TransitionAction
from ..workflow.outcomes import OutcomeKind
from .listeners import Listeners
from .listeners import Stats as Stats  # its home before the listeners (imported from here)
from .resilience import Backoff

log = logging.getLogger("conveyor.worker")

# transitions that may put a task in a delayed set (a retry, a sleep, a wait's timer)
SCHEDULES = frozenset({TransitionAction.RETRY, TransitionAction.SLEEP, TransitionAction.WAIT})
GIVE_UP_AFTER = 5  # consecutive unexpected errors before a batch is left for redelivery


class Committer:
    def __init__(
        self,
        store: Store,
        on_done: Callable[[Task | None], None],
        on_retry: Callable[[], None] = lambda: None,  # something was scheduled
        listeners: Listeners | None = None,
        max_batch: int = 128,
        lanes: int = 4,
    ) -> None:
        self.on_retry = on_retry
        self.listeners = listeners or Listeners()
        self.lanes = lanes
        self._in_flight = 0  # batches being committed right now
        self.store = store
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
            listeners = self.listeners
            for g in listeners.batch_committed:
                g(len(batch))
            committed = listeners.committed
            for (call, task, kind), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    # A script error (a bug, or Redis out of memory): the entry stays pending
                    # with no lease, so it is redelivered and finally dead-lettered; never lost.
                    log.error("commit of %s for %s failed: %s", kind, task, result)
                if committed:
                    queue = task.queue if task else self.store.stream_info(call.keys[0])[1]
                    for f in committed:
                        f(task, queue, kind, result)
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
            for f in self.listeners.commits_abandoned:
                f(len(batch))
            for _, task, _ in batch:
                self.on_done(task)
            backoff.reset()
            return
        self.pending[:0] = batch
        await backoff.wait("committing step results", exc)

    async def drain(self) -> None:
        """Commit everything submitted so far, then stop the loop."""
        self._closing = True
        self._wake.set()
        await self._idle.wait()
