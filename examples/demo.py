"""The Conveyor demo: a burst of fraud-detection workflows through real Redis, end to end.

    scripts/demo                   # 1,000 workflows (creates .venv on first use)
    python examples/demo.py --count 5000 --concurrency 128

Without ``REDIS_URL`` it starts an embedded ``redis-server`` (data and append-only file under
``./.conveyor/demo-redis``); with ``REDIS_URL`` set it uses that server, in a namespace of its
own that it deletes at the end (``--keep`` keeps it for ``conveyor status ID``). A worker runs
in this process as an asyncio task, the workflows are started with ``AsyncClient`` and their
completion events are followed on the workflows' ``finished`` channels. Exits 1 when any
workflow failed or did not finish within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import fraud
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor import App, AsyncClient, ResultTimeoutError, Worker, WorkflowStatus
from conveyor.embedded import EmbeddedRedis

DATA_DIR = Path(".conveyor") / "demo-redis"
START_BATCH = 50  # workflows started concurrently (the client pool holds 100 connections)
READ_BATCH = 50  # statuses read concurrently


@dataclass
class Summary:
    started: int = 0
    completed: int = 0
    failed: int = 0
    unfinished: int = 0
    alerts: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    steps: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.unfinished == 0 and self.completed == self.started


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def latency_ms(status: WorkflowStatus) -> float | None:
    if status.created_at is None or status.finished_at is None:
        return None
    return (status.finished_at - status.created_at).total_seconds() * 1000


# -- Redis ---------------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` without its password, fit to print."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def redis_server(console: Console) -> Iterator[str]:
    """REDIS_URL when set, else an embedded redis-server stopped (gracefully) on exit."""
    url = os.environ.get("REDIS_URL")
    if url:
        console.print(f"Redis: [bold]{redact(url)}[/] (from REDIS_URL)")
        yield url
        return
    # an absolute path: redis-server changes into --dir before it opens its log file
    server = EmbeddedRedis(DATA_DIR.resolve(), appendonly=True).start()
    try:
        console.print(
            f"Redis: embedded redis-server {server.version} at [bold]{server.url}[/] "
            f"(append-only file in {server.data_dir})"
        )
        yield server.url
    finally:
        server.stop()


async def delete_namespace(client: AsyncClient, namespace: str) -> None:
    """Remove every key of the demo's own namespace (nobody else uses it)."""
    await client.store.namespace.purge()


# -- the run ---------------------------------------------------------------------------------------


async def start_all(client: AsyncClient, transactions: list[dict[str, object]]) -> list[str]:
    ids: list[str] = []
    for i in range(0, len(transactions), START_BATCH):
        chunk = transactions[i : i + START_BATCH]
        ids += await asyncio.gather(*(client.start("fraud", tx) for tx in chunk))
    return ids


async def wait_all(
    client: AsyncClient, ids: list[str], progress: Progress, timeout: float
) -> list[WorkflowStatus | None]:
    """Wait for every workflow (one shared pub/sub subscription inside the client), advancing
    the progress bar as each finishes; None for one that did not finish in time."""

    async def one(workflow_id: str) -> WorkflowStatus | None:
        try:
            [status] = await client.wait([workflow_id], timeout=timeout)
        except ResultTimeoutError:
            return None
        progress.advance(progress.task_ids[0])
        return status

    return list(await asyncio.gather(*(one(i) for i in ids)))


@contextlib.asynccontextmanager
async def worker_task(app: App, concurrency: int) -> AsyncIterator[Worker]:
    """A worker running in this process as an asyncio task; it drains and stops on exit."""
    worker = Worker(app, concurrency=concurrency)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        await task


async def run(args: argparse.Namespace, redis_url: str, console: Console) -> Summary:
    main_task = asyncio.current_task()
    if main_task is not None:
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            # SIGTERM stops the demo like Ctrl-C does: workers drain, Redis stops.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    namespace = f"demo-{uuid.uuid4().hex[:8]}"
    app = App(workflows=[fraud.fraud], redis_url=redis_url, namespace=namespace, retention=3600)
    trained = fraud.model()
    console.print(
        f"Model: logistic regression on {trained.samples:,} synthetic transactions, trained in "
        f"{trained.seconds:.2f}s (holdout AUC {trained.holdout_auc:.3f}); "
        f"alert when score >= {fraud.ALERT_THRESHOLD}"
    )
    transactions = fraud.generate_transactions(args.count, seed=args.seed)
    progress = Progress(
        TextColumn("[bold]fraud[/] workflows"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    progress.add_task("fraud", total=args.count)
    summary = Summary()
    client = AsyncClient(app=app)
    try:
        async with worker_task(app, args.concurrency):
            with progress:
                began = time.perf_counter()
                ids = await start_all(client, transactions)
                statuses = await wait_all(client, ids, progress, args.timeout)
                summary.wall_s = time.perf_counter() - began
        summary.started = len(ids)
        for status in statuses:
            if status is None:
                summary.unfinished += 1
                continue
            summary.steps += len(status.history)
            if status.status != "completed":
                summary.failed += 1
                continue
            summary.completed += 1
            summary.alerts += bool(status.result["alert"])
            latency = latency_ms(status)
            if latency is not None:
                summary.latencies_ms.append(latency)
    finally:
        if args.keep:
            console.print(f"kept namespace [bold]{namespace}[/] (its workflows expire in an hour)")
        else:
            await delete_namespace(client, namespace)
        await client.close()
    return summary


def print_summary(console: Console, summary: Summary, args: argparse.Namespace) -> None:
    table = Table(title="Conveyor demo: fraud detection", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rate = summary.completed / summary.wall_s if summary.wall_s else 0.0
    alert_share = summary.alerts / summary.completed if summary.completed else 0.0
    table.add_row("workflows started", f"{summary.started:,}")
    table.add_row("completed", f"{summary.completed:,}")
    table.add_row("failed", f"{summary.failed:,}", style="red" if summary.failed else None)
    if summary.unfinished:
        table.add_row("unfinished", f"{summary.unfinished:,}", style="red")
    table.add_row("alerts raised", f"{summary.alerts:,} ({alert_share:.1%})")
    table.add_row("steps run", f"{summary.steps:,}")
    table.add_row("wall time", f"{summary.wall_s:.2f} s")
    table.add_row("throughput", f"{rate:,.0f} workflows/s")
    if summary.latencies_ms:
        table.add_row("latency p50", f"{percentile(summary.latencies_ms, 50):,.0f} ms")
        table.add_row("latency p99", f"{percentile(summary.latencies_ms, 99):,.0f} ms")
    console.print(table)
    console.print(
        f"[dim]Latency is end to end (created_at -> finished_at); all {summary.started:,} "
        f"workflows were started in one burst, so it includes time spent queued. "
        f"One worker in the demo process, {args.concurrency} step slots.[/]"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="workflows to run (1000)")
    parser.add_argument("--concurrency", type=int, default=64, help="worker step slots (64)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the transactions (42)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    parser.add_argument("--keep", action="store_true", help="keep the namespace's keys")
    args = parser.parse_args(argv)
    if args.count < 1 or args.concurrency < 1 or args.timeout <= 0:
        parser.error("--count, --concurrency and --timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    console.print(
        f"[bold]Conveyor demo[/]: {args.count:,} fraud-detection workflows "
        "(ingest -> enrich -> score -> alert)"
    )
    try:
        with redis_server(console) as redis_url:
            summary = asyncio.run(run(args, redis_url, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("interrupted: workers drained, Redis stopped")
        return 130
    print_summary(console, summary, args)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
