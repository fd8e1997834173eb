"""Takes over entries whose consumer stopped renewing them (it died or hung) once they have
been idle for the visibility timeout; an entry past its delivery limit is dead-lettered.

An entry whose consumer died twice (or more) while holding it is a suspect: it may be what
kills workers. A worker runs at most one suspect at a time, so a step that crashes its
process takes along only entries delivered for the first time; those become suspects in
turn and never share a worker with it again, instead of being dead-lettered with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..storage.connection import UNAVAILABLE
from ..storage.store import Store
from .inflight import Capacity, InFlight, StreamRotation
from .reader import RawEntry
from .resilience import Backoff

log = logging.getLogger("conveyor.worker")

#: Seconds between passes while suspects wait for this worker's current one to finish.
SUSPECT_POLL = 0.05


class Reclaimer:
    def __init__(
        self,
        store: Store,
        consumer: str,
        streams: list[str],
        capacity: Capacity,
        dispatch: Callable[[RawEntry, int], None],
        inflight: InFlight,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.rotation = StreamRotation(streams)
        self.capacity = capacity
        self.dispatch = dispatch
        self.inflight = inflight
        self.suspects_waiting = 0  # suspects the last pass left for later

    async def run(self, interval: float, stopping: asyncio.Event) -> None:
        """A pass every ``interval`` seconds; every SUSPECT_POLL seconds instead while
        suspects wait their turn (one at a time here, so they do not wait a whole interval
        each). Failures back off as in :func:`every`."""
        backoff = Backoff(first=interval, cap=max(5.0, interval))
        while not stopping.is_set():
            try:
                await self.reclaim()
                backoff.reset()
            except UNAVAILABLE as exc:
                await backoff.wait("reclaiming stalled tasks", exc)
                continue
            except Exception as exc:
                if backoff.failures == 0:
                    log.exception("reclaiming stalled tasks failed")
                await backoff.wait("reclaiming stalled tasks", exc)
                continue
            pause = SUSPECT_POLL if self.suspects_waiting else interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)

    async def reclaim(self) -> int:
        free = self.capacity.free
        if free <= 0:
            return 0
        min_idle = int(self.store.settings.visibility_timeout * 1000)
        streams, count = self.rotation.plan(free, batch_size=100)
        plan = [(stream, count) for stream in streams]  # never more than the free slots
        # deliveries >= 3 on a task here: it was taken over as a suspect (see above)
        running_suspect = any(t.deliveries >= 3 for t in self.inflight.tasks.values())
        skipped: list[int] = []
        taken = await self.store.reclaim(
            plan, self.consumer, min_idle, suspects=0 if running_suspect else 1, skipped=skipped
        )
        self.suspects_waiting = sum(skipped)
        for stream, entry_id, fields, deliveries in taken:
            self.dispatch((stream, entry_id, fields), deliveries)
        if taken:
            log.info("took over %d entries from stalled or dead workers", len(taken))
        return len(taken)
