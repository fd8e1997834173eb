"""The one place a Redis connection is made from a URL, for every topology.

One function, :func:`connect`, reads the URL's scheme and returns a client that the rest of
the engine uses the same way:

* ``redis://``, ``rediss://`` (TLS), ``unix://``: one server;
* ``redis+sentinel://host:port,host:port/master-name``: the master that the Sentinels name,
  followed across failovers;
* ``redis+cluster://host:port,host:port``: a Redis Cluster, found from any of its nodes.

``rediss+sentinel://`` and ``rediss+cluster://`` are the TLS forms. Query parameters are
redis-py's connection options (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs``, ``socket_connect_timeout``...), for every topology alike.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aredis
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigurationError, ReplicationError
from ..settings import RedisSecrets

#: TCP keepalive probing: a silent peer is declared dead after about 10 + 3 * 5 = 25 s
#: (Linux's default would wait over two hours).
KEEPALIVE: dict[int, int] = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}


class NoReplicasError(ResponseError):
    """NOREPLICAS: the master has fewer good replicas than its ``min-replicas-to-write`` and
    refuses writes (a script is refused before its first write, so it ran not at all)."""


# redis-py makes an error reply an exception by its first word and has no class for this
# one, which would then look like a bug to the engine instead of a passing outage
BaseParser.EXCEPTION_CLASSES.setdefault("NOREPLICAS", NoReplicasError)

#: Errors that mean "Redis is not reachable right now": callers back off and try again.
#: Besides lost connections: a server still loading its data, a Cluster without a master for
#: some slots (CLUSTERDOWN, no node for a slot), keys moving between masters (TRYAGAIN, and
#: redirections that outlast redis-py's retries: "TTL exhausted"), a demoted master (READONLY),
#: a full Redis (OOM under maxmemory-policy noeviction: it passes when memory frees),
#: which all end by themselves when a failover completes; and too few replicas: a master's
#: min-replicas-to-write refusal, or (durability "replicated") no confirmation in time.
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ClusterError,
    TryAgainError,
    ReadOnlyError,
    SlotNotCoveredError,
    OutOfMemoryError,
    NoReplicasError,
    ReplicationError,
    ConnectionError,
    OSError,
)

#: What :func:`connect` returns: a client of one server (also behind Sentinel) or of a
#: Cluster. Both take the same commands, pipelines and scripts; the engine handles the few
#: differences (multi-stream reads, WAIT) where they occur, with :func:`is_cluster`.
RedisClient: TypeAlias = aredis.Redis | RedisCluster


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


class HiredisSentinelConnection(HiredisPacking, SentinelManagedConnection):
    pass


class HiredisSentinelSSLConnection(HiredisPacking, SentinelManagedSSLConnection):
    pass


class BlockingSentinelPool(SentinelConnectionPool, aredis.BlockingConnectionPool):
    """The Sentinel pool (it asks the Sentinels where the master is, and again after a
    failover) with the blocking pool's waiting for a free connection. Closing it also
    closes the connections to the Sentinels."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.aclose()


FAST_CONNECTIONS: dict[type[AbstractConnection], type[AbstractConnection]] = {
    aredis.Connection: HiredisConnection,
    aredis.SSLConnection: HiredisSSLConnection,
    aredis.UnixDomainSocketConnection: HiredisUnixConnection,
    SentinelManagedConnection: HiredisSentinelConnection,
    SentinelManagedSSLConnection: HiredisSentinelSSLConnection,
}

SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL names: a topology, its seed hosts, and redis-py connection options.

    The options come from redis-py's own URL parser (user, password, database, TLS files and
    every query parameter), so each topology takes them the same way.
    """

    topology: str  # "server", "sentinel" or "cluster"
    url: str  # the URL for one server; for the others, a single-host URL of the options
    hosts: tuple[tuple[str, int], ...] = ()
    master: str = ""  # the Sentinel master name
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        scheme = url.partition("://")[0].lower()
        if scheme in SCHEMES:
            return cls("server", url)
        if scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
            expected = ", ".join(f"{s}://" for s in SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES)
            raise ConfigurationError(f"unsupported Redis URL {url!r}: expected {expected}")
        parts = urlsplit(url)
        auth, _, hostlist = parts.netloc.rpartition("@")
        hosts = tuple(_host_port(h, url) for h in hostlist.split(",") if h)
        if not hosts:
            raise ConfigurationError(f"Redis URL {url!r} names no host")
        path = [unquote(p) for p in parts.path.split("/") if p]
        tls = scheme.startswith("rediss")
        single = urlsplit("")._replace(
            scheme="rediss" if tls else "redis",
            netloc=f"{auth}@{hosts[0][0]}:{hosts[0][1]}"
            if auth
            else f"{hosts[0][0]}:{hosts[0][1]}",
            query=parts.query,
        )
        if scheme in SENTINEL_SCHEMES:
            if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
                raise ConfigurationError(
                    f"Redis URL {url!r}: expected {scheme}://host:port,host:port/master-name"
                    " (optionally /db after the name)"
                )
            db = f"/{path[1]}" if len(path) == 2 else ""
            single_url = single._replace(path=db).geturl()
            return cls("sentinel", single_url, hosts, path[0], _options(single_url))
        if path and path != ["0"]:
            raise ConfigurationError(f"Redis URL {url!r}: a Cluster has only database 0")
        single_url = single.geturl()
        return cls("cluster", single_url, hosts, "", _options(single_url))


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"Redis URL {url!r}: {text!r} is not host:port")
    return host.strip("[]"), int(port)


def _options(single_url: str) -> dict[str, Any]:
    try:
        options: dict[str, Any] = dict(parse_url(single_url))
    except ValueError as exc:
        raise ConfigurationError(f"Redis URL: {exc}") from None
    for name in ("host", "port", "path"):
        options.pop(name, None)
    return options


def connect(url: str, *, max_connections: int | None = None, **options: Any) -> RedisClient:
    """A Redis client for ``url``: one server, a Sentinel-managed master, or a Cluster.

    Responses stay bytes (no decoding cost on the hot path); hiredis parses them when
    installed. A command that hits a dropped connection is retried briefly before the
    error reaches the caller, which then backs off by itself (see :data:`UNAVAILABLE`).

    A URL without a password takes the one in ``REDIS_PASSWORD``, if set: a Kubernetes
    Secret can provide it as it is, with no URL-encoding and no password in the ConfigMap.
    Sentinels with a password of their own take ``sentinel_password`` (and
    ``sentinel_username``) from the URL's query or ``REDIS_SENTINEL_PASSWORD``.
    """
    target = RedisTarget.parse(url)
    secrets = RedisSecrets()
    password = secrets.redis_password and secrets.redis_password.get_secret_value()
    if password and "password" not in options and not urlsplit(url).password:
        options["password"] = password
    # No per-command socket timeout: on Python 3.11 redis-py wraps every read and write in
    # asyncio.wait_for for it, a Task per command (17% of single-step throughput,
    # docs/benchmarks.md). Dead connections are found by TCP keepalive instead.
    common: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": options.pop("socket_timeout", None),
        "socket_keepalive": True,
        "socket_keepalive_options": options.pop("socket_keepalive_options", KEEPALIVE),
        "socket_connect_timeout": options.pop("socket_connect_timeout", 5.0),
        "health_check_interval": options.pop("health_check_interval", 30),
    }
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)
    size = max_connections or 64
    if target.topology == "cluster":
        return _cluster(target, size, retry, {**common, **target.options, **options})
    if target.topology == "sentinel":
        return _sentinel(target, size, retry, {**common, **target.options, **options})
    # A blocking pool: past max_connections a caller waits for a free connection instead of
    # failing (a burst of concurrent starts must not error out).
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        max_connections=size,
        timeout=None,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **common,
        **options,
    )
    pool.connection_class = FAST_CONNECTIONS.get(pool.connection_class, pool.connection_class)
    return aredis.Redis.from_pool(pool)


def _sentinel(
    target: RedisTarget, size: int, retry: Retry, options: dict[str, Any]
) -> aredis.Redis:
    tls = options.pop("connection_class", None) is aredis.SSLConnection
    sentinel_options = {
        key: options[key]
        for key in options
        if key.startswith(("socket_", "ssl_")) or key == "decode_responses"
    }
    if tls:
        sentinel_options["ssl"] = True
    from_env = RedisSecrets().redis_sentinel_password
    sentinel_password = options.pop("sentinel_password", None) or (
        from_env and from_env.get_secret_value()
    )
    if sentinel_password:
        sentinel_options["password"] = sentinel_password
    sentinel_username = options.pop("sentinel_username", None)
    if sentinel_username:
        sentinel_options["username"] = sentinel_username
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call, unused-ignore]
    connection = SentinelManagedSSLConnection if tls else SentinelManagedConnection
    client: aredis.Redis = sentinel.master_for(
        target.master,
        redis_class=aredis.Redis,
        connection_pool_class=BlockingSentinelPool,
        connection_class=FAST_CONNECTIONS.get(connection, connection),
        max_connections=size,
        timeout=None,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **options,
    )
    return client


def _cluster(target: RedisTarget, size: int, retry: Retry, options: dict[str, Any]) -> RedisCluster:
    if options.pop("connection_class", None) is aredis.SSLConnection:
        options["ssl"] = True
    options.pop("db", None)
    # A failover takes the cluster's node timeout and then some: MOVED, TRYAGAIN and
    # CLUSTERDOWN are retried here (with the slots re-read) for about 3 s, longer outages
    # reach the engine, which backs off and tries again.
    cluster_retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=8)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        # per node: a command that finds every connection taken fails instead of waiting,
        # so the bound is generous (the engine's own concurrency bounds the real number)
        max_connections=max(size, 256),
        retry=cluster_retry,
        **options,
    )
    # hiredis packing for every node's connections, as for one server (RedisCluster takes no
    # connection class: it picks plain or TLS itself, and the nodes it finds copy these kwargs)
    manager = client.nodes_manager
    plain = manager.connection_kwargs["connection_class"]
    fast = FAST_CONNECTIONS.get(plain, plain)
    manager.connection_kwargs["connection_class"] = fast
    for node in manager.startup_nodes.values():
        node.connection_class = fast
    return client


def is_cluster(redis: Any) -> bool:
    """Whether ``redis`` is a Cluster client (keys of different slots need separate calls)."""
    return isinstance(redis, RedisCluster)
