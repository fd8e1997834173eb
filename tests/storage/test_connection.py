"""The connection factory: URL checks, hiredis command packing, a blocking pool."""

from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError

from conveyor import ConfigurationError
from conveyor.embedded import EmbeddedRedis
from conveyor.storage.connection import (
    BlockingSentinelPool,
    HiredisConnection,
    HiredisSentinelConnection,
    HiredisSentinelSSLConnection,
    HiredisSSLConnection,
    RedisTarget,
    connect,
    is_cluster,
)


def test_unsupported_url() -> None:
    with pytest.raises(ConfigurationError, match="unsupported Redis URL 'http://x'"):
        connect("http://x")


async def test_hiredis_packing_round_trips_every_argument_kind(redis7: EmbeddedRedis) -> None:
    r = connect(redis7.url, max_connections=2)
    assert r.connection_pool.connection_class is HiredisConnection
    try:
        values = {"text": "héllo ✓", "bytes": b"\x00\xff raw", "int": 42, "float": 1.5}
        await r.hset("conn-test", mapping=values)  # type: ignore[arg-type]
        got = await r.hgetall("conn-test")
        assert got == {
            b"text": "héllo ✓".encode(),
            b"bytes": b"\x00\xff raw",
            b"int": b"42",
            b"float": b"1.5",
        }
        sha = await r.script_load("return 1")  # a two-word command name
        assert await r.evalsha(sha, 0) == 1
    finally:
        await r.delete("conn-test")
        await r.aclose()


def test_no_per_command_timeout_but_keepalive_probing(redis7: EmbeddedRedis) -> None:
    r = connect(redis7.url)
    kwargs = r.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] is None and kwargs["socket_keepalive"] is True
    assert kwargs["socket_keepalive_options"]  # dead peers found in ~25 s, not hours


async def test_redis_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REDIS_PASSWORD is used as it is (no URL-encoding) when the URL has no password; one
    in the URL wins."""
    secret = "p@ss:w/rd %"  # would need encoding inside a URL
    with EmbeddedRedis(tmp_path, appendonly=False, extra_args=["--requirepass", secret]) as server:
        bare = connect(server.url)
        with pytest.raises(AuthenticationError):
            await bare.ping()
        await bare.aclose()
        monkeypatch.setenv("REDIS_PASSWORD", secret)
        authed = connect(server.url)
        assert await authed.ping()
        await authed.aclose()
        wrong = connect(server.url.replace("redis://", "redis://:nope@"))
        with pytest.raises(AuthenticationError):
            await wrong.ping()  # the URL's password, not the variable's
        await wrong.aclose()


# -- one factory, every topology ---------------------------------------------------------


def test_sentinel_url_form() -> None:
    target = RedisTarget.parse(
        "redis+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380/mymaster/2"
        "?sentinel_password=sp&socket_connect_timeout=2"
    )
    assert target.topology == "sentinel" and target.master == "mymaster"
    assert target.hosts == (("10.0.0.1", 26379), ("::1", 26380))
    assert target.options["username"] == "app" and target.options["password"] == "s@cret"
    assert target.options["db"] == 2 and target.options["socket_connect_timeout"] == 2.0
    assert target.options["sentinel_password"] == "sp"


def test_cluster_and_tls_url_forms() -> None:
    target = RedisTarget.parse(
        "rediss+cluster://:pw@a:7000,b:7001?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
        "&ssl_keyfile=/c.key"
    )
    assert target.topology == "cluster" and target.hosts == (("a", 7000), ("b", 7001))
    assert target.options["password"] == "pw"
    assert target.options["ssl_ca_certs"] == "/ca.pem"
    assert target.options["ssl_certfile"] == "/c.pem" and target.options["ssl_keyfile"] == "/c.key"
    client = connect("rediss+cluster://a:7000?ssl_ca_certs=/ca.pem")
    assert is_cluster(client)
    kwargs = client.nodes_manager.connection_kwargs
    assert kwargs["connection_class"] is HiredisSSLConnection  # TLS, packed by hiredis
    assert kwargs["ssl_ca_certs"] == "/ca.pem"
    assert kwargs["socket_timeout"] is None  # the same no-per-command-timeout rule


def test_a_sentinel_client_uses_a_blocking_sentinel_pool() -> None:
    client = connect("redis+sentinel://127.0.0.1:1/m", max_connections=7)
    pool = client.connection_pool
    assert isinstance(pool, BlockingSentinelPool) and pool.max_connections == 7
    assert pool.connection_class is HiredisSentinelConnection
    assert pool.service_name == "m"
    tls = connect("rediss+sentinel://127.0.0.1:1/m?ssl_ca_certs=/x").connection_pool
    assert tls.connection_class is HiredisSentinelSSLConnection
    assert tls.connection_kwargs["ssl_ca_certs"] == "/x"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:1", "expected redis\\+sentinel://host:port,host:port/master-name"),
        ("redis+sentinel://h:1/m/x", "master-name"),
        ("redis+cluster://h:1/3", "a Cluster has only database 0"),
        ("redis+cluster://h", "'h' is not host:port"),
        ("redis+cluster://", "names no host"),
        ("redis+cluster://h:1?socket_timeout=x", "Invalid value for 'socket_timeout'"),
    ],
)
def test_bad_topology_urls_are_readable(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        connect(url)


async def test_password_from_the_environment_reaches_every_topology(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "s3nt")
    cluster = connect("redis+cluster://h:1")
    assert cluster.nodes_manager.connection_kwargs["password"] == "p@ss"
    sentinel = connect("redis+sentinel://127.0.0.1:1/m")
    assert sentinel.connection_pool.connection_kwargs["password"] == "p@ss"
    manager = sentinel.connection_pool.sentinel_manager
    assert manager.sentinels[0].connection_pool.connection_kwargs["password"] == "s3nt"
    await sentinel.aclose()
