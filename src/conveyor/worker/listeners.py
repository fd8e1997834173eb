"""What a worker reports, as events: a :class:`WorkerListener` overrides the ones it wants.
Stats, Prometheus, tracing and log context are listeners like a user's own.

The worker builds one :class:`Listeners` as it starts: per event, the tuple of the bound
methods of the listeners that override it. The hot path loops over those tuples, so an event
nobody listens to costs an empty loop, and a listener pays only for what it overrides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ScriptCode
from ..logs import bind_step, unbind
from ..observability.tracing import TRACING, Tracing
from ..workflow.outcomes import OUTCOME_COUNTS, OutcomeKind

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..observability.metrics import WorkerMetrics
    from ..storage.records import Task


class WorkerListener:
    """Events of one worker process. Every method does nothing: override those you need.
    They run on the worker's event loop, in its hot path: keep them short, never block.
    The worker reads an event's method by name, so give no attribute an event's name."""

    def steps_started(self, tasks: Sequence[Task]) -> None:
        """``tasks`` start running: one task, or the tasks of one call of a batched step."""

    def step_ran(self, task: Task, seconds: float) -> None:
        """``task``'s step returned or raised after ``seconds`` (its outcome is not yet
        committed)."""

    def cache_missed(self, task: Task) -> None:
        """``task``'s step caches its result but had none stored: it ran."""

    def committed(
        self, task: Task | None, queue: str, kind: OutcomeKind, result: int | Exception
    ) -> None:
        """A transition of ``kind`` was committed: ``result`` is its script's code (a
        ``ScriptCode``: ``DUPLICATE`` when the task was already done), or the exception a
        script raised (the entry is redelivered). ``task`` is None for an undecodable entry."""

    def reclaimed(self, queue: str) -> None:
        """An entry of ``queue`` was taken over from a worker that stopped renewing it."""

    def batch_committed(self, size: int) -> None:
        """One pipeline of ``size`` transitions came back."""

    def commits_abandoned(self, count: int) -> None:
        """``count`` transitions were given up after repeated errors (redelivered later)."""

    def enter_step(self, task: Task, current: bool) -> object:
        """``task``'s step is about to run; what this returns is passed to :meth:`exit_step`.
        ``current``: the step runs alone in its own asyncio task, so context may be bound
        for it (False for the tasks of a batched step, which share one call)."""
        return None

    def exit_step(self, token: Any, kind: OutcomeKind, error: BaseException | None) -> None:
        """The step :meth:`enter_step` announced ended with ``kind`` (``CANCELLED`` when
        interrupted) and ``error``, what it raised."""

    def heartbeat(self, in_flight: int, info: dict[str, Any]) -> None:
        """Each second: add what this listener publishes to the worker's heartbeat ``info``."""

    def stopped(self) -> None:
        """The worker stopped."""


def _overriding(listeners: Sequence[WorkerListener], name: str) -> tuple[Any, ...]:
    base = getattr(WorkerListener, name)
    return tuple(getattr(x, name) for x in listeners if getattr(type(x), name) is not base)


class Listeners:
    """Per event, the bound methods of the listeners that override it (built once)."""

    __slots__ = (
        "all", "batch_committed", "cache_missed", "commits_abandoned", "committed",
        "heartbeat", "reclaimed", "step_ran", "steps", "steps_started", "stopped",
    )  # fmt: skip

    def __init__(self, listeners: Iterable[WorkerListener] = ()) -> None:
        self.build(listeners)

    def build(self, listeners: Iterable[WorkerListener]) -> None:
        found = tuple(listeners)
        self.all = found
        self.steps_started: tuple[Callable[[Sequence[Task]], None], ...] = _overriding(
            found, "steps_started"
        )
        self.step_ran: tuple[Callable[[Task, float], None], ...] = _overriding(found, "step_ran")
        self.cache_missed: tuple[Callable[[Task], None], ...] = _overriding(found, "cache_missed")
        self.committed: tuple[
            Callable[[Task | None, str, OutcomeKind, int | Exception], None], ...
        ] = _overriding(found, "committed")
        self.reclaimed: tuple[Callable[[str], None], ...] = _overriding(found, "reclaimed")
        self.batch_committed: tuple[Callable[[int], None], ...] = _overriding(
            found, "batch_committed"
        )
        self.commits_abandoned: tuple[Callable[[int], None], ...] = _overriding(
            found, "commits_abandoned"
        )
        self.heartbeat: tuple[Callable[[int, dict[str, Any]], None], ...] = _overriding(
            found, "heartbeat"
        )
        self.stopped: tuple[Callable[[], None], ...] = _overriding(found, "stopped")
        # (enter, exit) of the listeners that wrap a step's run, in order (exits run reversed)
        base_enter, base_exit = WorkerListener.enter_step, WorkerListener.exit_step
        self.steps: tuple[
            tuple[
                Callable[[Task, bool], object],
                Callable[[Any, OutcomeKind, BaseException | None], None],
            ],
            ...,
        ] = tuple(
            (x.enter_step, x.exit_step)
            for x in found
            if type(x).enter_step is not base_enter or type(x).exit_step is not base_exit
        )


# -- the worker's own listeners ------------------------------------------------------------------


@dataclass(slots=True)
class Stats:
    """Counters of one worker process (read by tests, benchmarks and `conveyor top`)."""

    completed: int = 0
    failed: int = 0  # attempts that raised (retried or dead-lettered)
    retried: int = 0
    dead: int = 0
    duplicates: int = 0
    reclaimed: int = 0
    poison: int = 0
    errors: int = 0
    batches: int = 0
    limited: int = 0  # held back by a rate or concurrency limit (not attempts)
    dropped: int = 0  # delivered but no longer active (cancelled workflows, stale timers)
    cached: int = 0  # completed from the step-result cache


HEARTBEAT_STATS = (
    "completed", "failed", "retried", "dead", "reclaimed", "duplicates", "cached", "limited",
    "dropped", "poison",
)  # fmt: skip
_DUPLICATE = ScriptCode.DUPLICATE


class StatsListener(WorkerListener):
    """Keeps a :class:`Stats` (``worker.stats``), counted per ``OUTCOME_COUNTS``."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def committed(
        self, task: Task | None, queue: str, kind: OutcomeKind, result: int | Exception
    ) -> None:
        stats = self.stats
        if isinstance(result, Exception):
            stats.errors += 1
        elif result == _DUPLICATE:
            stats.duplicates += 1
        else:
            for name in OUTCOME_COUNTS[kind]:
                setattr(stats, name, getattr(stats, name) + 1)

    def reclaimed(self, queue: str) -> None:
        self.stats.reclaimed += 1

    def batch_committed(self, size: int) -> None:
        self.stats.batches += 1

    def commits_abandoned(self, count: int) -> None:
        self.stats.errors += count

    def heartbeat(self, in_flight: int, info: dict[str, Any]) -> None:
        info["stats"] = {name: getattr(self.stats, name) for name in HEARTBEAT_STATS}


class PrometheusListener(WorkerListener):
    """Feeds a :class:`WorkerMetrics` (tallied in memory, written out each heartbeat)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.steps_started = metrics.started  # type: ignore[method-assign, unused-ignore]
        self.step_ran = metrics.ran  # type: ignore[method-assign, unused-ignore]
        self.cache_missed = metrics.cache_missed  # type: ignore[method-assign, unused-ignore]
        self.reclaimed = metrics.reclaimed  # type: ignore[method-assign, unused-ignore]

    # the methods above are replaced by WorkerMetrics' own (one call less per event); these
    # definitions mark them overridden
    def steps_started(self, tasks: Sequence[Task]) -> None:
        self.metrics.started(tasks)

    def step_ran(self, task: Task, seconds: float) -> None:
        self.metrics.ran(task, seconds)

    def cache_missed(self, task: Task) -> None:
        self.metrics.cache_missed(task)

    def reclaimed(self, queue: str) -> None:
        self.metrics.reclaimed(queue)

    def committed(
        self, task: Task | None, queue: str, kind: OutcomeKind, result: int | Exception
    ) -> None:
        if isinstance(result, Exception):
            self.metrics.commit_error()
        else:
            self.metrics.committed(task, queue, kind, result)

    def heartbeat(self, in_flight: int, info: dict[str, Any]) -> None:
        self.metrics.flush(in_flight)
        info["latency"] = self.metrics.latency()

    def stopped(self) -> None:
        self.metrics.flush(0)  # the last tallies (a multiprocess child's file keeps them)


class TracingListener(WorkerListener):
    """A span per step attempt (OpenTelemetry), current while a lone step runs. The worker
    adds it only when tracing is on."""

    def __init__(self, group: str) -> None:
        self.group = group

    def enter_step(self, task: Task, current: bool) -> object:
        span = TRACING.start_step(task, self.group)
        if span is None or not current:
            return (span, None)
        return (span, Tracing.attach(span))

    def exit_step(self, token: Any, kind: OutcomeKind, error: BaseException | None) -> None:
        span, attached = token
        if attached is not None:
            Tracing.detach(attached)
        Tracing.end_step(span, kind, error)


class LoggingListener(WorkerListener):
    """Log lines written while a lone step runs carry its workflow, step and attempt."""

    def enter_step(self, task: Task, current: bool) -> object:
        if not current:
            return None
        return bind_step(task.workflow_id, task.workflow, task.step, task.attempt, task.request_id)

    def exit_step(self, token: Any, kind: OutcomeKind, error: BaseException | None) -> None:
        if token is not None:
            unbind(token)
