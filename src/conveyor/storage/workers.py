"""What a worker writes besides transitions: its heartbeat (a liveness key and its entry in
the registry of workers), the events its steps emit, and the step-result cache; and the one
check of whether a task is still active (for tasks of workflows that stopped early)."""

from __future__ import annotations

from typing import Any

from .. import codec
from .base import Role
from .records import Task


class Workers(Role):
    async def publish(self, consumer: str, info: dict[str, Any], ttl: int, now_ms: int) -> None:
        """Write ``consumer``'s heartbeat: its liveness key (expiring after ``ttl`` seconds)
        holding ``info``, and its entry in the registry of workers."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.worker(consumer), codec.dumps(info), ex=ttl)
        pipe.zadd(self.keys.workers, {consumer: now_ms})
        await pipe.execute()

    async def forget(self, consumer: str) -> None:
        """Remove ``consumer``'s heartbeat and registry entry (it stopped)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.worker(consumer))
        pipe.zrem(self.keys.workers, consumer)
        await pipe.execute()

    async def append_events(self, events: list[tuple[str, list[Any]]]) -> None:
        """Append (workflow id, fields) to each workflow's event stream, in one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        events_key = self.keys.events
        for workflow_id, fields in events:
            pipe.execute_command("XADD", events_key(workflow_id), "*", *fields)
        await pipe.execute()

    async def cached(self, digests: list[str]) -> list[bytes | None]:
        """The cached results of these step digests (None where nothing is cached)."""
        pipe = self.redis.pipeline(transaction=False)
        for digest in digests:  # GETs, not one MGET: cache keys hash to any slot (Cluster)
            pipe.get(self.keys.cache(digest))
        return list(await pipe.execute())

    async def cache(self, key: str, entry: bytes, ttl: float) -> None:
        """Store a step's result under its cache key for ``ttl`` seconds."""
        await self.redis.set(key, entry, px=max(1, int(ttl * 1000)))

    async def active(self, tasks: list[Task]) -> list[bool]:
        """Whether each task is still active in its workflow (one HEXISTS each, pipelined)."""
        pipe = self.redis.pipeline(transaction=False)
        for t in tasks:
            pipe.hexists(self.keys.workflow(t.workflow_id, t.partition), f"t:{t.task}")
        return [bool(found) for found in await pipe.execute()]
