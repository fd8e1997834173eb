"""The connection factory: URL checks, hiredis command packing, a blocking pool."""

from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError

from conveyor import ConfigurationError
from conveyor.embedded import EmbeddedRedis
from conveyor.storage.connection import HiredisConnection, connect


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
