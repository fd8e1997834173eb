"""Keeps this worker's claims alive: renews the lease of every entry it runs, well inside
the visibility timeout, and refreshes the worker's own liveness key."""

from __future__ import annotations

import logging
import os
import socket
import time

from .. import codec
from ..storage.store import Store
from .inflight import InFlight

log = logging.getLogger("conveyor.worker")


class LeaseKeeper:
    def __init__(self, store: Store, consumer: str, inflight: InFlight, queues: list[str]) -> None:
        self.store = store
        self.consumer = consumer
        self.inflight = inflight
        self.started = time.time()
        self.info = {
            "name": consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": queues,
            "started_at": self.started,
        }

    @property
    def ttl(self) -> int:
        return max(3, int(self.store.settings.visibility_timeout))

    async def renew(self) -> None:
        entries = self.inflight.by_stream()
        if entries:
            lost = await self.store.heartbeat(self.consumer, entries)
            if lost:
                # Another worker took these over (this one stalled past the visibility
                # timeout). The steps go on; whichever commit comes second is dropped.
                log.warning("lease lost on %d entries: %s", len(lost), lost[:5])
        info = {**self.info, "in_flight": len(self.inflight), "seen_at": time.time()}
        await self.store.redis.set(
            self.store.keys.worker(self.consumer), codec.dumps(info), ex=self.ttl
        )

    async def forget(self) -> None:
        await self.store.redis.delete(self.store.keys.worker(self.consumer))
