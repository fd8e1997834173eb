"""One pub/sub connection per client that wakes every waiter of a finished workflow.

Workers PUBLISH a workflow's id on its partition's finished channel when it completes, fails
or is cancelled. Waiters register a future per id; the listener resolves them. Waiters still
re-read the status now and then, because pub/sub is fire-and-forget (a reconnect can drop a
message), so a missed message costs a short delay, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storage.control import Subscription
    from .storage.store import Store

log = logging.getLogger("conveyor.client")


class FinishedWatcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.subscription: Subscription | None = None
        self.channels: set[str] = set()
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def subscribe(self, channel: str) -> None:
        if channel in self.channels:
            return
        async with self._lock:
            if self.subscription is None:
                self.subscription = self.store.subscription()
            if channel not in self.channels:
                await self.subscription.subscribe(channel)
                self.channels.add(channel)
            if self.listener is None:
                self.listener = asyncio.create_task(self._listen(), name="conveyor-watcher")

    def register(self, workflow_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(workflow_id, []).append(future)
        return future

    def unregister(self, workflow_id: str, future: asyncio.Future[None]) -> None:
        futures = self.waiters.get(workflow_id)
        if futures and future in futures:
            futures.remove(future)
            if not futures:
                del self.waiters[workflow_id]

    async def _listen(self) -> None:
        assert self.subscription is not None  # started by subscribe()
        while True:
            try:
                workflow_id = await self.subscription.message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped: waiters re-read statuses
                log.debug("finished-channel listener: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if workflow_id is None:
                continue
            for future in self.waiters.pop(workflow_id, []):
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.listener
        if self.subscription is not None:
            await self.subscription.close()
