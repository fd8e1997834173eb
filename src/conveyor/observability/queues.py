"""The queue exporter: what waits in Redis, as Prometheus gauges.

Workers know what they did; only Redis knows what is still to do. One scrape reads every
partition stream of every queue in one pipelined round trip (plus one more when needed, see
storage/snapshot.py) and renders it with prometheus_client's own exposition code, from a
private registry, so nothing here is process-global and several exporters (the
`conveyor exporter` server, the API's ``/metrics/queues``) can live in one process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..storage.errors import UNAVAILABLE, RedisError
from ..storage.snapshot import QueueSnapshot, queue_snapshot
from ..storage.store import Store

__all__ = ["QueueExporter"]

log = logging.getLogger("conveyor.exporter")


class QueueExporter:
    """Snapshots and renders the queues of one namespace.

    Args:
        store: the namespace (its settings give the partitions and the consumer group).
        queues: the queues to export; by default every queue of the workflow registry that
            workers write, re-read with each snapshot (a new queue shows up in the same
            snapshot, which is then taken twice, that once).
        known: queues exported besides the registry's, before any worker registered them
            (the API passes its app's queues).
        timeout: seconds a snapshot may take before Redis counts as down (Prometheus's own
            scrape timeout defaults to 10 s).
    """

    def __init__(
        self,
        store: Store,
        queues: Sequence[str] | None = None,
        *,
        known: Sequence[str] = (),
        timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self._fixed = list(queues) if queues is not None else None
        self._always = list(known)
        self._known: list[str] = list(known)  # what the last snapshot read
        self._warned_partitions: int | None = None

    async def snapshot(self) -> QueueSnapshot:
        """The state of the queues now (raises the Redis error when it is unreachable)."""
        async with asyncio.timeout(self.timeout):
            return await self._snapshot()

    async def _snapshot(self) -> QueueSnapshot:
        if self._fixed is not None:
            snap = await queue_snapshot(self.store, self._fixed)
        else:
            snap = await queue_snapshot(self.store, self._known, registry=True)
            wanted = list(dict.fromkeys([*self._always, *(snap.registered or [])]))
            if set(wanted) - set(self._known):  # a queue we did not read: read it now
                snap = await queue_snapshot(self.store, wanted, registry=True)
            self._known = wanted
        self._check_partitions(snap)
        return snap

    def _check_partitions(self, snap: QueueSnapshot) -> None:
        """Warn (once) when the namespace has other partitions than configured: the numbers
        would silently miss streams."""
        recorded = snap.partitions_recorded
        configured = self.store.settings.partitions
        if recorded not in (None, configured, self._warned_partitions):
            self._warned_partitions = recorded
            log.warning(
                "namespace %r has %s partitions but the exporter is configured with %d: "
                "set CONVEYOR_PARTITIONS=%s",
                self.store.settings.namespace, recorded, configured, recorded,
            )  # fmt: skip

    async def render(self) -> bytes:
        """The Prometheus text exposition of a fresh snapshot. When Redis is unreachable it
        still answers: ``conveyor_redis_up 0`` and no queue series (rather than stale or
        zero values, which would read as an empty queue)."""
        started = time.perf_counter()
        snap: QueueSnapshot | None
        try:
            snap = await self.snapshot()
        except (*UNAVAILABLE, RedisError) as exc:
            log.warning("queue snapshot failed: %s", str(exc) or type(exc).__name__)
            snap = None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(snap, time.perf_counter() - started))
        return generate_latest(registry)


class _SnapshotCollector(Collector):
    """Yields the gauges of one snapshot (a fresh collector per scrape: no shared state)."""

    def __init__(self, snap: QueueSnapshot | None, duration: float) -> None:
        self.snap = snap
        self.duration = duration

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "conveyor_exporter_scrape_duration_seconds",
            "Seconds the exporter took to read the queues from Redis.",
            value=self.duration,
        )
        yield GaugeMetricFamily(
            "conveyor_redis_up",
            "1 if the exporter could read Redis, else 0 (and no other series).",
            value=1 if self.snap is not None else 0,
        )
        if self.snap is not None:
            yield from _queue_metrics(self.snap)


def _gauge(name: str, documentation: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def _queue_metrics(snap: QueueSnapshot) -> Iterator[Metric]:
    per_partition = ["queue", "partition"]
    unacked = _gauge(
        "redis_stream_pending",
        "Entries of a task stream not acknowledged yet: undelivered plus delivered "
        "(the reference HPA's metric).",
        ["stream", "queue"],
    )
    length = _gauge(
        "conveyor_stream_length",
        "Entries in a task stream (XLEN; acknowledged ones until the next trim).",
        per_partition,
    )
    pending = _gauge(
        "conveyor_stream_pending",
        "Entries delivered to a worker and not acknowledged yet (the group's PEL).",
        per_partition,
    )
    lag = _gauge("conveyor_stream_lag", "Entries not delivered to any worker yet.", per_partition)
    age = _gauge(
        "conveyor_stream_oldest_pending_age_seconds",
        "Age of the oldest unacknowledged entry of a task stream (0 when none).",
        per_partition,
    )
    delayed = _gauge(
        "conveyor_delayed_tasks",
        "Tasks waiting for their time (retries, sleeps, timers, held back by a limit).",
        per_partition,
    )
    for s in snap.streams:
        partition = str(s.partition)
        unacked.add_metric([s.stream, s.queue], s.unacked)
        length.add_metric([s.queue, partition], s.length)
        pending.add_metric([s.queue, partition], s.pending)
        lag.add_metric([s.queue, partition], s.lag)
        age.add_metric([s.queue, partition], s.oldest_age)
        delayed.add_metric([s.queue, partition], s.delayed)
    yield from (unacked, length, pending, lag, age, delayed)

    dead = _gauge(
        "conveyor_dead_letters", "Dead letters of a partition, of every queue.", ["partition"]
    )
    for number, count in enumerate(snap.dead):
        dead.add_metric([str(number)], count)
    yield dead

    backlog = _gauge(
        "conveyor_queue_backlog",
        "Entries of a queue not acknowledged yet, over all partitions (sum of "
        "redis_stream_pending): what to autoscale workers on.",
        ["queue"],
    )
    queue_lag = _gauge(
        "conveyor_queue_lag",
        "Entries of a queue not delivered yet, over all partitions.",
        ["queue"],
    )
    oldest = _gauge(
        "conveyor_queue_oldest_age_seconds",
        "Age of a queue's oldest unacknowledged entry, over all partitions.",
        ["queue"],
    )
    queue_delayed = _gauge(
        "conveyor_queue_delayed", "Delayed tasks of a queue, over all partitions.", ["queue"]
    )
    for t in snap.totals():
        backlog.add_metric([t.queue], t.backlog)
        queue_lag.add_metric([t.queue], t.lag)
        oldest.add_metric([t.queue], t.oldest_age)
        queue_delayed.add_metric([t.queue], t.delayed)
    yield from (backlog, queue_lag, oldest, queue_delayed)

    workers = _gauge(
        "conveyor_workers", "Live worker processes serving a queue (from heartbeats).", ["queue"]
    )
    for queue, count in snap.workers_per_queue().items():
        workers.add_metric([queue], count)
    yield workers
