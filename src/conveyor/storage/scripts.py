"""Registry of the Lua transition scripts: name -> file -> number of keys.

Scripts are read once per registry with importlib.resources, called with EVALSHA, and loaded
again when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH). A script whose first line
is ``-- uses lib`` gets scripts/lib.lua (the shared helpers) prepended: Redis scripts cannot
import each other, and one EVALSHA must stay one atomic transition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from .connection import NoReplicasError, is_cluster
from .durability import Confirmation

# name: number of KEYS (0: any number, the script says how it splits them). The file is
# scripts/<name>.lua.
SCRIPTS: dict[str, int] = {
    "start": 0,
    "commit": 0,
    "promote": 2,
    "heartbeat": 1,
    "replay": 5,
    "cancel": 7,
    "signal": 3,
    "claim": 1,
    "trim": 1,
    "rate": 1,
    "concurrency": 1,
}
LIB_MARKER = b"-- uses lib"


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str
    num_keys: int


class ScriptRegistry:
    """The scripts of one client or worker (no global cache)."""

    def __init__(self) -> None:
        folder = resources.files(__package__).joinpath("scripts")
        self.scripts: dict[str, Script] = {}
        lib = folder.joinpath("lib.lua").read_bytes()
        for name, num_keys in SCRIPTS.items():
            source = folder.joinpath(f"{name}.lua").read_bytes()
            if source.startswith(LIB_MARKER):
                source = lib + b"\n" + source
            sha = hashlib.sha1(source).hexdigest()
            self.scripts[name] = Script(name, source, sha, num_keys)

    def __getitem__(self, name: str) -> Script:
        return self.scripts[name]

    def args(self, name: str, keys: list[str], argv: list[Any]) -> list[Any]:
        """EVALSHA arguments for a call of ``name``; checks the key count."""
        script = self.scripts[name]
        if script.num_keys and len(keys) != script.num_keys:
            raise ValueError(f"script {name} takes {script.num_keys} keys, got {len(keys)}")
        return ["EVALSHA", script.sha, len(keys), *keys, *argv]

    async def load_all(self, redis: Any) -> None:
        if is_cluster(redis):  # each SCRIPT LOAD goes to every master (not pipelined there)
            for script in self.scripts.values():
                await redis.script_load(script.source)
            return
        pipe = redis.pipeline(transaction=False)
        for script in self.scripts.values():
            pipe.script_load(script.source)
        await pipe.execute()

    async def call(
        self,
        redis: Any,
        name: str,
        keys: list[str],
        argv: list[Any],
        confirm: Confirmation | None = None,
    ) -> Any:
        """One script call. With ``confirm`` (durability ``replicated``) it returns only once
        replicas confirmed the write, else raises ReplicationError."""
        args = self.args(name, keys, argv)
        if confirm is not None:
            [result] = await self.call_many(redis, [args], confirm)
            if isinstance(result, Exception):
                raise result
            return result
        try:
            return await redis.execute_command(*args)
        except NoScriptError:
            await self.load_all(redis)
            return await redis.execute_command(*args)

    async def call_many(
        self, redis: Any, calls: list[list[Any]], confirm: Confirmation | None = None
    ) -> list[Any]:
        """Run EVALSHA calls (from :meth:`args`) in one pipeline; reload scripts on NOSCRIPT.

        Results come back in order; an exception of one call is returned in its place. With
        ``confirm``, replicas must confirm the pipeline's writes (see storage/durability.py),
        else ReplicationError is raised for all of them.
        """
        results = await self._pipeline(redis, calls, confirm)
        refused = next((r for r in results if isinstance(r, NoReplicasError)), None)
        if refused is not None:  # a pipeline's calls come back as values: raise it
            raise refused
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            await self.load_all(redis)
            retried = await self._pipeline(redis, [calls[i] for i in missing], confirm)
            for i, r in zip(missing, retried, strict=True):
                results[i] = r
        return results

    @staticmethod
    async def _pipeline(
        redis: Any, calls: list[list[Any]], confirm: Confirmation | None
    ) -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for args in calls:
            pipe.execute_command(*args)
        if confirm is None or not calls:
            return list(await pipe.execute(raise_on_error=False))
        keys = [args[3] for args in calls]  # EVALSHA sha numkeys key...: a key of each call
        nodes = await confirm.queue(redis, pipe, keys)
        replies = list(await pipe.execute(raise_on_error=False))
        confirm.check(redis, nodes, keys, replies[len(calls) :])
        return replies[: len(calls)]
