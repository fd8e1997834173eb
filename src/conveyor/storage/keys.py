"""Every Redis key and channel name is built here, and only here.

A workflow's keys and the stream partition its tasks go to share one hash tag ``{pN}``, with
N derived from the workflow id, so each transition touches one hash slot: it is one atomic
script on standalone Redis and on Redis Cluster alike. See docs/architecture.md for the map.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str
    partitions: int

    # -- partitioning -----------------------------------------------------------------------

    def partition(self, workflow_id: str) -> int:
        # a child workflow ('<parent>~<task>') lives in its root's partition, so a parent and
        # its children move on together in one atomic script
        root = workflow_id.partition("~")[0]
        return zlib.crc32(root.encode()) % self.partitions

    def _p(self, partition: int) -> str:
        return f"{self.namespace}:{{p{partition}}}"

    # -- per partition ----------------------------------------------------------------------

    def stream(self, partition: int, queue: str) -> str:
        """Task stream of one queue in one partition (consumer group: Settings.group)."""
        return f"{self._p(partition)}:q:{queue}"

    def delayed(self, partition: int, queue: str) -> str:
        """Sorted set of tasks waiting for a retry (score: due time, ms)."""
        return f"{self._p(partition)}:delayed:{queue}"

    def dead(self, partition: int) -> str:
        """Dead-letter stream of one partition."""
        return f"{self._p(partition)}:dead"

    def finished_channel(self, partition: int) -> str:
        """Pub/sub channel: the id of every workflow of the partition that finishes."""
        return f"{self._p(partition)}:finished"

    def stopped(self, partition: int) -> str:
        """Sorted set of the partition's workflows that stopped early (cancelled, or failed
        with tasks possibly left: score = when, ms). Workers mirror it to drop those tasks
        before they run, with no round trip per task."""
        return f"{self._p(partition)}:stopped"

    def recent(self, partition: int) -> str:
        """Sorted set of the partition's workflows by start time (ms), for listings; entries
        older than the retention are trimmed as new ones arrive."""
        return f"{self._p(partition)}:recent"

    def waiting(self, partition: int) -> str:
        """Sorted set of the partition's workflows that waited for a signal (score: since,
        ms): the inbox of waits. Members whose waits ended are removed lazily, when listed."""
        return f"{self._p(partition)}:waiting"

    def stopped_channel(self, partition: int) -> str:
        """Pub/sub channel announcing each workflow added to :meth:`stopped` (same name)."""
        return self.stopped(partition)

    # -- per workflow -----------------------------------------------------------------------

    def workflow(self, workflow_id: str, partition: int | None = None) -> str:
        """State hash of one workflow (``partition`` saves recomputing it when known)."""
        p = self.partition(workflow_id) if partition is None else partition
        return f"{self.namespace}:{{p{p}}}:wf:{workflow_id}"

    def history(self, workflow_id: str, partition: int | None = None) -> str:
        """Step history list of one workflow (one JSON record per attempt)."""
        p = self.partition(workflow_id) if partition is None else partition
        return f"{self.namespace}:{{p{p}}}:wf:{workflow_id}:history"

    def events(self, workflow_id: str, partition: int | None = None) -> str:
        """Stream of a workflow's events: one per step attempt (its history record), what
        steps emit (``ctx.emit``) and its end. Entry ids are the SSE event ids."""
        p = self.partition(workflow_id) if partition is None else partition
        return f"{self.namespace}:{{p{p}}}:wf:{workflow_id}:events"

    def signals(self, workflow_id: str, signal: str, partition: int | None = None) -> str:
        """List of payloads of ``signal`` sent before the workflow waited for it (FIFO)."""
        p = self.partition(workflow_id) if partition is None else partition
        return f"{self.namespace}:{{p{p}}}:wf:{workflow_id}:signal:{signal}"

    # -- global (not touched by transition scripts) ------------------------------------------

    @property
    def meta(self) -> str:
        """Hash of deployment-wide facts (the partition count) that every process checks."""
        return f"{self.namespace}:meta"

    @property
    def registry(self) -> str:
        """Hash: workflow name -> JSON description (start step, queues), written by workers."""
        return f"{self.namespace}:workflows"

    def worker(self, name: str) -> str:
        """Liveness key of one worker process (expires unless refreshed): its heartbeat, a
        JSON object (see worker/lease.py) that the exporter and `conveyor top` read."""
        return f"{self.namespace}:worker:{name}"

    @property
    def workers(self) -> str:
        """Sorted set of worker names (score: last heartbeat, ms), so readers find the live
        workers' keys without a SCAN; members whose key expired are removed by readers."""
        return f"{self.namespace}:workers"

    def cache(self, digest: str) -> str:
        """Memoised result of a step (``cache_ttl``), by digest of (workflow, step, input)."""
        return f"{self.namespace}:cache:{digest}"

    def streams(self, queue: str) -> list[str]:
        return [self.stream(p, queue) for p in range(self.partitions)]
