"""``conveyor top``: a live terminal view of queues, throughput, latency and workers.

The numbers come from :class:`QueueExporter` snapshots (queues from Redis, throughput and
latency from the workers' heartbeats). :func:`build_view` turns two snapshots (a few
seconds apart) into a :class:`TopView` (pure, tested on numbers); :func:`render` draws it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Column, Table
from rich.text import Text

from ..settings import Settings
from ..storage.connection import connect
from ..storage.errors import UNAVAILABLE, RedisError
from ..storage.snapshot import QueueSnapshot
from ..storage.store import Store
from .queues import QueueExporter

__all__ = [
    "Latency",
    "QueueRow",
    "Rates",
    "TopView",
    "WorkerRow",
    "build_view",
    "render",
    "run_top",
]

#: Worker counters shown as rates (keys of the heartbeat's ``stats``).
RATES = ("completed", "failed", "retried", "dead")
#: A worker first seen this long after its start still counts from its start (seconds).
STARTUP_GRACE = 5.0
#: Seconds the live view's rates span: several heartbeats (one a second), so they are steady.
RATE_WINDOW = 3.0


@dataclass(frozen=True, slots=True)
class QueueRow:
    queue: str
    backlog: int  # lag + pending
    lag: int  # not delivered yet
    pending: int  # delivered, not acknowledged: running (or held by a crashed worker)
    oldest_age: float
    delayed: int
    workers: int


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency over the workers' recent window: p50 is the mean of their p50s weighted by
    their counts (an approximation: percentiles do not merge exactly), p95 and p99 the
    worst worker's, so a slow worker is not averaged away."""

    p50: float | None
    p95: float | None
    p99: float | None
    count: int


@dataclass(frozen=True, slots=True)
class WorkerRow:
    name: str
    host: str
    pid: int | None
    queues: list[str]
    in_flight: int
    concurrency: int
    completed: int
    heartbeat_age: float  # seconds since its last heartbeat


@dataclass(frozen=True, slots=True)
class Rates:
    per_second: dict[str, float]  # counter name (RATES) -> summed over the measured workers
    measured: int  # workers with two heartbeats to compare (see rates())


@dataclass(frozen=True, slots=True)
class TopView:
    at: float  # Redis time of the snapshot
    queues: list[QueueRow]
    rates: Rates | None  # None on the first frame
    step_latency: Latency
    workflow_latency: Latency
    workers: list[WorkerRow]
    dead_letters: int
    warning: str | None


def build_view(current: QueueSnapshot, previous: QueueSnapshot | None) -> TopView:
    """What `conveyor top` shows for ``current``, with rates since ``previous``."""
    per_queue = current.workers_per_queue()
    queues = [
        QueueRow(t.queue, t.backlog, t.lag, t.pending, t.oldest_age, t.delayed,
                 per_queue.get(t.queue, 0))
        for t in current.totals()
    ]  # fmt: skip
    warning = None
    recorded, configured = current.partitions_recorded, len(current.dead)
    if recorded is not None and recorded != configured:
        warning = (
            f"the namespace has {recorded} partitions, this view reads {configured}: "
            f"set CONVEYOR_PARTITIONS={recorded}"
        )
    return TopView(
        at=current.now,
        queues=queues,
        rates=rates(current, previous),
        step_latency=merge_latency(current.workers, "step"),
        workflow_latency=merge_latency(current.workers, "workflow"),
        workers=sorted((_worker_row(w, current.now) for w in current.workers),
                       key=lambda w: w.name),
        dead_letters=sum(current.dead),
        warning=warning,
    )  # fmt: skip


def rates(current: QueueSnapshot, previous: QueueSnapshot | None) -> Rates | None:
    """Per-second increase of the workers' summed counters (:data:`RATES`).

    Each worker's increase is divided by the time between its own two heartbeats (the
    counters are sampled when a heartbeat is written, once a second, not when Redis is
    read). A worker in both snapshots (same name and start time) counts once it wrote a
    new heartbeat; one that started since the previous snapshot (or just before it, ahead
    of its first heartbeat) counts from its start; one that ran long before but was not
    seen has no baseline and waits for the next frame; one that stopped adds nothing."""
    if previous is None:
        return None
    before = {w.get("name"): w for w in previous.workers}
    totals = dict.fromkeys(RATES, 0.0)
    measured = 0
    for worker in current.workers:
        old = before.get(worker.get("name"))
        started = float(worker.get("started_at") or 0)
        if old is not None and float(old.get("started_at") or 0) == started:
            base, since = old.get("stats") or {}, float(old.get("seen_at") or 0)
        elif started >= previous.now - STARTUP_GRACE:
            base, since = {}, started
        else:
            continue
        elapsed = float(worker.get("seen_at") or 0) - since
        if elapsed <= 0:
            continue
        measured += 1
        stats = worker.get("stats") or {}
        for key in RATES:
            totals[key] += max(0, int(stats.get(key, 0)) - int(base.get(key, 0))) / elapsed
    return Rates(totals, measured)


def merge_latency(workers: Sequence[dict[str, Any]], kind: str) -> Latency:
    """Combine the workers' ``latency[kind]`` windows (see :class:`Latency`)."""
    windows = [((w.get("latency") or {}).get(kind) or {}) for w in workers]
    windows = [x for x in windows if x.get("count")]
    weighted = [(x["p50"], x["count"]) for x in windows if x.get("p50") is not None]
    weight = sum(count for _, count in weighted)
    return Latency(
        p50=sum(p * count for p, count in weighted) / weight if weight else None,
        p95=max((x["p95"] for x in windows if x.get("p95") is not None), default=None),
        p99=max((x["p99"] for x in windows if x.get("p99") is not None), default=None),
        count=sum(int(x["count"]) for x in windows),
    )


def _worker_row(beat: dict[str, Any], now: float) -> WorkerRow:
    return WorkerRow(
        name=str(beat.get("name", "?")),
        host=str(beat.get("host", "")),
        pid=beat.get("pid"),
        queues=list(beat.get("queues") or []),
        in_flight=int(beat.get("in_flight", 0)),
        concurrency=int(beat.get("concurrency", 0)),
        completed=int((beat.get("stats") or {}).get("completed", 0)),
        heartbeat_age=max(0.0, now - float(beat.get("seen_at", now))),
    )


# -- drawing ---------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """Short human durations: 850 µs, 12.5 ms, 3.20 s, 4m05s, 2h07m."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def render(view: TopView, title: str) -> RenderableType:
    """One frame: header, throughput and latency, queues, workers, dead letters."""
    clock = time.strftime("%H:%M:%S", time.localtime(view.at))
    parts: list[RenderableType] = [Text(f"{title}  {clock}", style="bold")]
    if view.warning:
        parts.append(Text(f"warning: {view.warning}", style="yellow"))
    if view.rates is None:
        parts.append(Text("steps/s: measuring…"))
    else:
        shown = "  ".join(f"{k} {v:.1f}" for k, v in view.rates.per_second.items())
        measured = f"{view.rates.measured} of {len(view.workers)} workers"
        parts.append(Text(f"steps/s: {shown}  ({measured})"))
    parts.append(Text("latency over the last ~10 s (p50: the workers' p50s weighted by their "
                      "counts; p95, p99: the worst worker's)"))  # fmt: skip
    parts.append(_latency_table(view))

    queues = Table("queue", "backlog", "lag", "pending", "oldest", "delayed", "workers",
                   title="queues", title_justify="left",
                   caption="backlog = lag (not delivered yet) + pending (delivered, not acked)",
                   caption_justify="left")  # fmt: skip
    for q in view.queues:
        queues.add_row(
            q.queue, str(q.backlog), str(q.lag), str(q.pending),
            duration(q.oldest_age) if q.oldest_age else "-", str(q.delayed),
            Text(str(q.workers), style="red" if q.backlog and not q.workers else ""),
        )  # fmt: skip
    parts.append(queues)

    workers = Table(Column("worker", no_wrap=True), "host", "pid", "queues", "in flight",
                    "completed", "seen", title=f"workers ({len(view.workers)})",
                    title_justify="left")  # fmt: skip
    for w in view.workers:
        workers.add_row(
            w.name, w.host, str(w.pid or "-"), ",".join(w.queues),
            f"{w.in_flight}/{w.concurrency}", str(w.completed), f"{w.heartbeat_age:.1f} s ago",
        )  # fmt: skip
    parts.append(workers)
    style = "bold red" if view.dead_letters else ""
    parts.append(Text(f"dead letters: {view.dead_letters}  (conveyor dlq list)", style=style))
    return Group(*parts)


def _latency_table(view: TopView) -> Table:
    table = Table("latency", "p50", "p95", "p99", "count")
    for label, lat in (("step", view.step_latency), ("workflow", view.workflow_latency)):
        table.add_row(label, duration(lat.p50), duration(lat.p95), duration(lat.p99),
                      str(lat.count))  # fmt: skip
    return table


# -- the command -----------------------------------------------------------------------------


async def run_top(
    settings: Settings,
    queues: Sequence[str] | None,
    *,
    interval: float,
    once: bool,
    console: Console,
) -> None:
    """Refresh every ``interval`` seconds until cancelled (Ctrl-C), with rates over about
    :data:`RATE_WINDOW`. With ``once``: print one frame (two snapshots ``interval`` apart,
    for the rates) and return; Redis errors then propagate, while the live view shows them
    and keeps trying."""
    redis = connect(settings.redis_url, max_connections=2)
    exporter = QueueExporter(Store(redis, settings), queues)
    title = f"conveyor top · namespace {settings.namespace} · {settings.partitions} partitions"
    try:
        if once:
            first = await exporter.snapshot()
            await asyncio.sleep(interval)
            console.print(render(build_view(await exporter.snapshot(), first), title))
            return
        history: deque[QueueSnapshot] = deque()
        with Live(console=console, auto_refresh=False) as live:
            while True:
                frame: RenderableType
                try:
                    snap = await exporter.snapshot()
                except (*UNAVAILABLE, RedisError) as exc:
                    frame = Text(
                        f"{title}\ncannot reach Redis: {str(exc) or type(exc).__name__} "
                        f"(retrying every {interval:g} s; Ctrl-C to quit)",
                        style="red",
                    )
                else:
                    history.append(snap)  # keep the newest snapshot at least a window old
                    while len(history) > 2 and snap.now - history[1].now >= RATE_WINDOW:
                        history.popleft()
                    previous = history[0] if len(history) > 1 else None
                    frame = render(build_view(snap, previous), title)
                live.update(frame, refresh=True)
                await asyncio.sleep(interval)
    finally:
        await redis.aclose()
