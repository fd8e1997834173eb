"""Prometheus metrics of worker and API processes (prometheus-client).

Every metric is defined once, here, in prometheus-client's default registry; docs/
observability.md lists them. Several processes (``conveyor worker --processes N``,
``conveyor api --workers N``) share one scrape through prometheus-client's multiprocess mode:
the parent sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts its children (see
:func:`multiprocess_dir`), each child writes its values there, and :func:`registry` merges
them at scrape time.

The hot path pays little: a worker tallies in plain Python and writes the totals to the
metrics once a second (see :class:`WorkerMetrics`), and the in-flight gauge is sampled then
too rather than moved on every step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from ..errors import ScriptCode
from ..workflow.outcomes import OUTCOME_COUNTS, OutcomeKind

if TYPE_CHECKING:
    from ..workflow import Workflow
from ..storage.records import Task
from .tracing import split

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STEP = ("workflow", "step", "queue")
# seconds: from a 1 ms cache hit to an hour-long LLM chain
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

# -- worker processes ---------------------------------------------------------------------------

STEPS_STARTED = Counter(
    "conveyor_steps_started", "Step attempts started (run, alone or in a batch).", STEP
)
STEPS_COMPLETED = Counter(
    "conveyor_steps_completed", "Step attempts completed and committed (cache hits too).", STEP
)
STEPS_FAILED = Counter(
    "conveyor_steps_failed", "Step attempts that raised (retried or dead-lettered).", STEP
)
STEPS_RETRIED = Counter(
    "conveyor_steps_retried", "Failed step attempts scheduled to run again.", STEP
)
STEPS_DEAD = Counter(
    "conveyor_steps_dead_lettered",
    "Steps that failed for good or were delivered too often: dead-lettered.",
    STEP,
)
STEPS_LIMITED = Counter(
    "conveyor_steps_limited", "Steps held back by a rate or concurrency limit (not run).", STEP
)
STEPS_DROPPED = Counter(
    "conveyor_steps_dropped",
    "Tasks dropped unrun: their workflow stopped (cancelled, failed) or, for a wait's timer, "
    "the signal came first.",
    STEP,
)
STEP_DURATION = Histogram(
    "conveyor_step_duration_seconds", "Run time of step attempts.", STEP, buckets=DURATION_BUCKETS
)
WORKFLOW_DURATION = Histogram(
    "conveyor_workflow_duration_seconds",
    "Workflows from start to end (completed or failed), observed by the worker ending them.",
    ("workflow", "status"),
    buckets=DURATION_BUCKETS,
)
CACHE_HITS = Counter(
    "conveyor_cache_hits", "Steps completed from the step-result cache.", ("workflow", "step")
)
CACHE_MISSES = Counter(
    "conveyor_cache_misses", "Cached steps that had to run.", ("workflow", "step")
)
TASKS_RECLAIMED = Counter(
    "conveyor_tasks_reclaimed",
    "Entries taken over from a worker that stopped renewing them (a crash or stall).",
    ("queue",),
)
COMMIT_DUPLICATES = Counter(
    "conveyor_commit_duplicates",
    "Transitions answered DUPLICATE: the task was already done (a redelivery).",
    ("queue",),
)
POISON_ENTRIES = Counter(
    "conveyor_poison_entries", "Undecodable stream entries dead-lettered.", ("queue",)
)
COMMIT_ERRORS = Counter(
    "conveyor_commit_errors", "Transitions a script error refused (they are redelivered)."
)

# -- API processes ----------------------------------------------------------------------------

WORKFLOWS_STARTED = Counter(
    "conveyor_workflows_started", "Workflows created (idempotent repeats excluded).", ("workflow",)
)
ENQUEUE_REFUSED = Counter(
    "conveyor_enqueue_refused",
    "Starts refused: backpressure (queue bound or Redis out of memory) or rate_limit.",
    ("workflow", "reason"),
)
HTTP_REQUESTS = Counter(
    "conveyor_http_requests",
    "HTTP requests answered, by route template and status.",
    ("method", "route", "status"),
)
HTTP_DURATION = Histogram(
    "conveyor_http_request_duration_seconds",
    "Time to answer HTTP requests (to the end of the response; SSE streams excluded).",
    ("method", "route", "status"),
    buckets=HTTP_BUCKETS,
)


# what a worker counts per (workflow, step, queue), in this order
STEP_COUNTERS = (
    STEPS_STARTED, STEPS_COMPLETED, STEPS_FAILED, STEPS_RETRIED, STEPS_DEAD, STEPS_LIMITED,
    STEPS_DROPPED,
)  # fmt: skip
STARTED, COMPLETED, FAILED, RETRIED, DEAD, LIMITED, DROPPED = range(len(STEP_COUNTERS))
# the step counter of each name OUTCOME_COUNTS uses ("cached" and "poison" are counted
# under their own labels: cache hits by workflow and step, poison entries by queue)
_COUNTER_OF = {
    "completed": COMPLETED, "failed": FAILED, "retried": RETRIED, "dead": DEAD,
    "limited": LIMITED, "dropped": DROPPED,
}  # fmt: skip
_STEP_COUNTS = {
    kind: tuple(_COUNTER_OF[n] for n in names if n in _COUNTER_OF)
    for kind, names in OUTCOME_COUNTS.items()
}
_CACHE_HITS = frozenset(kind for kind, names in OUTCOME_COUNTS.items() if "cached" in names)


class _Tally:
    """Counts and a histogram of one labelled series, kept in plain Python between flushes:
    a step pays a list increment where prometheus-client takes a lock per value (measured:
    ~14 µs of worker CPU per single-step workflow with direct updates)."""

    __slots__ = ("bounds", "buckets", "counts", "labels", "sum")

    def __init__(
        self, labels: tuple[str, ...], counters: int, bounds: tuple[float, ...] = DURATION_BUCKETS
    ) -> None:
        self.labels = labels
        self.counts = [0] * counters
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def flush(self, counters: tuple[Any, ...], histogram: Any) -> None:
        for i, metric in enumerate(counters):
            if self.counts[i]:
                metric.labels(*self.labels).inc(self.counts[i])
                self.counts[i] = 0
        if any(self.buckets):
            add_observations(histogram.labels(*self.labels), self.buckets, self.sum)
            self.buckets = [0] * len(self.buckets)
            self.sum = 0.0


def add_observations(child: Any, buckets: list[int], total: float) -> None:
    """Add pre-bucketed observations to a histogram child: what ``observe`` does one at a
    time (its per-bucket values and sum; the buckets are not cumulative inside)."""
    child._sum.inc(total)
    for i, n in enumerate(buckets):
        if n:
            child._buckets[i].inc(n)


class Window:
    """Recent samples for the percentiles a worker's heartbeat carries (``conveyor top``):
    one list per heartbeat interval, the last ``intervals`` of them kept. Adding a sample is
    one list append (no clock read); :meth:`rotate` starts the next interval."""

    def __init__(self, intervals: int = 10, size: int = 4096) -> None:
        self.size = size
        self.current: list[float] = []
        self.past: deque[list[float]] = deque(maxlen=intervals - 1)

    def add(self, value: float) -> None:
        if len(self.current) < self.size:
            self.current.append(value)

    def rotate(self) -> None:
        self.past.append(self.current)
        self.current = []

    def summary(self) -> dict[str, float | int | None]:
        values = sorted(v for chunk in (*self.past, self.current) for v in chunk)
        if not values:
            return {"p50": None, "p95": None, "p99": None, "count": 0}

        def pick(q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))]

        return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "count": len(values)}


class WorkerMetrics:
    """What a worker process reports: counted when a transition commits (so a duplicate
    counts once), timed when a step returns. Tallied in memory and written to the
    prometheus-client metrics by :meth:`flush` (each second, with the heartbeat, and when
    the worker stops)."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, str, str], _Tally] = {}
        self._workflows: dict[tuple[str, str], _Tally] = {}
        self._queues: dict[tuple[str, ...], int] = {}  # (metric name, queue) -> count
        self.step_window = Window()
        self.workflow_window = Window()

    def tally(self, task: Task) -> _Tally:
        key = (task.workflow, task.step, task.queue)
        found = self._steps.get(key)
        if found is None:
            found = self._steps[key] = _Tally(key, len(STEP_COUNTERS))
        return found

    def started(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.tally(task).counts[STARTED] += 1

    def ran(self, task: Task, seconds: float) -> None:
        self.tally(task).observe(seconds)
        self.step_window.add(seconds)

    def committed(self, task: Task | None, queue: str, kind: OutcomeKind, code: int) -> None:
        """A transition of ``kind`` (runner.Outcome.kind) came back with ``code``; what it
        counts is ``OUTCOME_COUNTS[kind]``."""
        if code == ScriptCode.DUPLICATE:
            self._count("duplicates", queue)
            return
        if task is None:
            self._count("poison", queue)
            return
        counts = self.tally(task).counts
        for i in _STEP_COUNTS[kind]:
            counts[i] += 1
        if kind in _CACHE_HITS:
            self._count("cache_hits", task.workflow, task.step)
        if code == ScriptCode.ENDED_COMPLETED:
            self._ended(task, "completed")
        elif code == ScriptCode.ENDED_FAILED:
            self._ended(task, "failed")

    def _ended(self, task: Task, status: str) -> None:
        started, _ = split(task.trace)
        if started is None:
            return
        seconds = max(0.0, time.time() - started / 1000)
        key = (task.workflow, status)
        tally = self._workflows.get(key)
        if tally is None:
            tally = self._workflows[key] = _Tally(key, 0)
        tally.observe(seconds)
        self.workflow_window.add(seconds)

    def _count(self, *key: str) -> None:
        self._queues[key] = self._queues.get(key, 0) + 1

    def cache_missed(self, task: Task) -> None:
        self._count("cache_misses", task.workflow, task.step)

    def reclaimed(self, queue: str) -> None:
        self._count("reclaimed", queue)

    def commit_error(self) -> None:
        self._count("commit_errors")

    def flush(self, in_flight: int | None = None) -> None:
        """Write what was tallied since the last flush to the Prometheus metrics."""
        for tally in self._steps.values():
            tally.flush(STEP_COUNTERS, STEP_DURATION)
        for tally in self._workflows.values():
            tally.flush((), WORKFLOW_DURATION)
        counts, self._queues = self._queues, {}
        for (name, *labels), n in counts.items():
            metric = _BY_NAME[name]
            (metric.labels(*labels) if labels else metric).inc(n)
        if in_flight is not None:
            in_flight_gauge().set(in_flight)

    def latency(self) -> dict[str, dict[str, float | int | None]]:
        """Percentiles of the last ~10 s (heartbeat intervals), then start a new interval."""
        out = {"step": self.step_window.summary(), "workflow": self.workflow_window.summary()}
        self.step_window.rotate()
        self.workflow_window.rotate()
        return out


_gauges: dict[str, Gauge] = {}


def in_flight_gauge() -> Gauge:
    """Made by the first worker of a process, so API processes do not serve it (as 0)."""
    gauge = _gauges.get("in_flight")
    if gauge is None:
        gauge = _gauges["in_flight"] = Gauge(
            "conveyor_steps_in_flight",
            "Tasks a worker holds: running, batching or being committed (sampled each second).",
            multiprocess_mode="livesum",
        )
    return gauge


_BY_NAME: dict[str, Any] = {
    "duplicates": COMMIT_DUPLICATES,
    "poison": POISON_ENTRIES,
    "cache_hits": CACHE_HITS,
    "cache_misses": CACHE_MISSES,
    "reclaimed": TASKS_RECLAIMED,
    "commit_errors": COMMIT_ERRORS,
}


# -- exposition -----------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this process group, if any."""
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess() -> tuple[str, bool]:
    """Before starting child processes: make sure they share a multiprocess directory.
    Returns (directory, whether this call created it and should remove it at the end)."""
    existing = multiprocess_dir()
    if existing:
        os.makedirs(existing, exist_ok=True)
        return existing, False
    path = tempfile.mkdtemp(prefix="conveyor-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path, True


def remove_multiprocess(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def process_died(pid: int) -> None:
    """A child process exited: its live gauges stop counting (counters are kept)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call, unused-ignore]


def registry() -> CollectorRegistry:
    """What to expose: every process of the group in multiprocess mode, else this one's."""
    if multiprocess_dir():
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call, unused-ignore]
        return merged
    return REGISTRY


def exposition() -> tuple[bytes, str]:
    """(body, content type) of a scrape."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


class HttpMetrics:
    """Requests of an API process, tallied like a worker's steps (one dict lookup and a
    list increment per request) and written to the metrics by :meth:`flush`: each second
    (the API's lifespan runs it) and before this process answers a scrape."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str], _Tally] = {}

    def record(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """One answered request; ``seconds`` None for an event stream (counted, not timed:
        its length is the client's)."""
        key = (method, route, str(status))
        tally = self._requests.get(key)
        if tally is None:
            tally = self._requests[key] = _Tally(key, 1, HTTP_BUCKETS)
        tally.counts[0] += 1
        if seconds is not None:
            tally.observe(seconds)

    def flush(self) -> None:
        for tally in self._requests.values():
            tally.flush((HTTP_REQUESTS,), HTTP_DURATION)


_started: dict[str, Any] = {}


def count_started(workflow: str, n: int = 1) -> None:
    """Workflows created by a client (the API's included); children cached per name."""
    child = _started.get(workflow)
    if child is None:
        child = _started[workflow] = WORKFLOWS_STARTED.labels(workflow)
    child.inc(n)


def count_refused(workflow: str, reason: str) -> None:
    ENQUEUE_REFUSED.labels(workflow, reason).inc()


# -- series that exist from the start -----------------------------------------------------------

#: Why a start is refused (the ``reason`` label of conveyor_enqueue_refused).
REFUSAL_REASONS = ("backpressure", "rate_limit")
#: How a workflow ends, as conveyor_workflow_duration_seconds labels it.
ENDINGS = ("completed", "failed")


def declare_series(workflows: Iterable[Workflow], *, worker: bool) -> None:
    """Create every labelled series the app's definitions can produce, at 0, before the
    first event: a counter that appears only at its first increment is invisible to
    ``increase()`` and ``rate()`` over the window that holds that increment (a burst of
    reclaims after a crash shows as almost nothing), and dashboards show "No data" instead
    of 0. Also stops the ``_created`` series, which no query here uses: they double the
    series count of every counter and histogram.

    ``worker``: a worker declares the step, queue and workflow series; a client or the API
    the start and refusal series."""
    disable_created_metrics()  # type: ignore[no-untyped-call, unused-ignore]
    for workflow in workflows:
        if not worker:
            WORKFLOWS_STARTED.labels(workflow.name)
            for reason in REFUSAL_REASONS:
                ENQUEUE_REFUSED.labels(workflow.name, reason)
            continue
        for ending in ENDINGS:
            WORKFLOW_DURATION.labels(workflow.name, ending)
        for step in workflow.steps.values():
            labels = (workflow.name, step.name, step.queue)
            for counter in STEP_COUNTERS:
                counter.labels(*labels)
            STEP_DURATION.labels(*labels)
            if step.cache_ttl:
                CACHE_HITS.labels(workflow.name, step.name)
                CACHE_MISSES.labels(workflow.name, step.name)
            for per_queue in (TASKS_RECLAIMED, COMMIT_DUPLICATES, POISON_ENTRIES):
                per_queue.labels(step.queue)
