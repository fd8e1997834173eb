"""Throughput and idle latency of one worker process on each Redis topology, on this machine.

  server    one redis-server
  sentinel  a master with a replica, found through 3 Sentinels (redis+sentinel://)
  cluster   3 masters + 3 replicas (redis+cluster://): per-slot reads, polled when idle

For each: N three-step workflows are started (not timed), then one in-process worker drains
them (workflows/s); then single workflows are started one at a time on an idle worker and
their end-to-end time is taken from the client (p50/p99 ms), which shows what the Cluster's
polled reads cost when there is nothing to read. Every server runs without persistence, on
loopback ports of its own (never the Redis on 6379). All servers share this machine's
cores, so a Cluster (6 servers) is not faster here: this measures the client side.

  python bench/topologies.py                   # all three, N=10000
  python bench/topologies.py --only cluster --n 20000
  python bench/topologies.py --plain-connections   # without the hiredis command packer
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import percentile
from tests.topologies import LocalCluster, SentinelGroup

from conveyor import App, AsyncClient, Worker, Workflow
from conveyor.embedded import EmbeddedRedis
from conveyor.storage import connection


async def one(ctx: Any, n: int) -> int:
    return n + 1


async def two(ctx: Any, n: int) -> int:
    return n * 2


async def three(ctx: Any, n: int) -> int:
    return n - 1


@contextmanager
def topology(name: str) -> Iterator[str]:
    if name == "server":
        with EmbeddedRedis(appendonly=False) as server:
            yield server.url
    elif name == "sentinel":
        with SentinelGroup(appendonly=False) as group:
            yield group.url
    else:
        with LocalCluster(appendonly=False) as cluster:
            yield cluster.url


async def measure(url: str, n: int, samples: int) -> dict[str, float]:
    app = App(
        workflows=[Workflow.pipeline("bench", [one, two, three])],
        redis_url=url,
        namespace=f"bench-{uuid.uuid4().hex[:8]}",
    )
    client = AsyncClient(app=app)
    try:
        for start in range(0, n, 1000):
            await client.start_many("bench", list(range(start, min(n, start + 1000))))
        worker = Worker(app, concurrency=64)
        began = time.perf_counter()
        await worker.run(until_idle=True)
        drained = time.perf_counter() - began
        latencies = []
        async with Worker(app, concurrency=64):
            await asyncio.sleep(1.0)  # idle: a Cluster's reads have backed off to their longest
            for i in range(samples):
                t0 = time.perf_counter()
                wf_id = await client.start("bench", i)
                await client.result(wf_id, timeout=10)
                latencies.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.2)
        latencies.sort()
        return {
            "workflows_per_s": n / drained,
            "idle_p50_ms": statistics.median(latencies),
            "idle_p99_ms": percentile(latencies, 99),
        }
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["server", "sentinel", "cluster"], action="append")
    parser.add_argument("--n", type=int, default=10_000, help="three-step workflows to drain")
    parser.add_argument("--samples", type=int, default=30, help="idle latency samples")
    parser.add_argument("--plain-connections", action="store_true", help="no hiredis packer")
    args = parser.parse_args()
    if args.plain_connections:
        connection.FAST_CONNECTIONS.clear()  # connect() then keeps redis-py's own classes
    print(f"{'topology':<10} {'workflows/s':>12} {'idle p50 ms':>12} {'idle p99 ms':>12}")
    for name in args.only or ["server", "sentinel", "cluster"]:
        with topology(name) as url:
            result = asyncio.run(measure(url, args.n, args.samples))
        print(
            f"{name:<10} {result['workflows_per_s']:>12,.0f} {result['idle_p50_ms']:>12.1f}"
            f" {result['idle_p99_ms']:>12.1f}"
        )


if __name__ == "__main__":
    main()
