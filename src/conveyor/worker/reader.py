"""Reads new task entries in batches (XREADGROUP) and hands them to the dispatcher, never
more than there are free step slots, so nothing waits unstarted in this process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..storage.connection import UNAVAILABLE
from ..storage.errors import ResponseError
from ..storage.store import Store
from .inflight import Capacity, StreamRotation
from .resilience import Backoff

log = logging.getLogger("conveyor.worker")

RawEntry = tuple[str, bytes, dict[bytes, bytes]]

#: Longest a read of only some of the streams blocks (see Reader._block_for).
PARTIAL_BLOCK_MS = 50


class Reader:
    def __init__(
        self,
        store: Store,
        consumer: str,
        streams: list[str],
        queues: list[str],
        capacity: Capacity,
        dispatch: Callable[[RawEntry, int], None],
        batch_size: int,
        block_ms: int,
        prepare: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.rotation = StreamRotation(streams)
        self.queues = queues
        self.prepare = prepare
        self.capacity = capacity
        self.dispatch = dispatch
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.idle_reads = 0  # consecutive reads that returned nothing
        self._quiet = 0  # streams found empty since the last read that returned entries

    def _block_for(self, reading: int) -> int | None:
        """How long a read may block. A read of only some streams (fewer free slots than
        streams) must not sit on empty ones while others hold tasks: it does not block until
        every stream was found empty, and then only briefly."""
        total = len(self.rotation.streams)
        if reading >= total:
            return self.block_ms
        if self._quiet < total:
            return None
        return min(self.block_ms, PARTIAL_BLOCK_MS)

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = Backoff()
        while not stopping.is_set():
            free = await self.capacity.wait_free()
            if stopping.is_set():
                return
            streams, count = self.rotation.plan(free, self.batch_size)
            try:
                block = self._block_for(len(streams))
                entries = await self.store.read(streams, self.consumer, count, block)
                backoff.reset()
            except UNAVAILABLE as exc:
                await backoff.wait("reading tasks", exc)
                continue
            except ResponseError as exc:
                # NOGROUP, or UNBLOCKED on Redis 7: Redis lost its data (no persistence,
                # FLUSHALL) or a stream was deleted. Recreate groups, registry and meta.
                log.warning("reading tasks failed (%s); preparing the streams again", exc)
                await backoff.wait("reading tasks", exc)
                try:
                    await self.prepare()
                except Exception as again:  # logged; the next read tries again
                    log.warning("preparing the streams failed: %s", again)
                continue
            self.idle_reads = 0 if entries else self.idle_reads + 1
            self._quiet = 0 if entries else self._quiet + len(streams)
            for entry in entries:
                self.dispatch(entry, 1)
            if not entries:
                await asyncio.sleep(0)
