"""conveyor.testing: what users' own tests use."""

import socket

import pytest

from conveyor import App, AsyncClient, Workflow, embedded
from conveyor.errors import ConfigurationError
from conveyor.testing import embedded_redis, run_until_idle


async def test_embedded_redis_and_run_until_idle() -> None:
    wf = Workflow("mine")

    @wf.step(retries=1, backoff=0.01)
    def step(ctx, x):
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return x * 3

    with embedded_redis() as url:
        app = App([wf], redis_url=url, partitions=2)
        async with AsyncClient(app=app) as client:
            wf_id = await client.start("mine", 5)
            stats = await run_until_idle(app)
            assert (stats.completed, stats.retried) == (1, 1)
            assert await client.result(wf_id, timeout=1) == 15


def test_embedded_redis_moves_off_a_port_taken_before_it_binds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port picked for a server can be taken by another process before the server binds
    it: the first start then picks another port instead of failing."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real = embedded.free_port
        monkeypatch.setattr(embedded, "free_port", lambda: next(picks, None) or real())
        server = embedded.EmbeddedRedis(appendonly=False)
        assert server.port == taken
        with server:
            assert server.port != taken
            assert embedded.EmbeddedRedis(port=server.port, appendonly=False)._may_move is False
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.sendall(b"PING\r\n")
                assert s.recv(16).startswith(b"+PONG")


def test_embedded_redis_on_a_given_port_that_is_taken_fails_clearly() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = embedded.EmbeddedRedis(port=squatter.getsockname()[1], appendonly=False)
        with pytest.raises(ConfigurationError, match="Address already in use"):
            server.start()
        server.stop()
