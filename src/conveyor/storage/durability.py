"""Durability: what a write that Redis acknowledged survives, and the checks around it.

``fast`` (the default) counts a write as done when the master answers. ``replicated`` also
waits, on the same connection, until ``durability_replicas`` replicas have it (``WAIT``),
for at most ``durability_timeout``; a write they do not confirm in time raises
:class:`~conveyor.errors.ReplicationError` (the API answers 503). Replication stays
asynchronous: this narrows what a failover can lose, it does not make it impossible (see
docs/guarantees.md).

WAIT covers the writes made *on its connection*, so a confirmation is queued in the same
pipeline, right after the script calls, on each master they went to. It starts with a small
write (a "barrier") so that WAIT also covers a call that wrote nothing itself, such as a
start answered from its idempotency key: the replication stream is ordered, so a replica
that has the barrier has everything the master wrote before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import ReplicationError
from .connection import is_cluster

log = logging.getLogger("conveyor.redis")

MODES = ("fast", "replicated")
#: How long a barrier key lives (it only needs to outlast its WAIT).
BARRIER_TTL_MS = 60_000


def barrier_key(key: str) -> str:
    """The barrier key in ``key``'s hash slot: ``ns:{p3}:wf:x`` -> ``ns:{p3}:sync``."""
    end = key.find("}")
    return f"{key[: end + 1]}:sync" if end > 0 else f"{key}:sync"


@dataclass(frozen=True, slots=True)
class Confirmation:
    """Wait for ``replicas`` replicas, at most ``timeout_ms``, after a pipeline's writes."""

    replicas: int
    timeout_ms: int

    async def queue(self, redis: Any, pipe: Any, keys: list[str]) -> list[Any]:
        """Queue a barrier and a WAIT on ``pipe`` for each master that ``keys`` (a key of
        each call in the pipeline) live on. Returns the nodes waited on (None: the one
        server), to hand to :meth:`check` with the replies."""
        targets: dict[str, tuple[Any, str]] = {}
        if is_cluster(redis):
            await redis.initialize()  # the slot map (a no-op once it is known)
            for key in keys:
                node = redis.get_node_from_key(key)
                targets.setdefault(node.name, (node, key))
        elif keys:
            targets[""] = (None, keys[0])
        for node, key in targets.values():
            pipe.execute_command("SET", barrier_key(key), "1", "PX", BARRIER_TTL_MS)
            extra = {"target_nodes": node} if node is not None else {}
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms, **extra)
        return [node for node, _ in targets.values()]

    def check(self, redis: Any, nodes: list[Any], keys: list[str], replies: list[Any]) -> None:
        """Raise ReplicationError unless every WAIT in ``replies`` (the barrier and WAIT
        replies, in :meth:`queue`'s order) counted enough replicas. On a Cluster, a slot that
        moved to another master meanwhile also fails the check: WAIT then ran on a
        connection that did not carry the write."""
        confirmed = []
        for barrier, waited in zip(replies[0::2], replies[1::2], strict=True):
            if isinstance(barrier, Exception):
                raise ReplicationError(f"confirming the write failed: {barrier}", self.replicas)
            if isinstance(waited, Exception):
                raise ReplicationError(f"WAIT failed: {waited}", self.replicas)
            confirmed.append(int(waited))
        if any(n is not None for n in nodes):
            now = {redis.get_node_from_key(key).name for key in keys}
            if now - {n.name for n in nodes if n is not None}:
                raise ReplicationError("a slot moved while writing", self.replicas)
        fewest = min(confirmed, default=0)
        if fewest < self.replicas:
            raise ReplicationError(
                f"the write was not confirmed by {self.replicas} replica(s) within "
                f"{self.timeout_ms} ms ({fewest} did)",
                self.replicas,
                fewest,
            )


async def server_warnings(redis: Any, durability: str) -> list[str]:
    """What in the Redis configuration can lose acknowledged work, as readable warnings:
    no AOF (a restart loses everything since the last snapshot), an eviction policy that
    can delete keys (state, streams) under memory pressure, and, in ``replicated`` mode, a
    master without replicas. Read with INFO (CONFIG is not granted to Conveyor's ACL user)."""
    if is_cluster(redis):
        per_node = await redis.info(target_nodes=redis.PRIMARIES)
        infos = {f"master {name}": info for name, info in per_node.items()}
    else:
        infos = {"Redis": await redis.info()}
    warnings = []
    for where, info in infos.items():
        if not int(info.get("aof_enabled", 0)):
            warnings.append(
                f"{where} has appendonly no: a Redis restart or crash loses every workflow "
                "written since its last snapshot (set appendonly yes; see docs/operations.md)"
            )
        policy = info.get("maxmemory_policy", "noeviction")
        policy = policy.decode() if isinstance(policy, bytes) else str(policy)
        if policy != "noeviction":
            warnings.append(
                f"{where} has maxmemory-policy {policy}: under memory pressure Redis deletes "
                "keys, including workflow state and task streams (set noeviction: Conveyor "
                "then refuses new work with 429/503 instead)"
            )
        if durability == "replicated" and not int(info.get("connected_slaves", 0)):
            warnings.append(
                f"{where} has no connected replica: in durability=replicated mode every write "
                "waits for one and fails after durability_timeout"
            )
    return warnings


async def warn_about_server(redis: Any, durability: str) -> list[str] | None:
    """Log :func:`server_warnings` and return them; None when the server could not be
    inspected (unreachable, or INFO not granted: reported at debug level only)."""
    try:
        warnings = await server_warnings(redis, durability)
    except Exception as exc:
        log.debug("could not read the Redis configuration: %s", exc)
        return None
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
