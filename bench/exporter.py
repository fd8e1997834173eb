"""Cost of one queue-exporter scrape with many partitions.

What it measures: the time of ``QueueExporter.render()`` (snapshot + Prometheus text) and of
the snapshot alone, over ``--scrapes`` scrapes after a warm-up, as p50, p99 and max;
the round trips per scrape (counted at the connection pool: one connection checkout per
command or pipeline, the same number the snapshot reports) and what Redis spent (INFO
commandstats: calls and microseconds, diffed); the size of the exposition. For comparison,
the same commands sent one at a time (one round trip each) are timed too.

Content (in a fresh namespace, ``--partitions`` partitions, queues ``default`` and ``llm``):

  default  per stream ``--entries`` tasks as the start script writes them (fields and a
           ~200-byte JSON input), of which ``--pending`` are delivered to one of 8
           consumers and not acknowledged: the PEL gives the oldest age
  llm      the same number of tasks, none delivered: the oldest age needs the second round
           trip (the first entry after the group's position)
  both     ``--delayed`` members in each delayed set
  plus     ``--dead`` dead letters per partition, ``--workers`` worker heartbeats, and a
           registry of two workflows (the exporter discovers the queues from it, as
           ``conveyor exporter`` does without ``--queue``)

Redis: its own ``redis-server`` on a free loopback port (no AOF, no RDB), never the one on
6379. The client runs in this process, on the same machine: a remote Redis adds its network
round-trip time once per round trip.

Examples:

  python bench/exporter.py                       # 64 partitions x 2 queues, 200 scrapes
  python bench/exporter.py --partitions 256 --scrapes 100
  python bench/exporter.py --json > result.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from typing import Any

from common import RedisMeter, run_main, summarize

from conveyor import codec
from conveyor.observability.queues import QueueExporter
from conveyor.settings import Settings
from conveyor.storage.connection import connect
from conveyor.storage.store import Store

QUEUES = ("default", "llm")
CONSUMERS = 8


class RoundTrips:
    """Counts connection checkouts of a client's pool: one per command or pipeline sent."""

    def __init__(self, redis: Any) -> None:
        self.count = 0
        pool = redis.connection_pool
        checkout = pool.get_connection

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await checkout(*args, **kwargs)

        pool.get_connection = counted


async def fill(store: Store, args: argparse.Namespace) -> None:
    """Realistic content: see the module docstring."""
    r, k, group = store.redis, store.keys, store.settings.group
    await store.ensure_groups(QUEUES)
    await store.register({
        "ingest": {"start": "parse", "queue": "default", "steps": {"parse": "default"}},
        "enrich": {"start": "fetch", "queue": "default",
                   "steps": {"fetch": "default", "score": "llm"}},
    })  # fmt: skip
    payload = codec.dumps({"user": "u-1234", "items": list(range(20)), "text": "x" * 100})
    now_ms = int(time.time() * 1000)
    for p in range(args.partitions):
        pipe = r.pipeline(transaction=False)
        for queue in QUEUES:
            for i in range(args.entries):
                pipe.xadd(k.stream(p, queue), {
                    "workflow_id": uuid.uuid4().hex, "workflow": "enrich", "step": "fetch",
                    "task": i, "attempt": 1, "input": payload, "state": b"{}", "frame": b"",
                })  # fmt: skip
            pipe.zadd(k.delayed(p, queue),
                      {f"task-{i}": now_ms + 1000 * i for i in range(args.delayed)})  # fmt: skip
        for _ in range(args.dead):
            letter = {"queue": "default", "workflow_id": uuid.uuid4().hex, "reason": "error"}
            pipe.xadd(k.dead(p), letter)
        await pipe.execute()
        per_consumer = max(1, args.pending // CONSUMERS)
        pipe = r.pipeline(transaction=False)
        for c in range(CONSUMERS):
            pipe.xreadgroup(group, f"worker-{c}", {k.stream(p, "default"): ">"}, count=per_consumer)
        await pipe.execute()
    pipe = r.pipeline(transaction=False)
    for w in range(args.workers):
        name = f"host-{w}-{os.getpid()}-{w:06x}"
        beat = {
            "name": name, "host": f"host-{w}", "pid": 1000 + w, "queues": list(QUEUES),
            "started_at": now_ms / 1000 - 3600, "seen_at": now_ms / 1000, "concurrency": 64,
            "in_flight": 12, "stats": {"completed": 123456, "failed": 12, "retried": 34},
            "latency": {"step": {"p50": 0.01, "p95": 0.05, "p99": 0.1, "count": 5000},
                        "workflow": {"p50": 0.4, "p95": 1.2, "p99": 2.0, "count": 1200}},
        }  # fmt: skip
        pipe.set(k.worker(name), codec.dumps(beat), ex=3600)
        pipe.zadd(k.workers, {name: now_ms})
    await pipe.execute()


async def unpipelined(store: Store) -> None:
    """The first round trip's commands, each awaited on its own: what pipelining saves."""
    r, k, settings = store.redis, store.keys, store.settings
    await r.time()
    for queue in QUEUES:
        for p in range(settings.partitions):
            await r.xlen(k.stream(p, queue))
            await r.xpending(k.stream(p, queue), settings.group)
            await r.xinfo_groups(k.stream(p, queue))
            await r.zcard(k.delayed(p, queue))
    for p in range(settings.partitions):
        await r.xlen(k.dead(p))


async def timed(action: Any, n: int) -> dict[str, float]:
    """``summarize`` of ``n`` awaited calls of ``action``, in ms."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await action()
        times.append((time.perf_counter() - started) * 1000)
    return summarize(times)


async def run(args: argparse.Namespace, url: str, version: str) -> dict[str, Any]:
    settings = Settings(redis_url=url, namespace=f"bench-exp-{uuid.uuid4().hex[:8]}",
                        partitions=args.partitions)  # fmt: skip
    redis = connect(url)
    store = Store(redis, settings)
    try:
        started = time.perf_counter()
        await fill(store, args)
        fill_s = time.perf_counter() - started
        exporter = QueueExporter(store)
        for _ in range(10):  # warm-up: discovery, connections
            await exporter.render()
        snap = await exporter.snapshot()
        body = await exporter.render()

        trips = RoundTrips(redis)
        meter = RedisMeter(redis)
        await meter.start()
        render = await timed(exporter.render, args.scrapes)
        cost = await meter.stop()
        render_trips = (trips.count - 4) / args.scrapes  # less the meter's four INFO calls
        snapshot = await timed(exporter.snapshot, args.scrapes)
        naive = await timed(lambda: unpipelined(store), max(5, args.scrapes // 10))
        calls = sum(c["calls"] for c in cost["commands"].values())
        usec = sum(c["usec"] for c in cost["commands"].values())
        return {
            "redis": version,
            "partitions": args.partitions,
            "streams": len(snap.streams),
            "fill_s": round(fill_s, 2),
            "scrapes": args.scrapes,
            "render": render,
            "snapshot": snapshot,
            "unpipelined_first_round_trip": naive,
            "round_trips_per_scrape": render_trips,
            "round_trips_reported": snap.round_trips,
            "redis_commands_per_scrape": calls / args.scrapes,
            "redis_usec_per_scrape": usec / args.scrapes,
            "exposition_bytes": len(body),
            "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        }
    finally:
        await redis.aclose()


def report(result: dict[str, Any]) -> None:
    def line(label: str, s: dict[str, float]) -> None:
        print(f"  {label:<34} p50 {s['p50']:7.2f} ms   p99 {s['p99']:7.2f} ms"
              f"   max {s['max']:7.2f} ms")  # fmt: skip

    print(f"queue exporter: {result['partitions']} partitions x {len(QUEUES)} queues = "
          f"{result['streams']} streams, Redis {result['redis']}, "
          f"{result['scrapes']} scrapes (filled in {result['fill_s']} s)")  # fmt: skip
    line("scrape (snapshot + exposition)", result["render"])
    line("snapshot only", result["snapshot"])
    line("same commands, one round trip each", result["unpipelined_first_round_trip"])
    print(f"  round trips per scrape             {result['round_trips_per_scrape']:.2f}"
          f" (snapshot reports {result['round_trips_reported']})")  # fmt: skip
    print(f"  Redis per scrape                   {result['redis_commands_per_scrape']:.0f}"
          f" commands, {result['redis_usec_per_scrape']:.0f} us of command time")  # fmt: skip
    print(f"  exposition                         {result['series']} series, "
          f"{result['exposition_bytes']} bytes")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--partitions", type=int, default=64, help="stream partitions per queue")
    p.add_argument("--scrapes", type=int, default=200, help="scrapes timed")
    p.add_argument("--entries", type=int, default=500, help="tasks per stream")
    p.add_argument("--pending", type=int, default=100, help="delivered, unacked per stream")
    p.add_argument("--delayed", type=int, default=50, help="delayed tasks per set")
    p.add_argument("--dead", type=int, default=20, help="dead letters per partition")
    p.add_argument("--workers", type=int, default=16, help="worker heartbeats")
    p.add_argument("--json", action="store_true", help="print results as JSON only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(parse_args(argv), run, report=report)


if __name__ == "__main__":
    sys.exit(main())
