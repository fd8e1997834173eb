"""A namespace's set-up: the partition count it was created with, the consumer groups of its
streams, the registry of workflow descriptions, and the scripts loaded in Redis."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from .. import codec
from ..errors import ConfigurationError
from .base import Backend, Role
from .durability import warn_about_server


class Namespace(Role):
    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self._server_checked = False

    async def check_partitions(self) -> None:
        """Record the partition count on first use; refuse to run with a different one.
        The first time, also warn about Redis settings that can lose acknowledged work."""
        if not self._server_checked:
            warned = await warn_about_server(self.redis, self.settings.durability)
            self._server_checked = warned is not None
        key = self.keys.meta
        await self.redis.hsetnx(key, "partitions", self.settings.partitions)
        stored = await self.redis.hget(key, "partitions")
        if stored is not None and int(stored) != self.settings.partitions:
            raise ConfigurationError(
                f"namespace {self.settings.namespace!r} was created with {int(stored)} "
                f"partitions, but this process is configured with {self.settings.partitions}; "
                "set CONVEYOR_PARTITIONS to match (workflow ids map to partitions)"
            )

    async def ensure_groups(self, queues: Iterable[str]) -> None:
        """Create every partition stream of ``queues`` with its consumer group (idempotent)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            for stream in self.keys.streams(queue):
                pipe.xgroup_create(stream, self.settings.group, id="0", mkstream=True)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, ResponseError) and "BUSYGROUP" not in str(result):
                raise result

    async def register(self, descriptions: dict[str, dict[str, Any]]) -> None:
        """Publish workflow descriptions so clients without the code can start them."""
        if descriptions:
            mapping = {name: codec.dumps(desc) for name, desc in descriptions.items()}
            await self.redis.hset(self.keys.registry, mapping=mapping)

    async def lookup(self, workflow: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.keys.registry, workflow)
        return codec.loads(raw) if raw else None

    async def load_scripts(self) -> None:
        """Load every Lua script (a worker does at start: its first calls find them)."""
        await self.scripts.load_all(self.redis)

    async def purge(self, batch: int = 1000) -> int:
        """Delete every key of this namespace and return how many: for demos and tests that
        own their namespace. It scans the keyspace (every node of a Cluster), so it is no
        tool for a namespace holding production data."""
        found: list[Any] = []
        deleted = 0
        async for key in self.redis.scan_iter(match=f"{self.settings.namespace}:*", count=batch):
            found.append(key)
            if len(found) >= batch:
                deleted += await self._unlink(found)
                found = []
        return deleted + (await self._unlink(found) if found else 0)

    async def _unlink(self, keys: list[Any]) -> int:
        # one key per call on a Cluster: the keys of a namespace span every slot
        if len(keys) == 1 or not hasattr(self.redis, "get_nodes"):
            return int(await self.redis.unlink(*keys))
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        return sum(int(n) for n in await pipe.execute())
