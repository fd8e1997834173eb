"""Storage is the only door to Redis: outside ``src/conveyor/storage/`` no module imports redis
or uses a Redis client (commands, pipelines, pub/sub, the script registry, a store's client),
and storage imports nothing from ``observability/`` (the dependency points one way).

Creating a client with the connection factory (``storage.connection.connect``) and handing it
to storage is allowed anywhere, as is closing it. Read from the source with ``ast``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import conveyor

PACKAGE = Path(conveyor.__file__).parent
STORAGE = "conveyor.storage"

#: Attributes that are a Redis client or its registry of scripts: a store's ``redis`` and
#: ``scripts``, a client's ``pubsub``.
CLIENT_ATTRIBUTES = {"redis", "scripts", "pubsub"}
#: Methods only a Redis client (or its pipeline, pub/sub or script registry) has.
CLIENT_METHODS = {
    "pipeline", "execute_command", "get_message", "evalsha", "script_load", "script_exists",
    "call_many", "load_all", "hget", "hset", "hgetall", "hmget", "hsetnx",
    "hexists", "hdel", "xadd", "xack", "xclaim", "xautoclaim", "xdel", "xlen", "xrange",
    "xrevrange", "xread", "xreadgroup", "xpending", "xpending_range", "xgroup_create",
    "zadd", "zrem", "zcard", "zrange", "zrangebyscore", "zremrangebyscore", "lrange",
    "lpush", "rpush", "pexpire", "pttl",
}  # fmt: skip

#: Known violations in modules other people are changing now, each to be removed with its
#: fix (the test fails when one is fixed, so the list only shrinks): the Redis errors these
#: modules catch are in conveyor.storage.errors, a second client's store is
#: Store.with_client.
PENDING: set[tuple[str, str]] = set()


def modules() -> Iterator[tuple[str, str, ast.Module]]:
    """(path relative to the package, dotted module name, syntax tree) of every module."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        parts = ["conveyor", *relative.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        yield relative.as_posix(), ".".join(parts), ast.parse(path.read_text(), str(path))


def imports(module: str, is_package: bool, tree: ast.Module) -> Iterator[tuple[str, list[str]]]:
    """(absolute module, names taken from it) of every import statement of ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:  # relative: resolved against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            yield name, [alias.name for alias in node.names]


def violations(relative: str, module: str, tree: ast.Module) -> set[str]:
    """What ``module`` does that it should not, by the rule for its side of the boundary."""
    found: set[str] = set()
    statements = list(imports(module, relative.endswith("__init__.py"), tree))
    if module == STORAGE or module.startswith(STORAGE + "."):
        for name, names in statements:
            for full in [name, *(f"{name}.{n}" for n in names)]:
                if full == "conveyor.observability" or full.startswith("conveyor.observability."):
                    found.add(f"imports {full}")
                    break
        return found
    for name, _ in statements:
        if name == "redis" or name.startswith("redis."):
            found.add(f"imports {name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in CLIENT_ATTRIBUTES:
                found.add(f"uses .{node.attr}")
            elif node.attr in CLIENT_METHODS:
                found.add(f"calls .{node.attr}()")
    return found


def all_violations() -> set[tuple[str, str]]:
    return {
        (relative, what)
        for relative, module, tree in modules()
        for what in violations(relative, module, tree)
    }


def test_only_storage_touches_redis_and_storage_imports_no_telemetry() -> None:
    found = all_violations()
    new = sorted(found - PENDING)
    fixed = sorted(PENDING - found)
    assert not new, "outside storage/, a module touches Redis (or storage imports telemetry):\n" + (
        "\n".join(f"  {path}: {what}" for path, what in new)
    )
    assert not fixed, f"fixed, remove from PENDING: {fixed}"


def test_the_check_sees_each_kind_of_violation() -> None:
    """The rules catch what they are meant to (on small sources, not the package)."""

    def check(module: str, source: str) -> set[str]:
        relative = module.removeprefix("conveyor.").replace(".", "/") + ".py"
        return violations(relative, module, ast.parse(source))

    assert check("conveyor.worker.x", "import redis") == {"imports redis"}
    assert check("conveyor.worker.x", "from redis.asyncio import Redis") == {
        "imports redis.asyncio"
    }
    assert check("conveyor.worker.x", "async def f(s):\n    await s.redis.get('k')") == {
        "uses .redis"
    }
    assert check("conveyor.worker.x", "def f(c):\n    c.pipeline()") == {"calls .pipeline()"}
    assert check("conveyor.worker.x", "def f(c):\n    c.pubsub()") == {"uses .pubsub"}
    assert check("conveyor.worker.x", "from ..storage.connection import connect\nconnect('u')") == (
        set()
    )
    assert check("conveyor.storage.x", "from ..observability.tracing import TRACING") == {
        "imports conveyor.observability.tracing"
    }
    assert check("conveyor.storage.x", "from .. import observability") == {
        "imports conveyor.observability"
    }
    assert check("conveyor.storage.x", "import redis\ndef f(r):\n    r.pipeline()") == set()
