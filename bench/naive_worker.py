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
import json
import statistics
import sys
import time
from typing import Any

import redis.asyncio as aredis
from common import RedisMeter, delete_namespace, new_namespace, process_cpu, run_main


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
    prefix = new_namespace("naive")
    stream = f"{prefix}:tasks"
    meter = RedisMeter(r)
    try:
        await r.xgroup_create(stream, "workers", id="0", mkstream=True)
        await preload(r, stream, args.n)
        cpu0 = process_cpu()
        await meter.start()
        t0 = time.perf_counter()
        done = await drain(r, args, stream, prefix)
        elapsed = time.perf_counter() - t0
        cpu, rcpu = process_cpu() - cpu0, (await meter.stop())["cpu_s"]
        return {
            "jobs": done,
            "seconds": elapsed,
            "jobs_per_s": done / elapsed,
            "py_cpu_us_per_job": cpu / done * 1e6,
            "redis_cpu_us_per_job": rcpu / done * 1e6,
        }
    finally:
        await delete_namespace(r, prefix)
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


async def run(args: argparse.Namespace, url: str, version: str) -> dict[str, Any]:
    return {"args": vars(args), "runs": [await run_once(url, args) for _ in range(args.repeat)]}


def report(result: dict[str, Any]) -> None:
    args, runs = argparse.Namespace(**result["args"]), result["runs"]
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


def main(argv: list[str] | None = None) -> int:
    return run_main(parse_args(argv), run, report=report)


if __name__ == "__main__":
    sys.exit(main())
