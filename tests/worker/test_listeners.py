"""Worker listeners: the per-event tuples are built once, from the listeners that override
each event, and a user's listener hears the events of a real run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from conveyor import App, AsyncClient, OutcomeKind, WorkerListener, Workflow
from conveyor.errors import ScriptCode
from conveyor.storage.records import Task
from conveyor.storage.store import Store
from conveyor.worker.listeners import (
    Listeners,
    LoggingListener,
    PrometheusListener,
    StatsListener,
    TracingListener,
)
from tests.conftest import drain


class Recorder(WorkerListener):
    """Overrides the events of one step's life, not the heartbeat nor the batches."""

    def __init__(self) -> None:
        self.started_seen: list[tuple[str, int]] = []
        self.ran_seen: list[str] = []
        self.committed_seen: list[tuple[str, str, OutcomeKind, int | Exception]] = []
        self.reclaimed_seen: list[str] = []
        self.steps_seen: list[tuple[str, OutcomeKind, str | None]] = []

    def steps_started(self, tasks: Sequence[Task]) -> None:
        self.started_seen.extend((t.workflow, t.attempt) for t in tasks)

    def step_ran(self, task: Task, seconds: float) -> None:
        assert seconds >= 0
        self.ran_seen.append(task.workflow)

    def committed(
        self, task: Task | None, queue: str, kind: OutcomeKind, result: int | Exception
    ) -> None:
        assert task is not None
        self.committed_seen.append((task.workflow, queue, kind, result))

    def reclaimed(self, queue: str) -> None:
        self.reclaimed_seen.append(queue)

    def enter_step(self, task: Task, current: bool) -> object:
        assert current  # no batched step here
        return task.workflow

    def exit_step(self, token: Any, kind: OutcomeKind, error: BaseException | None) -> None:
        self.steps_seen.append((token, kind, type(error).__name__ if error else None))


def test_only_overriding_listeners_are_in_an_events_tuple() -> None:
    recorder = Recorder()
    built = Listeners([LoggingListener(), recorder])
    assert built.committed == (recorder.committed,)
    assert built.heartbeat == built.stopped == built.batch_committed == ()
    assert [enter.__self__ for enter, _ in built.steps] == [built.all[0], recorder]
    assert Listeners([WorkerListener()]).steps == ()  # a listener that does nothing costs nothing


async def test_a_user_listener_hears_a_real_run(
    make_app: Callable[..., App],
    client_for: Callable[[App], AsyncClient],
    make_store: Callable[..., Awaitable[Store]],
) -> None:
    fine, broken = Workflow("fine"), Workflow("broken")

    @fine.step(start=True)
    async def work(ctx: Any, n: int) -> int:
        return n

    @broken.step(start=True, retries=1, backoff=0.01)
    async def fail(ctx: Any, n: int) -> int:
        raise ValueError(n)

    app = make_app(fine, broken, visibility_timeout=1)
    client = client_for(app)
    store = await make_store("default", partitions=4, visibility_timeout=1)
    crashed = await client.start("fine", 1)
    # a consumer reads the entry and dies: the worker reclaims it past the visibility timeout
    assert len(await store.streams.read(store.keys.streams("default"), "ghost", 10, None)) == 1
    await client.start("fine", 2)
    await client.start("broken", 3)

    recorder = Recorder()
    worker = await drain(app, listeners=[recorder], reclaim_interval=0.1)
    assert await client.result(crashed, timeout=1) == 1

    # built once at start: tracing is off, so no tracing listener; the user's comes last
    kinds = [type(x) for x in worker.listeners.all]
    assert kinds == [StatsListener, PrometheusListener, LoggingListener, Recorder]
    assert TracingListener not in {type(enter.__self__) for enter, _ in worker.listeners.steps}

    assert recorder.reclaimed_seen == ["default"]
    assert sorted(recorder.started_seen) == [("broken", 1), ("broken", 2), ("fine", 1), ("fine", 2)]
    assert sorted(recorder.ran_seen) == ["broken", "broken", "fine", "fine"]
    assert sorted(recorder.committed_seen) == [
        ("broken", "default", OutcomeKind.DEAD, ScriptCode.ENDED_FAILED),
        ("broken", "default", OutcomeKind.RETRIED, ScriptCode.OK),
        ("fine", "default", OutcomeKind.COMPLETED, ScriptCode.ENDED_COMPLETED),
        ("fine", "default", OutcomeKind.COMPLETED, ScriptCode.ENDED_COMPLETED),
    ]
    assert sorted(recorder.steps_seen) == [
        ("broken", OutcomeKind.DEAD, "ValueError"),
        ("broken", OutcomeKind.RETRIED, "ValueError"),
        ("fine", OutcomeKind.COMPLETED, None),
        ("fine", OutcomeKind.COMPLETED, None),
    ]
    # the worker's own listeners counted the same run
    stats = worker.stats
    assert (stats.completed, stats.retried, stats.dead, stats.failed) == (2, 1, 1, 2)
    assert stats.reclaimed == 1
