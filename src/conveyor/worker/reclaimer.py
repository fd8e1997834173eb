"""Takes over entries whose consumer stopped renewing them (it died or hung) once they have
been idle for the visibility timeout; an entry past its delivery limit is dead-lettered."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..storage.store import Store
from .inflight import Capacity
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
        self.streams = streams
        self.capacity = capacity
        self.dispatch = dispatch

    async def reclaim(self) -> int:
        free = self.capacity.free
        if free <= 0:
            return 0
        min_idle = int(self.store.settings.visibility_timeout * 1000)
        count = max(1, free // len(self.streams))  # spread the free slots over the streams
        taken = await self.store.reclaim(self.streams, self.consumer, min_idle, count)
        for stream, entry_id, fields, deliveries in taken:
            self.dispatch((stream, entry_id, fields), deliveries)
        if taken:
            log.info("took over %d entries from stalled or dead workers", len(taken))
        return len(taken)
