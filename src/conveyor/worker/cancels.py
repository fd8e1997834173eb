"""Tells running steps that their workflow was cancelled (``ctx.cancelled``).

cancel.lua PUBLISHes the id on its partition's cancel channel; this listener sets the event
shared by the steps of that workflow running here. Pub/sub can drop a message on a reconnect:
that only means a step does not learn early. Its result is discarded at commit all the same
(the task is no longer active), and admission drops tasks of cancelled workflows unrun.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from .resilience import Backoff

log = logging.getLogger("conveyor.worker")


class CancelWatch:
    def __init__(self, redis: Any, channels: list[str]) -> None:
        self.redis = redis
        self.channels = channels
        self.events: dict[str, tuple[threading.Event, int]] = {}  # workflow id -> (event, users)

    def acquire(self, workflow_id: str) -> threading.Event:
        event, users = self.events.get(workflow_id, (None, 0))
        if event is None:
            event = threading.Event()
        self.events[workflow_id] = (event, users + 1)
        return event

    def release(self, workflow_id: str) -> None:
        event, users = self.events.get(workflow_id, (None, 0))
        if event is None:
            return
        if users <= 1:
            del self.events[workflow_id]
        else:
            self.events[workflow_id] = (event, users - 1)

    def cancelled(self, workflow_id: str) -> None:
        found = self.events.get(workflow_id)
        if found is not None:
            log.info("workflow %s was cancelled: flagging its running steps", workflow_id)
            found[0].set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(cap=2.0)
        while not stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(*self.channels)
                backoff.reset()
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None:
                        data = message.get("data")
                        self.cancelled(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await backoff.wait("listening for cancellations", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
