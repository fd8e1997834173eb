"""Clients: start workflows, read their status, wait for results, signal and cancel them,
handle dead letters.

``AsyncClient`` is the asyncio client; ``Client`` offers the same methods to blocking code
(it runs an ``AsyncClient`` on a private event loop thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from .app import App
from .coalesce import Coalescer
from .errors import BackPressureError, ResultTimeoutError, UnknownWorkflowError
from .observability.metrics import count_refused, count_started
from .observability.tracing import TRACING
from .settings import Settings
from .status import FINISHED, RunStatus, outcome_error
from .storage.connection import RedisClient, connect
from .storage.records import DeadLetter, WorkflowStatus
from .storage.store import StartRequest, Store, now_ms
from .watcher import FinishedWatcher
from .workflow.definition import DEFAULT_MAX_STEPS, check_name

T = TypeVar("T")

START_CHUNK = 1000  # starts per pipeline in start_many


@dataclass(frozen=True, slots=True)
class Route:
    """How a workflow starts: its first step and queue, budget and cancel handler."""

    step: str
    queue: str
    max_steps: int
    on_cancel: tuple[str, str] | None


class AsyncClient:
    """Talks to one Conveyor namespace.

    With ``app`` the client knows the workflows' first steps itself; without it, it looks
    them up in the registry that workers publish in Redis when they start.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        *,
        partitions: int | None = None,
        app: App | None = None,
        redis: RedisClient | None = None,
        **settings: Any,
    ) -> None:
        base = app.settings if app is not None else Settings.from_env()
        self.settings = base.replace(
            redis_url=redis_url, namespace=namespace, partitions=partitions, **settings
        )
        self.app = app
        TRACING.refresh()  # trace starts when the application installed a TracerProvider
        # the client is made here, then used only through the store
        self.store = Store(redis or connect(self.settings.redis_url), self.settings)
        self._owns_redis = redis is None
        self._routes: dict[str, Route] = {}
        self._watcher = FinishedWatcher(self.store)
        # looked up per call, so a replaced store method (a test's spy) is the one used
        self._starts: Coalescer[StartRequest, tuple[str, bool]] = Coalescer(
            lambda requests: self.store.start_many(requests)
        )
        self._checked = False
        self._checking: asyncio.Future[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._watcher.close()
        if self._owns_redis:
            await self.store.close()

    # -- starting ---------------------------------------------------------------------------

    async def _route(self, workflow: str) -> Route:
        """Where and how ``workflow`` starts (from the app, else from the workers' registry)."""
        route = self._routes.get(workflow)
        if route is not None:
            return route
        if self.app is not None:
            wf = self.app.workflow(workflow)
            start, cancel = wf.start_step, wf.on_cancel_step
            on_cancel = (cancel.name, cancel.queue) if cancel else None
            route = Route(start.name, start.queue, wf.max_steps, on_cancel)
        else:
            desc = await self.store.lookup(workflow)
            if desc is None:
                raise UnknownWorkflowError(
                    f"unknown workflow {workflow!r}: no worker of namespace "
                    f"{self.settings.namespace!r} has registered it (start a worker first, "
                    "or give the client the app)"
                )
            cancel = desc.get("on_cancel")
            route = Route(
                desc["start"],
                desc["queue"],
                desc.get("max_steps", DEFAULT_MAX_STEPS),
                (cancel[0], cancel[1]) if cancel else None,
            )
        self._routes[workflow] = route
        return route

    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        delay: float | None = None,
        max_steps: int | None = None,
    ) -> str:
        """Start ``workflow`` with ``input``; returns the workflow id.

        With an ``idempotency_key`` the id is derived from (workflow, key): starting again
        returns the same id and runs nothing twice (while the first run's state is kept).
        ``delay`` seconds before its first step runs (a durable timer in Redis);
        ``max_steps`` overrides the workflow's step budget for this run.
        Raises BackPressureError when the queue is past its backlog bound.
        """
        route = await self._route(workflow)
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer, not {max_steps!r}")
        if not self._checked:
            await self._check_partitions()
        now = now_ms()
        request = self.store.start_request(
            workflow,
            route.step,
            route.queue,
            input,
            idempotency_key=idempotency_key,
            request_id=request_id,
            max_steps=max_steps or route.max_steps,
            delay=delay,
            on_cancel=route.on_cancel,
            now=now,
            trace=TRACING.start_carrier(now, workflow),
        )
        try:
            workflow_id, created = await self._starts.call(request)
        except BackPressureError:
            count_refused(workflow, "backpressure")
            raise
        if created:
            count_started(workflow)
        return workflow_id

    async def start_many(
        self,
        workflow: str,
        inputs: list[Any],
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> list[str | BackPressureError]:
        """Start ``workflow`` once per input, in pipelines; per input its id, or the
        BackPressureError that refused it (its queue is full). With an ``idempotency_key``,
        input i uses the key ``<key>:<i>``, so resending the same batch starts nothing twice."""
        route = await self._route(workflow)
        if not self._checked:
            await self._check_partitions()
        start_carrier = TRACING.start_carrier
        requests = []
        for i, value in enumerate(inputs):
            now = now_ms()
            requests.append(
                self.store.start_request(
                    workflow,
                    route.step,
                    route.queue,
                    value,
                    idempotency_key=None if idempotency_key is None else f"{idempotency_key}:{i}",
                    request_id=request_id,
                    max_steps=route.max_steps,
                    on_cancel=route.on_cancel,
                    now=now,
                    trace=start_carrier(now, workflow),
                )
            )
        out: list[str | BackPressureError] = []
        for start in range(0, len(requests), START_CHUNK):
            results = await self.store.start_many(requests[start : start + START_CHUNK])
            for result in results:  # an error of one call fails the batch: resending it
                if isinstance(result, Exception) and not isinstance(result, BackPressureError):
                    raise result  # (same key) starts nothing twice
            for result in results:
                if isinstance(result, BackPressureError):
                    out.append(result)
                    count_refused(workflow, "backpressure")
                elif not isinstance(result, Exception):
                    out.append(result[0])
                    if result[1]:
                        count_started(workflow)
        return out

    async def _check_partitions(self) -> None:
        """Once per client, shared by concurrent first starts."""
        if self._checking is None or (self._checking.done() and self._checking.exception()):
            self._checking = asyncio.ensure_future(self.store.check_partitions())
        await asyncio.shield(self._checking)
        self._checked = True

    # -- reading ----------------------------------------------------------------------------

    async def status(self, workflow_id: str) -> WorkflowStatus:
        """Status, current step, result or error, and the history of every attempt."""
        return await self.store.get(workflow_id)

    async def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        """Wait (without polling) until the workflow finishes; return its result.

        Raises WorkflowFailedError (carrying the step's error; its subclasses
        StepBudgetExceededError and DeliveryLimitExceededError when the engine failed it),
        WorkflowCancelledError, WorkflowNotFoundError, or ResultTimeoutError after
        ``timeout`` seconds (see :func:`conveyor.status.outcome_error`).
        """
        status = await self._wait_finished(workflow_id, timeout)
        error = outcome_error(
            workflow_id, status.status, status.error.model_dump() if status.error else None
        )
        if error is not None:
            raise error
        return status.result

    async def wait(
        self, workflow_ids: list[str], timeout: float | None = None
    ) -> list[WorkflowStatus]:
        """Wait until every workflow of ``workflow_ids`` has finished (completed, failed or
        cancelled); returns their statuses in the same order. Raises ResultTimeoutError."""
        return list(await asyncio.gather(*(self._wait_finished(i, timeout) for i in workflow_ids)))

    async def _wait_finished(self, workflow_id: str, timeout: float | None) -> WorkflowStatus:
        partition = self.store.keys.partition(workflow_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        # Register and subscribe first, then read: a finish between the two is not missed.
        future = self._watcher.register(workflow_id)
        try:
            await self._watcher.subscribe(self.store.keys.finished_channel(partition))
            while True:
                status = await self.store.get(workflow_id)
                if status.status in FINISHED:
                    return status
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeoutError(
                        f"workflow {workflow_id} did not finish within {timeout:g}s "
                        f"(status {status.status}, step {status.step})"
                    )
                # re-read the status now and then: pub/sub can drop a message on reconnect
                wait = 5.0 if remaining is None else min(remaining, 5.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), wait)
                if future.done():
                    future = self._watcher.register(workflow_id)
        finally:
            self._watcher.unregister(workflow_id, future)

    async def cancel(self, workflow_id: str) -> RunStatus:
        """Cancel a workflow wherever it is; returns its final status ('cancelled', or how it
        had already finished). Its queued and delayed tasks are dropped unrun, its waits
        released, running steps see ``ctx.cancelled`` and their results are discarded, its
        child workflows are cancelled too, and its ``on_cancel`` step runs once."""
        return await self.store.cancel(workflow_id)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> str:
        """Send signal ``name`` with ``payload`` (JSON) to a workflow. If it waits for that
        signal it resumes ('delivered'); otherwise the payload is kept, in order, for its
        next wait of that name ('buffered'). Raises SignalError once it has finished."""
        check_name("signal", name)
        return await self.store.signal(workflow_id, name, payload)

    # -- dead letters -----------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self.store.dead_letters(limit)

    async def replay(self, dead_letter_id: str) -> str:
        """Re-run the failed step of a dead-lettered workflow; returns its id."""
        return await self.store.replay(dead_letter_id)

    async def drop(self, dead_letter_id: str) -> None:
        await self.store.drop_dead_letter(dead_letter_id)


class Client:
    """Blocking counterpart of :class:`AsyncClient` (same arguments, same methods)."""

    def __init__(self, redis_url: str | None = None, namespace: str | None = None, **options: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="conveyor-client", daemon=True
        )
        self._thread.start()
        self._client = self._call(self._make(redis_url, namespace, options))

    @staticmethod
    async def _make(redis_url: str | None, namespace: str | None, options: Any) -> AsyncClient:
        return AsyncClient(redis_url, namespace, **options)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    @property
    def settings(self) -> Settings:
        return self._client.settings

    def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        delay: float | None = None,
        max_steps: int | None = None,
    ) -> str:
        return self._call(
            self._client.start(
                workflow,
                input,
                idempotency_key=idempotency_key,
                request_id=request_id,
                delay=delay,
                max_steps=max_steps,
            )
        )

    def status(self, workflow_id: str) -> WorkflowStatus:
        return self._call(self._client.status(workflow_id))

    def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        return self._call(self._client.result(workflow_id, timeout))

    def wait(self, workflow_ids: list[str], timeout: float | None = None) -> list[WorkflowStatus]:
        return self._call(self._client.wait(workflow_ids, timeout))

    def cancel(self, workflow_id: str) -> RunStatus:
        return self._call(self._client.cancel(workflow_id))

    def signal(self, workflow_id: str, name: str, payload: Any = None) -> str:
        return self._call(self._client.signal(workflow_id, name, payload))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self._call(self._client.dead_letters(limit))

    def replay(self, dead_letter_id: str) -> str:
        return self._call(self._client.replay(dead_letter_id))

    def drop(self, dead_letter_id: str) -> None:
        self._call(self._client.drop(dead_letter_id))
