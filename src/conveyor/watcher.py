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
from typing import Any

log = logging.getLogger("conveyor.client")


class FinishedWatcher:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.pubsub: Any = None
        self.channels: set[str] = set()
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def subscribe(self, channel: str) -> None:
        if channel in self.channels:
            return
        async with self._lock:
            if self.pubsub is None:
                self.pubsub = self.redis.pubsub()
            if channel not in self.channels:
                await self.pubsub.subscribe(channel)
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
        while True:
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped: waiters re-read statuses
                log.debug("finished-channel listener: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            data = message.get("data")
            workflow_id = data.decode() if isinstance(data, bytes) else str(data)
            for future in self.waiters.pop(workflow_id, []):
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.listener
        if self.pubsub is not None:
            await self.pubsub.aclose()
