"""Flow-control benchmark: fan-out/fan-in, signals, child workflows, the step-result cache and
micro-batching, each drained by one in-process ``conveyor.Worker``.

Scenarios (each run in a fresh namespace; the starts are made first and not timed):

  fanout    W workflows each fan out N items to a trivial async branch step, joined once;
            branch tasks/s, and every join's list is checked against the items, in order.
  signals   S workflows are started and parked in wait("go") by a running worker (not timed);
            then every signal is sent (AsyncClient.signal, --send-concurrency at a time) and
            the clock runs until every workflow has resumed and finished: signals/s end to end.
  children  C parents each start one child workflow (one trivial step) and resume with its
            result: parent workflows/s (3 tasks per parent: spawn, the child's step, collect).
  cache     M single-step workflows of a cached step (cache_ttl) over K distinct inputs:
            completions/s and the hit ratio seen by the worker (worker.stats.cached / M).
  batch     B single-step workflows through a sync step with batch_size/batch_wait_ms, then
            the same B through the same step unbatched. The step stands for GPU inference:
            it calls a simulated device that runs one call at a time (a lock) and costs a
            fixed --call-ms per call (time.sleep; plus --item-ms per input), so batching
            amortises the per-call cost. Both rates are reported, with how busy the device
            was. With the default concurrency (64 = batch_size) only one batch is in flight.

Tasks counted: every step run the worker committed (fanout: split + N branches + join per
workflow; signals: the resumed step only; children: 3 per parent; cache, batch: 1 each).
--block-ms is the worker's XREADGROUP BLOCK: when fewer slots are free than there are
partitions, the reader blocks on a subset of the streams, and an empty subset stalls it for up
to that long while other partitions still hold tasks (visible as outliers; --block-ms 50
shows the drain without most of it).

Every result is checked; a wrong one, or a task that errs, dies or runs twice, exits non-zero.
By default it starts its own ``redis-server`` like bench/throughput.py (--redis-url to use
another one; keys are then removed at the end).

Examples:

  python bench/flow.py                          # all scenarios, default sizes (~40 s)
  python bench/flow.py --quick                  # smaller sizes (~15 s)
  python bench/flow.py --only fanout --fanout-items 2000 --repeat 3
  python bench/flow.py --profile children       # one scenario under cProfile
  python bench/flow.py --json > flow.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
    wait_for_count,
)

from conveyor import (
    App,
    AsyncClient,
    BatchContext,
    ConveyorError,
    StepContext,
    Worker,
    Workflow,
    error_of,
    fan_out,
    is_timeout,
    start_child,
    wait,
)
from conveyor.storage.connection import connect
from conveyor.worker import Stats
from conveyor.workflow import FanOut, StartChild, Wait

SCENARIOS = ("fanout", "signals", "children", "cache", "batch")

#: option -> (default, --quick value)
SIZES: dict[str, tuple[int, int]] = {
    "fanout_workflows": (20, 10),
    "fanout_items": (500, 200),
    "signals": (2000, 500),
    "children": (2000, 500),
    "cache_workflows": (5000, 1000),
    "cache_inputs": (50, 50),
    "batch_workflows": (5000, 1000),
}


class BenchError(Exception):
    """A wrong result, an unexpected worker counter, or a drain that did not finish."""


Metrics = dict[str, float]


# -- shared pieces ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def namespace_for(
    args: argparse.Namespace, redis_url: str, label: str, workflows: list[Workflow]
) -> AsyncIterator[tuple[App, AsyncClient]]:
    """A fresh namespace with streams and groups created (by a first worker start, not
    timed), its app and a client; the keys are removed afterwards on a shared Redis."""
    namespace = new_namespace(label)
    app = App(
        workflows=workflows, redis_url=redis_url, namespace=namespace, partitions=args.partitions
    )
    client = AsyncClient(app=app)
    try:
        async with Worker(app, concurrency=args.concurrency):
            pass
        yield app, client
    finally:
        await client.close()
        if args.redis_url:
            conn = connect(redis_url)
            await delete_namespace(conn, namespace)
            await conn.aclose()


async def start_all(
    client: AsyncClient, workflow: str, inputs: Sequence[Any], concurrency: int
) -> list[str]:
    """Start one workflow per input, ``concurrency`` at a time; ids in input order."""
    ids: list[str] = []
    for i in range(0, len(inputs), concurrency):
        chunk = inputs[i : i + concurrency]
        ids += await asyncio.gather(*(client.start(workflow, x) for x in chunk))
    return ids


async def reach(stats: Stats, expected: int, timeout: float, what: str) -> None:
    """Wait until the worker has committed ``expected`` transitions in all."""
    try:
        await asyncio.wait_for(wait_for_count(stats, expected), timeout)
    except TimeoutError:
        raise BenchError(f"{what}: {stats} after {timeout:g}s, expected {expected}") from None


def check_stats(stats: Stats, expected: int, what: str) -> None:
    bad = stats.errors or stats.duplicates or stats.dead or stats.retried or stats.poison
    if stats.completed != expected or bad:
        raise BenchError(f"{what}: unexpected worker stats {stats} (expected {expected})")


async def check_results(
    client: AsyncClient, ids: list[str], expected: Sequence[Any], what: str
) -> None:
    """Every workflow completed with exactly its expected result (read back, not timed)."""
    for i in range(0, len(ids), 256):
        chunk = ids[i : i + 256]
        statuses = await asyncio.gather(*(client.status(w) for w in chunk))
        for st, want in zip(statuses, expected[i : i + 256], strict=True):
            if st.status != "completed" or st.result != want:
                got = repr(st.result)[:200]
                raise BenchError(
                    f"{what}: workflow {st.id} is {st.status} with {got}, expected "
                    f"{repr(want)[:200]}"
                )


class Timed:
    """The timed part of a scenario: wall clock, this process's CPU, redis-server's CPU and,
    with --profile, the profiler."""

    def __init__(self, redis_url: str, profiler: cProfile.Profile | None) -> None:
        self.conn = connect(redis_url)
        self.meter = RedisMeter(self.conn)
        self.profiler = profiler
        self.seconds = self.cpu_s = self.redis_cpu_s = 0.0

    async def __aenter__(self) -> Timed:
        await self.meter.start()
        self._cpu0 = process_cpu()
        if self.profiler is not None:
            self.profiler.enable()
        self._t0 = time.perf_counter()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self.profiler is not None:
            self.profiler.disable()
        self.cpu_s = process_cpu() - self._cpu0
        try:
            if exc[0] is None:
                self.redis_cpu_s = (await self.meter.stop())["cpu_s"]
        finally:
            await self.conn.aclose()

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def metrics(self, workflows: int, tasks: int) -> Metrics:
        return {
            "workflows": workflows,
            "tasks": tasks,
            "seconds": self.seconds,
            "tasks_per_s": tasks / self.seconds,
            "py_us_per_task": self.cpu_s / tasks * 1e6,
            "redis_us_per_task": self.redis_cpu_s / tasks * 1e6,
        }


def new_worker(app: App, args: argparse.Namespace) -> Worker:
    return Worker(
        app, concurrency=args.concurrency, batch_size=args.read_count, block_ms=args.block_ms
    )


async def timed_drain(
    args: argparse.Namespace,
    app: App,
    redis_url: str,
    expected: int,
    what: str,
    profiler: cProfile.Profile | None,
) -> tuple[Timed, Stats]:
    """Start a worker on the pre-loaded streams and time it until ``expected`` transitions
    are committed (the worker's start is inside the clock, as in bench/throughput.py)."""
    worker = new_worker(app, args)
    try:
        async with Timed(redis_url, profiler) as timed:
            await worker.start()
            await reach(worker.stats, expected, args.timeout, what)
    finally:
        await worker.stop()
    check_stats(worker.stats, expected, what)
    return timed, worker.stats


# -- fanout ----------------------------------------------------------------------------------


async def fanout(
    args: argparse.Namespace, redis_url: str, profiler: cProfile.Profile | None
) -> Metrics:
    n_wf, n_items = args.fanout_workflows, args.fanout_items
    joins = 0
    wf = Workflow("bench_fan", max_steps=n_items + 10)

    @wf.step(start=True)
    async def split(ctx: StepContext, base: int) -> FanOut:
        return fan_out(
            branch, range(base, base + n_items), then=join, max_parallel=args.max_parallel
        )

    @wf.step
    async def branch(ctx: StepContext, x: int) -> int:
        return 2 * x

    @wf.step
    async def join(ctx: StepContext, results: list[int]) -> list[int]:
        nonlocal joins
        joins += 1
        return results

    async with namespace_for(args, redis_url, "fan", [wf]) as (app, client):
        bases = [i * n_items for i in range(n_wf)]
        ids = await start_all(client, "bench_fan", bases, args.preload_concurrency)
        tasks = n_wf * (n_items + 2)
        timed, _ = await timed_drain(args, app, redis_url, tasks, "fanout", profiler)
        expected = [[2 * x for x in range(b, b + n_items)] for b in bases]
        await check_results(client, ids, expected, "fanout")
    if joins != n_wf:
        raise BenchError(f"fanout: {joins} joins ran for {n_wf} workflows")
    out = timed.metrics(n_wf, tasks)
    out["branch_tasks_per_s"] = n_wf * n_items / timed.seconds
    return out


# -- signals ---------------------------------------------------------------------------------


async def signals(
    args: argparse.Namespace, redis_url: str, profiler: cProfile.Profile | None
) -> Metrics:
    n = args.signals
    wf = Workflow("bench_signal")

    @wf.step(start=True)
    async def park(ctx: StepContext, i: int) -> Wait:
        ctx.state["i"] = i
        return wait("go", then=resume, timeout=args.wait_timeout)

    @wf.step
    async def resume(ctx: StepContext, payload: Any) -> dict[str, Any]:
        if is_timeout(payload):
            return {"i": ctx.state["i"], "timed_out": True}
        return {"i": ctx.state["i"], "payload": payload}

    async with namespace_for(args, redis_url, "signal", [wf]) as (app, client):
        ids = await start_all(client, "bench_signal", list(range(n)), args.preload_concurrency)
        worker = new_worker(app, args)
        try:
            await worker.start()
            await reach(worker.stats, n, args.timeout, "signals (parking)")
            # open the client's connections first, as a long-running client has them: the
            # signals below are sent many at once, each on its own connection
            await asyncio.gather(*(client.redis.ping() for _ in range(args.send_concurrency)))
            sent: list[str] = []
            async with Timed(redis_url, profiler) as timed:
                for i in range(0, n, args.send_concurrency):
                    chunk = ids[i : i + args.send_concurrency]
                    sent += await asyncio.gather(
                        *(client.signal(w, "go", f"p{i + k}") for k, w in enumerate(chunk))
                    )
                send_s = timed.elapsed()
                await reach(worker.stats, 2 * n, args.timeout, "signals")
        finally:
            await worker.stop()
        check_stats(worker.stats, 2 * n, "signals")
        if sent != ["delivered"] * n:
            raise BenchError(f"signals: {n - sent.count('delivered')} signals not delivered")
        await check_results(
            client, ids, [{"i": i, "payload": f"p{i}"} for i in range(n)], "signals"
        )
    out = timed.metrics(n, n)
    out["signals_per_s"] = n / timed.seconds
    out["send_s"] = send_s
    return out


# -- children --------------------------------------------------------------------------------


async def children(
    args: argparse.Namespace, redis_url: str, profiler: cProfile.Profile | None
) -> Metrics:
    n = args.children
    parent = Workflow("bench_parent")
    child = Workflow("bench_child")

    @parent.step(start=True)
    async def spawn(ctx: StepContext, i: int) -> StartChild:
        return start_child(child, i, then=collect)

    @parent.step
    async def collect(ctx: StepContext, outcome: Any) -> Any:
        error = error_of(outcome)
        return {"error": error} if error else outcome

    @child.step(start=True)
    async def work(ctx: StepContext, i: int) -> int:
        return i + 1

    async with namespace_for(args, redis_url, "child", [parent, child]) as (app, client):
        ids = await start_all(client, "bench_parent", list(range(n)), args.preload_concurrency)
        timed, _ = await timed_drain(args, app, redis_url, 3 * n, "children", profiler)
        await check_results(client, ids, [i + 1 for i in range(n)], "children")
    out = timed.metrics(n, 3 * n)
    out["parents_per_s"] = n / timed.seconds
    return out


# -- cache -----------------------------------------------------------------------------------


async def cache(
    args: argparse.Namespace, redis_url: str, profiler: cProfile.Profile | None
) -> Metrics:
    n, k = args.cache_workflows, args.cache_inputs
    calls = 0
    wf = Workflow("bench_cache")

    @wf.step(start=True, cache_ttl=600)
    async def lookup(ctx: StepContext, x: int) -> int:
        nonlocal calls
        calls += 1
        return x * x

    async with namespace_for(args, redis_url, "cache", [wf]) as (app, client):
        inputs = [i % k for i in range(n)]
        ids = await start_all(client, "bench_cache", inputs, args.preload_concurrency)
        timed, stats = await timed_drain(args, app, redis_url, n, "cache", profiler)
        await check_results(client, ids, [x * x for x in inputs], "cache")
    if calls + stats.cached != n or calls < k:
        raise BenchError(f"cache: {calls} calls + {stats.cached} hits for {n} workflows")
    out = timed.metrics(n, n)
    out["hit_ratio"] = stats.cached / n
    out["best_hit_ratio"] = (n - k) / n
    out["step_calls"] = calls
    return out


# -- batch -----------------------------------------------------------------------------------


class Device:
    """A GPU-like device: one call at a time, each costing ``call_s`` plus ``item_s`` per
    input (time.sleep, so the GIL is free meanwhile, as during a real kernel)."""

    def __init__(self, call_s: float, item_s: float) -> None:
        self.call_s, self.item_s = call_s, item_s
        self.lock = threading.Lock()
        self.calls = 0
        self.busy_s = 0.0  # time spent holding the device

    def run(self, items: int) -> None:
        with self.lock:
            t0 = time.perf_counter()
            self.calls += 1
            time.sleep(self.call_s + self.item_s * items)
            self.busy_s += time.perf_counter() - t0


async def batch_once(
    args: argparse.Namespace, redis_url: str, profiler: cProfile.Profile | None, batched: bool
) -> tuple[Timed, Device]:
    n = args.batch_workflows
    device = Device(args.call_ms / 1000, args.item_ms / 1000)
    wf = Workflow("bench_batch")
    if batched:

        @wf.step(start=True, batch_size=args.step_batch, batch_wait_ms=args.batch_wait_ms)
        def infer_batch(ctx: BatchContext, xs: list[int]) -> list[int]:
            device.run(len(xs))
            return [3 * x + 1 for x in xs]

    else:

        @wf.step(start=True)
        def infer(ctx: StepContext, x: int) -> int:
            device.run(1)
            return 3 * x + 1

    label = "batch" if batched else "unbatched"
    async with namespace_for(args, redis_url, label, [wf]) as (app, client):
        ids = await start_all(client, "bench_batch", list(range(n)), args.preload_concurrency)
        timed, _ = await timed_drain(args, app, redis_url, n, label, profiler)
        await check_results(client, ids, [3 * i + 1 for i in range(n)], label)
    return timed, device


async def batch(
    args: argparse.Namespace, redis_url: str, profiler: cProfile.Profile | None
) -> Metrics:
    n = args.batch_workflows
    timed, device = await batch_once(args, redis_url, profiler, batched=True)
    plain, plain_device = await batch_once(args, redis_url, None, batched=False)
    out = timed.metrics(n, n)
    out["unbatched_per_s"] = n / plain.seconds
    out["unbatched_seconds"] = plain.seconds
    out["speedup"] = plain.seconds / timed.seconds
    out["mean_batch"] = n / device.calls
    out["device_busy"] = device.busy_s / timed.seconds
    out["unbatched_device_busy"] = plain_device.busy_s / plain.seconds
    out["unbatched_call_ms"] = plain_device.busy_s / plain_device.calls * 1000
    return out


# -- output ----------------------------------------------------------------------------------

RUNNERS: dict[
    str, Callable[[argparse.Namespace, str, cProfile.Profile | None], Awaitable[Metrics]]
] = {
    "fanout": fanout,
    "signals": signals,
    "children": children,
    "cache": cache,
    "batch": batch,
}


def figure(name: str, m: Metrics, args: argparse.Namespace) -> str:
    if name == "fanout":
        return (
            f"branch tasks/s {m['branch_tasks_per_s']:,.0f} "
            f"({args.fanout_items} per join; joins in order)"
        )
    if name == "signals":
        return f"signals/s {m['signals_per_s']:,.0f} end to end (sending took {m['send_s']:.2f}s)"
    if name == "children":
        return f"parent workflows/s {m['parents_per_s']:,.0f}"
    if name == "cache":
        return (
            f"completions/s {m['tasks_per_s']:,.0f}, hit ratio {m['hit_ratio']:.3f} "
            f"(at best {m['best_hit_ratio']:.3f}; {m['step_calls']:.0f} calls)"
        )
    return (
        f"batched {m['tasks_per_s']:,.0f}/s (mean batch {m['mean_batch']:.1f}, device busy "
        f"{m['device_busy']:.0%}) vs unbatched {m['unbatched_per_s']:,.0f}/s (busy "
        f"{m['unbatched_device_busy']:.0%}): {m['speedup']:.1f}x"
    )


def median_metrics(runs: list[Metrics]) -> Metrics:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def print_table(results: dict[str, list[Metrics]], args: argparse.Namespace) -> None:
    head = (
        f"{'scenario':<9} {'workflows':>9} {'tasks':>8} {'seconds':>8} {'tasks/s':>9} "
        f"{'py us':>6} {'redis us':>8}  figure"
    )
    print(head)
    print("-" * (len(head) + 60))
    for name, runs in results.items():
        m = median_metrics(runs)
        print(
            f"{name:<9} {m['workflows']:>9,.0f} {m['tasks']:>8,.0f} {m['seconds']:>8.2f} "
            f"{m['tasks_per_s']:>9,.0f} {m['py_us_per_task']:>6.0f} "
            f"{m['redis_us_per_task']:>8.0f}  {figure(name, m, args)}"
        )
    print(
        f"  median of {args.repeat} run(s); seconds: the timed drain (starts pre-loaded); "
        "py us / redis us: CPU microseconds per task\n  in this process / in redis-server "
        f"during it; worker concurrency {args.concurrency}, {args.partitions} partitions"
    )
    if "batch" in results:
        print(
            f"  batch: one simulated device, {args.call_ms:g} ms per call + {args.item_ms:g} ms "
            f"per input, one call at a time; batch_size={args.step_batch}, "
            f"batch_wait_ms={args.batch_wait_ms:g} (tasks/s and seconds: the batched run)"
        )


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Conveyor flow-control benchmark (fan-out, signals, children, cache, batch).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting a private one")
    p.add_argument("--concurrency", type=int, default=64, help="worker concurrency")
    p.add_argument("--partitions", type=int, default=16, help="stream partitions per queue")
    p.add_argument("--read-count", type=int, default=256, help="worker XREADGROUP COUNT")
    p.add_argument(
        "--block-ms", type=int, default=500, help="worker XREADGROUP BLOCK (its default)"
    )
    p.add_argument(
        "--preload-concurrency", type=int, default=64, help="concurrent starts in the pre-load"
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes (the second value below)")
    sizes = {
        "fanout_workflows": "fanout: workflows",
        "fanout_items": "fanout: items per workflow",
        "signals": "signals: workflows parked, one signal each",
        "children": "children: parent workflows",
        "cache_workflows": "cache: workflows",
        "cache_inputs": "cache: distinct inputs",
        "batch_workflows": "batch: workflows (each run)",
    }
    for dest, text in sizes.items():
        full, quick = SIZES[dest]
        p.add_argument(
            "--" + dest.replace("_", "-"), type=int, default=full, help=f"{text}; --quick: {quick}"
        )
    p.add_argument(
        "--max-parallel", type=int, help="fanout: fan_out(max_parallel=...) (default: all)"
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        help="signals: wait(timeout=...); a wait that times out fails the run (default: none)",
    )
    p.add_argument("--send-concurrency", type=int, default=256, help="signals: gathered at once")
    p.add_argument("--step-batch", type=int, default=64, help="batch: the step's batch_size")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="batch: batch_wait_ms")
    p.add_argument("--call-ms", type=float, default=2.0, help="batch: device cost per call")
    p.add_argument("--item-ms", type=float, default=0.0, help="batch: device cost per input")
    p.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only these scenarios (repeatable; default: all)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each scenario (median shown)")
    p.add_argument("--timeout", type=float, default=300.0, help="give up a drain after (s)")
    p.add_argument("--uvloop", action="store_true", help="use uvloop (must be installed)")
    p.add_argument("--profile", choices=SCENARIOS, help="run this scenario once under cProfile")
    p.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    p.add_argument("--json", action="store_true", help="print results as JSON only")
    args = p.parse_args(argv)
    if args.quick:
        given = {tok.split("=", 1)[0] for tok in (sys.argv[1:] if argv is None else argv)}
        for dest, (_, quick) in SIZES.items():
            if "--" + dest.replace("_", "-") not in given:
                setattr(args, dest, quick)
    return args


async def run(args: argparse.Namespace, redis_url: str, redis_version: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": machine_info(redis_version),
        "conveyor": source_info(),
        "args": vars(args),
    }
    if not args.json:
        print(describe(out["machine"], out["conveyor"]) + "\n")
    if args.profile:
        profiler = cProfile.Profile()
        metrics = await RUNNERS[args.profile](args, redis_url, profiler)
        report = profile_report(profiler, args.top)
        out["profile"] = {"scenario": args.profile, "metrics": metrics, **report}
        if not args.json:
            title = (
                f"profile of scenario {args.profile!r} ({metrics['tasks']:,.0f} tasks, "
                f"{metrics['seconds']:.2f}s timed)"
            )
            print_profile(title, report, metrics["tasks"], "task")
        return out
    results: dict[str, list[Metrics]] = {}
    for name in [s for s in SCENARIOS if s in (args.only or SCENARIOS)]:
        for _ in range(args.repeat):
            results.setdefault(name, []).append(await RUNNERS[name](args, redis_url, None))
    out["results"] = {
        name: {"median": median_metrics(runs), "runs": runs} for name, runs in results.items()
    }
    if not args.json:
        print_table(results, args)
    return out


def main(argv: list[str] | None = None) -> int:
    return run_main(parse_args(argv), run, (BenchError, ConveyorError))


if __name__ == "__main__":
    sys.exit(main())
