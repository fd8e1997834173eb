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
