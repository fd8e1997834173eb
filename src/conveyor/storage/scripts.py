"""Registry of the Lua transition scripts: name -> file -> number of keys.

Scripts are read once per registry with importlib.resources, called with EVALSHA, and loaded
again when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH). Redis scripts cannot
import each other, and one EVALSHA must stay one atomic transition, so a script lists the
helpers it calls as ``--- @include "<name>"`` lines and gets exactly those sections of
scripts/lib.lua (each opens with ``--- @helper <name>`` and lists its own includes)
prepended, with what they include in turn, in lib.lua's order: no script ships a helper it
does not call (tests/lua/test_includes.py checks that).
"""

from __future__ import annotations

import hashlib
import re
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
HELPER = re.compile(rb"^--- @helper (\w+)[ \t]*$", re.M)
INCLUDE = re.compile(rb'^--- @include "(\w+)"[ \t]*$', re.M)


def helper_sections(lib: bytes) -> dict[str, bytes]:
    """lib.lua's sections by name, in file order (the preamble before the first is docs)."""
    parts = HELPER.split(lib)  # preamble, name, body, name, body...
    sections: dict[str, bytes] = {}
    for raw, body in zip(parts[1::2], parts[2::2], strict=True):
        name = raw.decode()
        if name in sections:
            raise ValueError(f"lib.lua defines helper {name!r} twice")
        sections[name] = b"--- @helper " + raw + body.rstrip() + b"\n"
    return sections


def includes(source: bytes) -> list[str]:
    return [m.decode() for m in INCLUDE.findall(source)]


def assemble(name: str, source: bytes, sections: dict[str, bytes]) -> bytes:
    """``source`` with the helpers it includes (transitively) prepended in lib.lua's order;
    a helper may include only helpers defined before it (Lua locals exist once defined)."""
    order = list(sections)
    needed: set[str] = set()
    todo: list[tuple[str | None, str]] = [(None, dep) for dep in includes(source)]
    while todo:
        helper, dep = todo.pop()  # helper None: the script itself includes dep
        if dep not in sections:
            who = name if helper is None else f"lib.lua: helper {helper!r}"
            raise ValueError(f"{who} includes {dep!r}, which lib.lua does not define")
        if helper is not None and order.index(dep) >= order.index(helper):
            raise ValueError(f"lib.lua: helper {helper!r} includes {dep!r}, defined after it")
        if dep not in needed:
            needed.add(dep)
            todo += [(dep, d) for d in includes(sections[dep])]
    return b"\n".join([*(sections[n] for n in order if n in needed), source])


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
        sections = helper_sections(folder.joinpath("lib.lua").read_bytes())
        for name, num_keys in SCRIPTS.items():
            source = assemble(name, folder.joinpath(f"{name}.lua").read_bytes(), sections)
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
