"""Keeps this worker's claims alive: renews the lease of every entry it runs, well inside
the visibility timeout; and publishes the worker's heartbeat each second."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from ..storage.store import Store
from .inflight import InFlight
from .listeners import Listeners

log = logging.getLogger("conveyor.worker")


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        consumer: str,
        inflight: InFlight,
        queues: list[str],
        concurrency: int = 0,
        listeners: Listeners | None = None,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.inflight = inflight
        self.listeners = listeners or Listeners()
        self.started = time.time()
        self.published_at = 0.0  # when a heartbeat last reached Redis (readiness)
        self.info = {
            "name": consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": queues,
            "started_at": self.started,
            "concurrency": concurrency,
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

    async def publish(self) -> None:
        """The heartbeat: this worker's liveness key, holding what the exporter and
        `conveyor top` show (counters since start, recent latency percentiles), and its
        entry in the registry of workers."""
        in_flight = len(self.inflight)
        info: dict[str, Any] = {**self.info, "in_flight": in_flight, "seen_at": time.time()}
        for f in self.listeners.heartbeat:
            f(in_flight, info)  # the stats, the latency percentiles
        await self.store.workers.publish(self.consumer, info, self.ttl, int(time.time() * 1000))
        self.published_at = time.time()

    async def forget(self) -> None:
        await self.store.workers.forget(self.consumer)
