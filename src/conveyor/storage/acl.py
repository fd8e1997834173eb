"""The least-privilege Redis ACL user for Conveyor's workers, HTTP API, clients and CLI.

:func:`acl_rules` returns the ``ACL SETUSER`` rules of a user that can do everything the
engine does in one namespace and nothing else: only keys and pub/sub channels under
``<namespace>:`` (every key and channel, see :mod:`conveyor.storage.keys` and
:mod:`conveyor.limits`), and only the commands the engine sends, listed one by one in
:data:`ENGINE_COMMANDS` (found by running the whole engine under this user: tests/security).
Everything else is refused with ``NOPERM``: ``FLUSHALL``, ``FLUSHDB``, ``KEYS``, ``SCAN``,
``CONFIG``, ``DEBUG``, ``SHUTDOWN``, ``MONITOR``, ``ACL``, ``EVAL`` of new code, and any key
of another application. Commands that the Lua scripts call are checked against the same rules
(Redis applies the caller's ACL inside scripts), so ``SCRIPT LOAD`` + ``EVALSHA`` grant
nothing beyond them.

The rules redefine the user's permissions from scratch each time they are applied
(``resetkeys``, ``resetchannels``, ``-@all``), so the same line can be re-run after an
upgrade. Its password is only replaced when one is given.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from ..errors import ConfigurationError

#: What the engine sends, by purpose (``cmd|sub``: that subcommand only).
#:
#: ``INFO`` is the one command of Redis's ``@dangerous`` category here: it shows server
#: details (paths, statistics, the replication topology), never data or passwords, and the
#: engine reads its persistence, memory and replication sections at start. Allowing single
#: sections (``+info|persistence``) would not narrow it: Redis 7 takes several sections in
#: one ``INFO`` and matches such a rule on the first argument only.
ENGINE_COMMANDS: dict[str, tuple[str, ...]] = {
    # task streams, dead letters, event streams (scripts, reader, reclaimer, heartbeats,
    # trim, the exporter's snapshot, the API's SSE route)
    "streams": (
        "xadd", "xack", "xdel", "xlen", "xrange", "xrevrange", "xread", "xreadgroup",
        "xpending", "xclaim", "xautoclaim", "xtrim", "xgroup|create", "xinfo|groups",
    ),
    # workflow state, registry, meta
    "hashes": (
        "hset", "hsetnx", "hget", "hmget", "hgetall", "hdel", "hexists", "hincrby", "hkeys",
        "hvals",
    ),
    # delayed tasks, stopped and recent workflows, waits inbox, workers, concurrency leases
    "sorted sets": (
        "zadd", "zrem", "zcard", "zrange", "zrangebyscore", "zrevrangebyscore",
        "zremrangebyscore", "zscore",
    ),
    # step history, buffered signals
    "lists": ("rpush", "lpop", "lrange"),
    # step-result cache, rate limits, worker heartbeats
    "strings": ("get", "set", "mget"),
    # lifetimes of state, history, signals and limits
    "keys": ("del", "exists", "expire", "pexpire", "persist"),
    # the transitions: EVALSHA, loaded again after NOSCRIPT; /readyz checks they are loaded
    "scripting": ("evalsha", "script|load", "script|exists"),
    # finished and stopped workflows (the keys' channels of the same names)
    "pub/sub": ("publish", "subscribe", "unsubscribe"),
    # the server clock (scripts, the exporter); the startup check of persistence, eviction
    # policy and replicas (INFO: read-only, no data; CONFIG stays refused); WAIT for the
    # replicated durability mode
    "server": ("time", "info", "wait"),
    # redis-py's handshake (HELLO 3 AUTH: it speaks RESP3; AUTH for RESP2 clients) and
    # health checks (SELECT for a database other than 0)
    "connection": ("auth", "hello", "ping", "select"),
}  # fmt: skip

#: Added with ``cluster=True``: redis-py's RedisCluster discovers the slots (CLUSTER SLOTS;
#: SHARDS and NODES are the same facts, which newer clients and tools read), learns where
#: each command's keys are (COMMAND, COMMAND GETKEYS), follows ASK redirects during a
#: resharding (ASKING), and, when told to read from replicas, sends READONLY / READWRITE.
#: ACLs are per node in a Cluster: apply the rules on every node.
CLUSTER_COMMANDS: tuple[str, ...] = (
    "cluster|slots", "cluster|shards", "cluster|nodes", "command", "asking", "readonly",
    "readwrite",
)  # fmt: skip

#: Added when ``redis_version`` is given and matches (``ACL SETUSER`` refuses a rule for a
#: command or subcommand the server does not know, so the portable rules leave them out).
#: redis-py tries ``CLIENT SETINFO`` (and, speaking RESP3, ``CLIENT MAINT_NOTIFICATIONS``) on
#: every connection and ignores an error, but a refusal by the ACL still fills the ACL LOG:
#: Redis 7.2 has SETINFO; 6.2 takes a rule for any subcommand (the command then fails as
#: unknown, quietly); 7.0 and 7.1 refuse the rule (and answer "unknown subcommand" before
#: checking the ACL, so nothing is logged there). ``WAITAOF`` exists from 7.2.
VERSIONED_COMMANDS: tuple[tuple[str, Callable[[tuple[int, int]], bool]], ...] = (
    ("client|setinfo", lambda v: v < (7, 0) or v >= (7, 2)),
    ("client|maint_notifications", lambda v: v < (7, 0)),
    ("waitaof", lambda v: v >= (7, 2)),
)

DEFAULT_USER = "conveyor"

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _plain(value: str, what: str) -> str:
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigurationError(f"invalid {what} {value!r}: it must be non-empty, no spaces")
    return value


def key_pattern(namespace: str) -> str:
    """``<namespace>:*`` with the namespace's glob characters escaped, so a namespace such
    as ``a*`` cannot widen the pattern to other applications' keys."""
    return _GLOB_SPECIAL.sub(r"\\\1", _plain(namespace, "namespace")) + ":*"


def password_rules(password: str | None) -> list[str]:
    """``resetpass`` and one password rule: ``>clear``, ``#sha256`` as given, or a plain
    password turned into ``#<its SHA-256>`` (so it is never printed); none for None."""
    if password is None:
        return []
    if password.startswith("#"):
        if not _SHA256.fullmatch(password[1:]):
            raise ConfigurationError("a '#' password rule takes the 64 hex digits of a SHA-256")
        return ["resetpass", password.lower()]
    if password.startswith(">"):
        return ["resetpass", ">" + _plain(password[1:], "password")]
    if not password:
        raise ConfigurationError("the password is empty")
    return ["resetpass", "#" + hashlib.sha256(password.encode()).hexdigest()]


def allowed_commands(
    *, cluster: bool = False, redis_version: tuple[int, int] | None = None
) -> list[str]:
    """Every command (or ``cmd|sub``) the rules allow, in the order they are written."""
    commands = [c for group in ENGINE_COMMANDS.values() for c in group]
    if cluster:
        commands += CLUSTER_COMMANDS
    if redis_version is not None:
        commands += [name for name, wanted in VERSIONED_COMMANDS if wanted(redis_version)]
    return commands


def acl_rules(
    namespace: str,
    *,
    password: str | None = None,
    cluster: bool = False,
    redis_version: tuple[int, int] | None = None,
) -> list[str]:
    """The ``ACL SETUSER`` rules (after the user name) of the engine's user for ``namespace``.

    Args:
        namespace: ``Settings.namespace``: the user may touch only ``<namespace>:*`` keys
            and channels.
        password: a plain password (written as ``#<sha256>``), a ``>password`` or
            ``#<sha256>`` rule, or None to leave the user's passwords as they are.
        cluster: also allow the discovery commands a Redis Cluster client needs.
        redis_version: the server's (major, minor). None writes rules that every Redis
            from 6.2 on accepts; with it, ``CLIENT SETINFO`` (which redis-py sends on
            connect) where the server takes the rule, ``WAITAOF`` from 7.2 and
            ``clearselectors`` from 7.0.
    """
    pattern = key_pattern(namespace)
    rules = ["on", *password_rules(password), "resetkeys", f"~{pattern}"]
    rules += ["resetchannels", f"&{pattern}"]
    if redis_version is not None and redis_version >= (7, 0):
        rules.append("clearselectors")  # 7.0 selectors could grant more: drop them
    rules.append("-@all")
    rules += [
        f"+{command}" for command in allowed_commands(cluster=cluster, redis_version=redis_version)
    ]
    return rules


def acl_setuser(
    namespace: str,
    user: str = DEFAULT_USER,
    *,
    password: str | None = None,
    cluster: bool = False,
    redis_version: tuple[int, int] | None = None,
) -> list[str]:
    """The whole command as arguments, for ``redis.execute_command(*acl_setuser(...))``."""
    rules = acl_rules(namespace, password=password, cluster=cluster, redis_version=redis_version)
    return ["ACL", "SETUSER", _plain(user, "user name"), *rules]


def aclfile_line(
    namespace: str,
    user: str = DEFAULT_USER,
    *,
    password: str | None = None,
    cluster: bool = False,
    redis_version: tuple[int, int] | None = None,
) -> str:
    """The same user as a line of an ACL file (``aclfile``, ``ACL LOAD``)."""
    rules = acl_rules(namespace, password=password, cluster=cluster, redis_version=redis_version)
    return " ".join(["user", _plain(user, "user name"), *rules])


def parse_version(text: str) -> tuple[int, int]:
    """``"7.2"`` or ``"7.2.4"`` -> ``(7, 2)``."""
    parts = text.strip().split(".")
    try:
        version = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        raise ConfigurationError(f"invalid Redis version {text!r}: expected e.g. 7.2") from None
    if version < (6, 2):
        raise ConfigurationError(f"Redis {text} has no channel ACLs: Conveyor needs 6.2 or newer")
    return version
