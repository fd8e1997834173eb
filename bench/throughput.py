"""Throughput and latency benchmark of one Conveyor worker process.

Scenarios (each in a fresh namespace):

  single   N no-op single-step workflows are started first (not timed), then one worker
           drains them: workflows/s and step transitions/s.
  three    the same with N no-op three-step workflows (3 transitions each).
  latency  a producer starts single-step workflows at a fixed rate while a worker runs;
           end-to-end latency percentiles, measured two ways (see below).

By default it starts its own ``redis-server`` on a free loopback port (no AOF, no RDB), so
it never touches the Redis on 6379; ``--redis-url`` points it at another one instead (keys
are then removed at the end).

Latency is measured two ways:

  recorded   WorkflowStatus.finished_at - created_at, both stamped in Redis hashes in whole
             milliseconds (created_at by the client before its start call, finished_at by
             the worker when the step returned, before the commit), read back with
             client.status after the run. Resolution: 1 ms.
  observed   perf_counter from just before client.start() to the moment the producer
             process receives the workflow's id on the partition's "finished" pub/sub
             channel (one extra connection subscribed to all partitions). Resolution: us.

Examples:

  python bench/throughput.py                        # everything, default sizes
  python bench/throughput.py --only single --n 50000 --concurrency 256
  python bench/throughput.py --only latency --rate 500 --seconds 5 --worker-process
  python bench/throughput.py --profile              # scenario "single" under cProfile
  python bench/throughput.py --only single --trace  # with a span per step (dropped)
  python bench/throughput.py --json > result.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from common import (
    RedisMeter,
    delete_namespace,
    describe,
    machine_info,
    new_namespace,
    print_profile,
    process_cpu,
    profile_report,
    run_main,
    source_info,
    summarize,
    wait_for_count,
)

from conveyor import App, AsyncClient, Worker, Workflow
from conveyor.storage.connection import connect

# -- the workflows --------------------------------------------------------------------------


async def noop(ctx: Any, value: Any = None) -> Any:
    return value


async def first(ctx: Any, value: Any = None) -> Any:
    return value


async def second(ctx: Any, value: Any = None) -> Any:
    return value


async def third(ctx: Any, value: Any = None) -> Any:
    return value


def build_app(redis_url: str, namespace: str, partitions: int) -> App:
    single = Workflow("bench_single")
    single.step(noop, start=True)
    three = Workflow.pipeline("bench_three", [first, second, third])
    return App(
        workflows=[single, three], redis_url=redis_url, namespace=namespace, partitions=partitions
    )


@dataclass
class DrainResult:
    scenario: str
    workflows: int
    steps_per_workflow: int
    concurrency: int
    partitions: int
    preload_s: float
    preload_per_s: float
    drain_s: float
    workflows_per_s: float
    transitions_per_s: float
    worker_cpu_s: float
    redis_cpu_s: float
    commit_batches: int
    redis_commands: dict[str, Any] = field(default_factory=dict)

    @property
    def per_workflow_us(self) -> dict[str, float]:
        n = self.workflows
        return {
            "wall": self.drain_s / n * 1e6,
            "worker_cpu": self.worker_cpu_s / n * 1e6,
            "redis_cpu": self.redis_cpu_s / n * 1e6,
        }


async def preload(client: AsyncClient, workflow: str, n: int, concurrency: int) -> float:
    """Start ``n`` workflows, ``concurrency`` at a time; returns the seconds it took."""
    t0 = time.perf_counter()
    done = 0
    while done < n:
        chunk = min(concurrency, n - done)
        await asyncio.gather(*(client.start(workflow, None) for _ in range(chunk)))
        done += chunk
    return time.perf_counter() - t0


async def drain_scenario(
    args: argparse.Namespace,
    redis_url: str,
    workflow: str,
    steps: int,
    profiler: cProfile.Profile | None = None,
) -> DrainResult:
    namespace = new_namespace(workflow)
    app = build_app(redis_url, namespace, args.partitions)
    client = AsyncClient(app=app)
    meter_conn = connect(redis_url)
    try:
        # A first worker start creates the streams and groups (not timed).
        async with Worker(app, concurrency=args.concurrency):
            pass
        preload_s = await preload(client, workflow, args.n, args.preload_concurrency)
        worker = Worker(app, concurrency=args.concurrency, batch_size=args.batch_size)
        expected = args.n * steps
        meter = RedisMeter(meter_conn)
        await meter.start()
        cpu0 = process_cpu()
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        await worker.start()
        await wait_for_count(worker.stats, expected)
        drain_s = time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
        cpu = process_cpu() - cpu0
        redis_cost = await meter.stop()
        await worker.stop()
        stats = worker.stats
        if stats.completed != expected or stats.errors or stats.duplicates or stats.dead:
            raise RuntimeError(f"unexpected worker stats: {stats} (expected {expected})")
        return DrainResult(
            scenario=workflow.removeprefix("bench_"),
            workflows=args.n,
            steps_per_workflow=steps,
            concurrency=args.concurrency,
            partitions=args.partitions,
            preload_s=preload_s,
            preload_per_s=args.n / preload_s,
            drain_s=drain_s,
            workflows_per_s=args.n / drain_s,
            transitions_per_s=expected / drain_s,
            worker_cpu_s=cpu,
            redis_cpu_s=redis_cost["cpu_s"],
            commit_batches=stats.batches,
            redis_commands=redis_cost["commands"],
        )
    finally:
        await client.close()
        if args.redis_url:
            await delete_namespace(meter_conn, namespace)
        await meter_conn.aclose()


# -- latency --------------------------------------------------------------------------------


def _worker_child(redis_url: str, namespace: str, partitions: int, concurrency: int) -> None:
    """Entry point of the worker process of the latency scenario (stopped by SIGTERM)."""
    from conveyor.worker.process import WorkerOptions, serve

    app = build_app(redis_url, namespace, partitions)
    asyncio.run(serve(app, WorkerOptions(concurrency=concurrency, drain_timeout=5.0)))


class FinishListener:
    """Records when each workflow id is announced on its partition's finished channel."""

    def __init__(self, redis: Any, client: AsyncClient) -> None:
        keys = client.store.keys
        self.channels = [keys.finished_channel(p) for p in range(keys.partitions)]
        self.pubsub = redis.pubsub()
        self.seen: dict[bytes, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.subscribe(*self.channels)
        # wait for the subscribe confirmations so no announcement is missed
        confirmed = 0
        while confirmed < len(self.channels):
            msg = await self.pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "subscribe":
                confirmed += 1
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        now = time.perf_counter
        seen = self.seen
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                seen[msg["data"]] = now()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.pubsub.aclose()


async def paced_run(
    client: AsyncClient, rate: float, seconds: float
) -> tuple[list[tuple[str, float, float]], float, int]:
    """Start workflows at ``rate``/s for ``seconds`` (open loop: each start is its own task,
    so a slow start does not delay the next). Returns (id, t_before_start, t_started) per
    workflow, the achieved start rate, and how many starts raised."""
    total = int(rate * seconds)
    interval = 1.0 / rate
    out: list[tuple[str, float, float]] = []

    async def one() -> None:
        t = time.perf_counter()
        wid = await client.start("bench_single", None)
        out.append((wid, t, time.perf_counter()))

    tasks = []
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = sum(isinstance(r, BaseException) for r in results)
    return out, total / (time.perf_counter() - t0), errors


async def latency_scenario(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    namespace = new_namespace("latency")
    app = build_app(redis_url, namespace, args.partitions)
    client = AsyncClient(app=app)
    conn = connect(redis_url)
    child: multiprocessing.process.BaseProcess | None = None
    worker: Worker | None = None
    listener = FinishListener(conn, client)
    try:
        if args.worker_process:
            ctx = multiprocessing.get_context("spawn")
            child = ctx.Process(
                target=_worker_child,
                args=(redis_url, namespace, args.partitions, args.concurrency),
                name="bench-worker",
            )
            child.start()
            while not await conn.exists(client.store.keys.registry):
                if not child.is_alive():
                    raise RuntimeError("the worker process died at start")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # its loops start right after it registers
        else:
            worker = Worker(app, concurrency=args.concurrency, batch_size=args.batch_size)
            await worker.start()
        await listener.start()

        # warm-up (not counted): a few sequential starts first, so the client has checked
        # the partition count and holds a connection before starts overlap, then a second
        # of paced load for connections, script cache and code paths
        for _ in range(5):
            await client.start("bench_single", None)
        warm, _, _ = await paced_run(client, args.rate, min(1.0, args.seconds))
        await wait_seen(listener, [w for w, _, _ in warm])

        meter = RedisMeter(conn)
        await meter.start()
        runs, achieved, errors = await paced_run(client, args.rate, args.seconds)
        await wait_seen(listener, [w for w, _, _ in runs])
        redis_cost = await meter.stop()

        observed = [(listener.seen[w.encode()] - t) * 1000 for w, t, _ in runs]
        start_rtt = [(t1 - t) * 1000 for _, t, t1 in runs]
        recorded: list[float] = []
        ids = [w for w, _, _ in runs]
        for i in range(0, len(ids), 64):
            statuses = await asyncio.gather(*(client.status(w) for w in ids[i : i + 64]))
            for st in statuses:
                if st.status != "completed" or not st.finished_at or not st.created_at:
                    raise RuntimeError(f"workflow {st.id} is {st.status}")
                recorded.append((st.finished_at - st.created_at).total_seconds() * 1000)
        return {
            "scenario": "latency",
            "rate": args.rate,
            "achieved_rate": achieved,
            "seconds": args.seconds,
            "workflows": len(runs),
            "start_errors": errors,
            "concurrency": args.concurrency,
            "partitions": args.partitions,
            "worker": "separate process" if args.worker_process else "same process as producer",
            "recorded_ms": summarize(recorded),
            "observed_ms": summarize(observed),
            "start_rtt_ms": summarize(start_rtt),
            "redis_cpu_s": redis_cost["cpu_s"],
            "redis_commands": redis_cost["commands"],
        }
    finally:
        await listener.stop()
        if worker is not None:
            worker.request_stop()
            await worker.stop()
        if child is not None and child.pid:
            os.kill(child.pid, signal.SIGTERM)
            child.join(10)
        await client.close()
        if args.redis_url:
            await delete_namespace(conn, namespace)
        await conn.aclose()


async def wait_seen(listener: FinishListener, ids: list[str], timeout: float = 60.0) -> None:
    wanted = [w.encode() for w in ids]
    deadline = time.monotonic() + timeout
    while not all(w in listener.seen for w in wanted):
        if time.monotonic() > deadline:
            missing = sum(w not in listener.seen for w in wanted)
            raise RuntimeError(f"{missing} workflows did not finish within {timeout:.0f}s")
        await asyncio.sleep(0.01)


# -- output ---------------------------------------------------------------------------------


def print_drain(results: list[DrainResult]) -> None:
    head = (
        f"{'scenario':<8} {'n':>7} {'conc':>5} {'parts':>5} {'start/s':>9} {'drain s':>8} "
        f"{'wf/s':>9} {'steps/s':>9} {'us/wf':>7} {'py cpu':>7} {'redis':>7} {'batch':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        per = r.per_workflow_us
        avg_batch = r.workflows * r.steps_per_workflow / max(1, r.commit_batches)
        print(
            f"{r.scenario:<8} {r.workflows:>7} {r.concurrency:>5} {r.partitions:>5} "
            f"{r.preload_per_s:>9,.0f} {r.drain_s:>8.2f} {r.workflows_per_s:>9,.0f} "
            f"{r.transitions_per_s:>9,.0f} {per['wall']:>7.1f} {per['worker_cpu']:>7.1f} "
            f"{per['redis_cpu']:>7.1f} {avg_batch:>6.1f}"
        )
    print(
        "  start/s: AsyncClient.start rate during the (untimed) pre-load; us/wf: drain wall "
        "time per workflow;\n  py cpu / redis: CPU microseconds per workflow in this process "
        "/ in redis-server; batch: transitions per commit pipeline"
    )
    by_scenario: dict[str, list[DrainResult]] = defaultdict(list)
    for r in results:
        by_scenario[r.scenario].append(r)
    for name, runs in by_scenario.items():
        if len(runs) > 1:
            rates = [r.workflows_per_s for r in runs]
            cpu = [r.per_workflow_us["worker_cpu"] for r in runs]
            print(
                f"  {name}: {len(runs)} runs, median {statistics.median(rates):,.0f} wf/s, best "
                f"{max(rates):,.0f} wf/s, median worker CPU {statistics.median(cpu):.1f} us/wf"
            )
    for r in results[:1] + [r for r in results[1:] if r.scenario != results[0].scenario][:1]:
        cmds = sorted(r.redis_commands.items(), key=lambda kv: -kv[1]["usec"])
        print(
            f"  redis commands during the '{r.scenario}' drain (evalsha time includes the "
            "commands its scripts run, which are also listed under their own names):"
        )
        for name, c in cmds[:8]:
            print(
                f"    {name:<12} calls/wf={c['calls'] / r.workflows:>6.2f} "
                f"usec/call={c['usec'] / c['calls']:>8.2f} usec/wf={c['usec'] / r.workflows:>6.1f}"
            )


def print_latency(res: dict[str, Any]) -> None:
    print(
        f"latency: {res['workflows']} single-step workflows at {res['rate']:g}/s "
        f"(achieved {res['achieved_rate']:.0f}/s, {res['start_errors']} failed starts) for "
        f"{res['seconds']:g}s; worker in "
        f"{res['worker']}, concurrency {res['concurrency']}, {res['partitions']} partitions"
    )
    head = f"  {'measure (ms)':<44} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}"
    print(head)
    rows = [
        ("recorded: finished_at - created_at (1 ms res.)", res["recorded_ms"]),
        ("observed: before start() -> finished pub/sub", res["observed_ms"]),
        ("start() round trip (for reference)", res["start_rtt_ms"]),
    ]
    for label, s in rows:
        print(f"  {label:<44} {s['p50']:>7.3f} {s['p90']:>7.3f} {s['p99']:>7.3f} {s['max']:>7.3f}")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Conveyor worker throughput and latency benchmark.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting a private one")
    p.add_argument("--n", type=int, default=20_000, help="workflows per throughput scenario")
    p.add_argument("--concurrency", type=int, default=64, help="worker concurrency")
    p.add_argument("--batch-size", type=int, default=256, help="worker XREADGROUP COUNT")
    p.add_argument("--partitions", type=int, default=16, help="stream partitions per queue")
    p.add_argument(
        "--preload-concurrency", type=int, default=64, help="concurrent starts in the pre-load"
    )
    p.add_argument("--rate", type=float, default=500.0, help="latency: workflows started per s")
    p.add_argument("--seconds", type=float, default=5.0, help="latency: seconds of load")
    p.add_argument(
        "--worker-process",
        action="store_true",
        help="latency: run the worker in its own process (default: same process as producer)",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=["single", "three", "latency"],
        help="run only these scenarios (repeatable; default: all)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each throughput scenario")
    p.add_argument("--uvloop", action="store_true", help="use uvloop (must be installed)")
    p.add_argument(
        "--eager-tasks",
        action="store_true",
        help="Python 3.12+: asyncio.eager_task_factory on the loop (steps that finish without "
        "waiting never become scheduled tasks)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="tracing on: the OpenTelemetry SDK with a batch processor whose exporter drops "
        "the spans (what making and batching a span per step costs, not shipping them)",
    )
    p.add_argument("--profile", action="store_true", help="run scenario 'single' under cProfile")
    p.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    p.add_argument("--json", action="store_true", help="print results as JSON only")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, redis_url: str, redis_version: str) -> dict[str, Any]:
    if args.eager_tasks:
        factory = getattr(asyncio, "eager_task_factory", None)
        if factory is None:
            raise SystemExit("--eager-tasks needs Python 3.12 or newer")
        asyncio.get_running_loop().set_task_factory(factory)
    out: dict[str, Any] = {
        "machine": machine_info(redis_version),
        "conveyor": source_info(),
        "args": vars(args),
    }
    if not args.json:
        print(describe(out["machine"], out["conveyor"], " (eager tasks)" * args.eager_tasks))
    if args.profile:
        profiler = cProfile.Profile()
        result = await drain_scenario(args, redis_url, "bench_single", 1, profiler)
        report = profile_report(profiler, args.top)
        out["profile"] = {"result": asdict(result), **report}
        if not args.json:
            title = (
                f"profile of scenario 'single' ({result.workflows} workflows, "
                f"{result.workflows_per_s:,.0f} wf/s under the profiler)"
            )
            print_profile(title, report, result.workflows, "wf")
        return out
    scenarios = args.only or ["single", "three", "latency"]
    drains: list[DrainResult] = []
    for name, steps in (("single", 1), ("three", 3)):
        if name in scenarios:
            for _ in range(args.repeat):
                drains.append(await drain_scenario(args, redis_url, f"bench_{name}", steps))
    if drains:
        out["throughput"] = [{**asdict(r), "per_workflow_us": r.per_workflow_us} for r in drains]
        if not args.json:
            print()
            print_drain(drains)
    if "latency" in scenarios:
        res = await latency_scenario(args, redis_url)
        out["latency"] = res
        if not args.json:
            print()
            print_latency(res)
    return out


def trace_to_nowhere() -> None:
    """Install an SDK TracerProvider whose spans are batched and then dropped."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trace:
        trace_to_nowhere()
    return run_main(args, run)


if __name__ == "__main__":
    sys.exit(main())
