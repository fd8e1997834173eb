"""Helpers for testing your own workflows against a real Redis (no fakes: your tests run
Conveyor's real Lua transitions).

    from conveyor.testing import embedded_redis, run_until_idle

    def test_my_pipeline():
        with embedded_redis() as url:
            app = App([my_workflow], redis_url=url)
            client = Client(app=app)
            wf_id = client.start("my_workflow", {...})
            asyncio.run(run_until_idle(app))
            assert client.result(wf_id) == ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .app import App
from .embedded import EmbeddedRedis
from .worker import Stats, Worker


@contextmanager
def embedded_redis(**options: Any) -> Iterator[str]:
    """Start a throwaway redis-server on a free loopback port; yields its URL."""
    with EmbeddedRedis(appendonly=options.pop("appendonly", False), **options) as server:
        yield server.url


async def run_until_idle(app: App, **worker_options: Any) -> Stats:
    """Run a worker until every queue of ``app`` is empty (retries included); returns its
    counters (completed, retried, dead, ...)."""
    options = {"block_ms": 50, "promote_interval": 0.02, **worker_options}
    return await Worker(app, **options).run(until_idle=True)
