"""The one place a Redis connection is made from a URL (later topologies plug in here)."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigurationError

#: TCP keepalive probing: a silent peer is declared dead after about 10 + 3 * 5 = 25 s
#: (Linux's default would wait over two hours).
KEEPALIVE: dict[int, int] = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}

#: Errors that mean "Redis is not reachable right now": callers back off and try again.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError, OSError)


class HiredisPacking:
    """Packs commands with hiredis (C) instead of redis-py's Python packer, which costs more
    than anything else per transition in the asyncio client (measured: bench/)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str) and " " in first:  # "SCRIPT LOAD" and the like
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


class HiredisConnection(HiredisPacking, aredis.Connection):
    pass


class HiredisSSLConnection(HiredisPacking, aredis.SSLConnection):
    pass


class HiredisUnixConnection(HiredisPacking, aredis.UnixDomainSocketConnection):
    pass


FAST_CONNECTIONS: dict[type[AbstractConnection], type[AbstractConnection]] = {
    aredis.Connection: HiredisConnection,
    aredis.SSLConnection: HiredisSSLConnection,
    aredis.UnixDomainSocketConnection: HiredisUnixConnection,
}


def connect(url: str, *, max_connections: int | None = None, **options: Any) -> aredis.Redis:
    """An asyncio Redis client for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    Responses stay bytes (no decoding cost on the hot path); hiredis parses them when
    installed. A command that hits a dropped connection is retried briefly before the
    error reaches the caller, which then backs off by itself.

    A URL without a password takes the one in ``REDIS_PASSWORD``, if set: a Kubernetes
    Secret can provide it as it is, with no URL-encoding and no password in the ConfigMap.
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"unsupported Redis URL {url!r}: expected redis://, rediss:// or unix://"
        )
    password = os.environ.get("REDIS_PASSWORD")
    if password and "password" not in options and not urlsplit(url).password:
        options["password"] = password
    # A blocking pool: past max_connections a caller waits for a free connection instead of
    # failing (a burst of concurrent starts must not error out).
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections or 64,
        timeout=None,
        decode_responses=False,
        # No per-command socket timeout: on Python 3.11 redis-py wraps every read and write
        # in asyncio.wait_for for it, a Task per command (17% of single-step throughput,
        # docs/benchmarks.md). Dead connections are found by TCP keepalive instead.
        socket_timeout=options.pop("socket_timeout", None),
        socket_keepalive=True,
        socket_keepalive_options=options.pop("socket_keepalive_options", KEEPALIVE),
        socket_connect_timeout=options.pop("socket_connect_timeout", 5.0),
        health_check_interval=options.pop("health_check_interval", 30),
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **options,
    )
    pool.connection_class = FAST_CONNECTIONS.get(pool.connection_class, pool.connection_class)
    return aredis.Redis.from_pool(pool)
