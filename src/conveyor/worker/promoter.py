"""Moves delayed tasks (retries with backoff) onto their streams when they are due.

It polls every ``interval`` while some task waits, and only every ``idle_interval`` when
none does, so idle workers do not keep Redis busy; a retry this worker schedules wakes it at
once. (A retry scheduled by another worker into an empty set waits at most ``idle_interval``
longer than its backoff.)
"""

from __future__ import annotations

import asyncio

from ..storage.connection import UNAVAILABLE
from ..storage.store import Store
from .resilience import Backoff, log


class Promoter:
    def __init__(
        self, store: Store, queues: list[str], interval: float, idle_interval: float = 1.0
    ) -> None:
        self.store = store
        self.queues = queues
        self.interval = interval
        self.idle_interval = max(interval, idle_interval)
        self.wake = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = Backoff(first=self.interval)
        while not stopping.is_set():
            self.wake.clear()
            try:
                _, waiting = await self.store.promote(self.queues)
                backoff.reset()
            except Exception as exc:
                if not isinstance(exc, UNAVAILABLE) and backoff.failures == 0:
                    log.exception("promoting delayed tasks failed")
                await backoff.wait("promoting delayed tasks", exc)
                continue
            delay = self.interval if waiting else self.idle_interval
            wakers = [asyncio.ensure_future(e.wait()) for e in (stopping, self.wake)]
            await asyncio.wait(wakers, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for waker in wakers:
                waker.cancel()
