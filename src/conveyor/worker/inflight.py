"""Bookkeeping of what this worker holds: entries in flight and free step slots."""

from __future__ import annotations

import asyncio

from ..storage.records import Task


class InFlight:
    """Entries read by this worker and not yet committed (their leases are renewed)."""

    def __init__(self) -> None:
        self.tasks: dict[tuple[str, bytes], Task] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, task: Task) -> None:
        self.tasks[task.ref] = task

    def discard(self, task: Task) -> None:
        self.tasks.pop(task.ref, None)

    def by_stream(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for stream, entry_id in self.tasks:
            out.setdefault(stream, []).append(entry_id)
        return out


class Capacity:
    """A counting limit on running steps that the reader can ask "how many are free?"."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("concurrency must be >= 1")
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.limit - self.used

    async def wait_free(self) -> int:
        """Wait until at least one slot is free; return how many are."""
        while self.used >= self.limit:
            self._changed.clear()
            await self._changed.wait()
        return self.limit - self.used

    def take(self) -> None:
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._changed.set()

    async def wait_empty(self) -> None:
        while self.used:
            self._changed.clear()
            await self._changed.wait()


class StreamRotation:
    """Chooses which streams to read and how many entries from each, so that one read can
    never return more entries than there are free slots.

    XREADGROUP's COUNT applies to each stream separately: reading N streams with COUNT c
    may return N * c entries. With at least N free slots every stream is read with
    COUNT free // N; with fewer, only ``free`` streams are read (COUNT 1), rotating so that
    every stream gets its turn.
    """

    def __init__(self, streams: list[str]) -> None:
        self.streams = streams
        self.offset = 0

    def plan(self, free: int, batch_size: int) -> tuple[list[str], int]:
        n = len(self.streams)
        if free >= n:
            return self.streams, max(1, min(batch_size, free // n))
        start = self.offset % n
        self.offset += free
        picked = [self.streams[(start + i) % n] for i in range(free)]
        return picked, 1
