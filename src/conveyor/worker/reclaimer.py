"""Takes over entries whose consumer stopped renewing them (it died or hung) once they have
been idle for the visibility timeout; an entry past its delivery limit is dead-lettered."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..storage.store import Store
from .inflight import Capacity, StreamRotation
from .reader import RawEntry

log = logging.getLogger("conveyor.worker")


class Reclaimer:
    def __init__(
        self,
        store: Store,
        consumer: str,
        streams: list[str],
        capacity: Capacity,
        dispatch: Callable[[RawEntry, int], None],
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.rotation = StreamRotation(streams)
        self.capacity = capacity
        self.dispatch = dispatch
        self.cursors: dict[str, bytes] = {}  # where each stream's pending scan goes on

    async def reclaim(self) -> int:
        free = self.capacity.free
        if free <= 0:
            return 0
        min_idle = int(self.store.settings.visibility_timeout * 1000)
        streams, count = self.rotation.plan(free, batch_size=100)
        plan = [(stream, count) for stream in streams]  # never more than the free slots
        taken = await self.store.reclaim(plan, self.consumer, min_idle, self.cursors)
        for stream, entry_id, fields, deliveries in taken:
            self.dispatch((stream, entry_id, fields), deliveries)
        if taken:
            log.info("took over %d entries from stalled or dead workers", len(taken))
        return len(taken)
