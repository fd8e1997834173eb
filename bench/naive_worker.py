"""Baseline: the simplest Redis Streams worker, for comparison with bench/throughput.py.

One asyncio consumer in one consumer group, no retries, no state, no dead letters:

    loop: XREADGROUP COUNT 1 -> (no-op job) -> XACK        (2 round trips per job)

``--state`` adds an HSET of a per-job state hash before the XACK, as the reference
article's worker does (3 round trips per job). ``--count`` reads more than one entry per
XREADGROUP (the ACKs stay one at a time). ``--xdel`` deletes each entry after its ACK, as
Conveyor does (one more round trip).

The N jobs are added first with pipelined XADDs (not timed), then the drain is timed.
It starts its own redis-server on a free loopback port unless ``--redis-url`` is given,
and uses a unique key prefix.

    python bench/naive_worker.py --n 20000
    python bench/naive_worker.py --n 20000 --state
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
import uuid
from typing import Any

import redis.asyncio as aredis

from conveyor.embedded import EmbeddedRedis


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def redis_cpu(r: aredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def preload(r: aredis.Redis, stream: str, n: int) -> None:
    payload = json.dumps({"workflow": "naive", "input": None})
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.xadd(stream, {"job_id": str(i), "payload": payload})
        await pipe.execute()


async def drain(r: aredis.Redis, args: argparse.Namespace, stream: str, prefix: str) -> int:
    group, consumer = "workers", "naive-1"
    done = 0
    while done < args.n:
        reply = await r.xreadgroup(group, consumer, {stream: ">"}, count=args.count, block=100)
        if not reply:
            continue
        for _stream, entries in reply:
            for entry_id, fields in entries:
                # the "job": nothing
                if args.state:
                    await r.hset(f"{prefix}:state:{fields[b'job_id'].decode()}", "status", "done")
                await r.xack(stream, group, entry_id)
                if args.xdel:
                    await r.xdel(stream, entry_id)
                done += 1
    return done


async def run_once(url: str, args: argparse.Namespace) -> dict[str, Any]:
    r = aredis.Redis.from_url(url)
    prefix = f"naive-{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:tasks"
    try:
        await r.xgroup_create(stream, "workers", id="0", mkstream=True)
        await preload(r, stream, args.n)
        cpu0, rcpu0 = process_cpu(), await redis_cpu(r)
        t0 = time.perf_counter()
        done = await drain(r, args, stream, prefix)
        elapsed = time.perf_counter() - t0
        cpu, rcpu = process_cpu() - cpu0, await redis_cpu(r) - rcpu0
        return {
            "jobs": done,
            "seconds": elapsed,
            "jobs_per_s": done / elapsed,
            "py_cpu_us_per_job": cpu / done * 1e6,
            "redis_cpu_us_per_job": rcpu / done * 1e6,
        }
    finally:
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await r.unlink(*keys[i : i + 1000])
        await r.aclose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Naive one-command-per-round-trip Redis Streams worker (baseline).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting a private one")
    p.add_argument("--n", type=int, default=20_000, help="jobs to drain")
    p.add_argument("--count", type=int, default=1, help="XREADGROUP COUNT")
    p.add_argument("--state", action="store_true", help="HSET a state hash per job")
    p.add_argument("--xdel", action="store_true", help="XDEL each entry after its XACK")
    p.add_argument("--repeat", type=int, default=1, help="runs (a fresh stream each)")
    p.add_argument("--json", action="store_true", help="print results as JSON only")
    return p.parse_args(argv)


async def run(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    return [await run_once(url, args) for _ in range(args.repeat)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = None
    try:
        if args.redis_url:
            url = args.redis_url
        else:
            server = EmbeddedRedis(appendonly=False).start()
            url = server.url
        runs = asyncio.run(run(url, args))
    finally:
        if server is not None:
            server.close()
    if args.json:
        json.dump({"args": vars(args), "runs": runs}, sys.stdout, indent=2)
        print()
        return 0
    trips = 2 + int(args.state) + int(args.xdel)
    print(
        f"naive worker: XREADGROUP COUNT {args.count}"
        f"{' + HSET' if args.state else ''} + XACK{' + XDEL' if args.xdel else ''} "
        f"per job (~{trips if args.count == 1 else trips - 1 + 1 / args.count:g} round trips)"
    )
    print(
        f"{'run':>3} {'jobs':>7} {'seconds':>8} {'jobs/s':>9} {'py us/job':>10} "
        f"{'redis us/job':>13}"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"{i:>3} {r['jobs']:>7} {r['seconds']:>8.2f} {r['jobs_per_s']:>9,.0f} "
            f"{r['py_cpu_us_per_job']:>10.1f} {r['redis_cpu_us_per_job']:>13.1f}"
        )
    if len(runs) > 1:
        rates = [r["jobs_per_s"] for r in runs]
        print(f"median {statistics.median(rates):,.0f} jobs/s, best {max(rates):,.0f} jobs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
