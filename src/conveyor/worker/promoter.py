"""Moves delayed tasks (retries with backoff) onto their streams when they are due."""

from __future__ import annotations

from ..storage.store import Store


class Promoter:
    def __init__(self, store: Store, queues: list[str]) -> None:
        self.store = store
        self.queues = queues

    async def promote(self) -> int:
        return await self.store.promote(self.queues)
