"""Clients: start workflows, read their status, wait for results, cancel, handle dead letters.

``AsyncClient`` is the asyncio client; ``Client`` offers the same methods to blocking code
(it runs an ``AsyncClient`` on a private event loop thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from redis.asyncio import Redis

from .app import App
from .coalesce import StartCoalescer
from .errors import (
    ResultTimeoutError,
    UnknownWorkflowError,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from .settings import Settings
from .storage.connection import connect
from .storage.records import DeadLetter, WorkflowStatus
from .storage.store import Store
from .watcher import FinishedWatcher

T = TypeVar("T")

FINISHED = ("completed", "failed", "cancelled")


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
        redis: Redis | None = None,
        **settings: Any,
    ) -> None:
        base = app.settings if app is not None else Settings.from_env()
        self.settings = base.replace(
            redis_url=redis_url, namespace=namespace, partitions=partitions, **settings
        )
        self.app = app
        self.redis = redis or connect(self.settings.redis_url)
        self._owns_redis = redis is None
        self.store = Store(self.redis, self.settings)
        self._routes: dict[str, tuple[str, str]] = {}
        self._watcher = FinishedWatcher(self.redis)
        self._starts = StartCoalescer(self.store)
        self._checked = False
        self._checking: asyncio.Future[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._watcher.close()
        if self._owns_redis:
            await self.redis.aclose()

    # -- starting ---------------------------------------------------------------------------

    async def _route(self, workflow: str) -> tuple[str, str]:
        """(first step, its queue) of ``workflow``."""
        route = self._routes.get(workflow)
        if route is not None:
            return route
        if self.app is not None:
            start = self.app.workflow(workflow).start_step
            route = (start.name, start.queue)
        else:
            desc = await self.store.lookup(workflow)
            if desc is None:
                raise UnknownWorkflowError(
                    f"unknown workflow {workflow!r}: no worker of namespace "
                    f"{self.settings.namespace!r} has registered it (start a worker first, "
                    "or give the client the app)"
                )
            route = (desc["start"], desc["queue"])
        self._routes[workflow] = route
        return route

    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """Start ``workflow`` with ``input``; returns the workflow id.

        With an ``idempotency_key`` the id is derived from (workflow, key): starting again
        returns the same id and runs nothing twice (while the first run's state is kept).
        Raises BackPressureError when the queue is past its backlog bound.
        """
        step, queue = await self._route(workflow)
        if not self._checked:
            await self._check_partitions()
        request = self.store.start_request(
            workflow, step, queue, input, idempotency_key=idempotency_key, request_id=request_id
        )
        workflow_id, _ = await self._starts.start(request)
        return workflow_id

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

        Raises WorkflowFailedError (carrying the step's error), WorkflowCancelledError,
        WorkflowNotFoundError, or ResultTimeoutError after ``timeout`` seconds.
        """
        status = await self._wait_finished(workflow_id, timeout)
        if status.status == "completed":
            return status.result
        if status.status == "failed":
            error = status.error.model_dump() if status.error else {}
            raise WorkflowFailedError(workflow_id, error)
        raise WorkflowCancelledError(f"workflow {workflow_id} was cancelled")

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

    async def cancel(self, workflow_id: str) -> str:
        """Cancel a workflow; returns its final status. Steps already running finish, but
        their results are discarded (their transitions are dropped)."""
        return await self.store.cancel(workflow_id)

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
    ) -> str:
        return self._call(
            self._client.start(
                workflow, input, idempotency_key=idempotency_key, request_id=request_id
            )
        )

    def status(self, workflow_id: str) -> WorkflowStatus:
        return self._call(self._client.status(workflow_id))

    def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        return self._call(self._client.result(workflow_id, timeout))

    def wait(self, workflow_ids: list[str], timeout: float | None = None) -> list[WorkflowStatus]:
        return self._call(self._client.wait(workflow_ids, timeout))

    def cancel(self, workflow_id: str) -> str:
        return self._call(self._client.cancel(workflow_id))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self._call(self._client.dead_letters(limit))

    def replay(self, dead_letter_id: str) -> str:
        return self._call(self._client.replay(dead_letter_id))

    def drop(self, dead_letter_id: str) -> None:
        self._call(self._client.drop(dead_letter_id))
