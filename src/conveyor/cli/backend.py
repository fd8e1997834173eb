"""Where a command's work goes: to Redis (the engine's client and read queries) or, with
``--api``, to the HTTP API (:mod:`conveyor.http`), for operators who may not reach Redis.
Both sit behind one interface, so each command is written once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from ..client import AsyncClient
from ..errors import ConveyorError
from ..storage.records import DeadLetter, WorkflowStatus
from .common import fail, settings_from

if TYPE_CHECKING:  # httpx is loaded only when a command needs conveyor.http
    from ..http import AsyncHttpClient
    from ..http.core import Event, WorkflowPage

T = TypeVar("T")

#: How long one blocking read of the event stream waits before checking whether the workflow
#: ended without an `end` event (its workers run with event streams off), ms.
FOLLOW_BLOCK_MS = 5_000
#: Without --follow the API's stream never says "that was all so far": it is read until it
#: has been quiet this long (seconds; the first event may take a connection longer).
FIRST_EVENT_WAIT = 5.0
QUIET = 1.0
#: The statuses of a workflow that has ended.
ENDED = ("completed", "failed", "cancelled")


class Backend(Protocol):
    async def start(
        self, workflow: str, input: Any, *, idempotency_key: str | None,
        delay: float | None, max_steps: int | None,
    ) -> str: ...  # fmt: skip
    async def status(self, workflow_id: str) -> WorkflowStatus: ...
    async def result(self, workflow_id: str, timeout: float | None = None) -> Any: ...
    async def cancel(self, workflow_id: str) -> str: ...
    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> str: ...
    async def list_workflows(
        self, *, name: str | None, status: str | None, limit: int, cursor: str | None
    ) -> WorkflowPage: ...
    def events(self, workflow_id: str, follow: bool) -> AsyncIterator[Event]: ...
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...
    async def replay(self, dead_letter_id: str) -> str: ...
    async def drop(self, dead_letter_id: str) -> None: ...


class RedisBackend:
    """The engine's own client, plus the read queries the API serves its listings from."""

    def __init__(self, client: AsyncClient) -> None:
        from ..storage.queries import Queries

        self.client = client
        self.queries = Queries(client.store)

    async def start(
        self, workflow: str, input: Any, *, idempotency_key: str | None,
        delay: float | None, max_steps: int | None,
    ) -> str:  # fmt: skip
        return await self.client.start(
            workflow, input, idempotency_key=idempotency_key, delay=delay, max_steps=max_steps
        )

    async def status(self, workflow_id: str) -> WorkflowStatus:
        return await self.client.status(workflow_id)

    async def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        return await self.client.result(workflow_id, timeout)

    async def cancel(self, workflow_id: str) -> str:
        return await self.client.cancel(workflow_id)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> str:
        return await self.client.signal(workflow_id, name, payload)

    async def list_workflows(
        self, *, name: str | None, status: str | None, limit: int, cursor: str | None
    ) -> WorkflowPage:
        from ..http.core import WorkflowPage

        try:
            page = await self.queries.workflows(name, status, limit, cursor)
        except ValueError as exc:  # a malformed cursor
            raise ConveyorError(str(exc)) from None
        return WorkflowPage(page.items, page.cursor)

    async def events(self, workflow_id: str, follow: bool) -> AsyncIterator[Event]:
        # the SSE route's encoding, so both paths print the same events
        import orjson

        from ..api.sse import _data
        from ..http.core import Event

        # WorkflowNotFoundError for an unknown id; once it has ended, nothing more will come
        finished = (await self.client.status(workflow_id)).status in ENDED
        last = "0"
        while True:
            block = FOLLOW_BLOCK_MS if follow and not finished else None
            batch = await self.queries.events(workflow_id, last, block)
            for entry_id, fields in batch:
                kind, data = _data(fields, redact=False)
                last = entry_id
                yield Event(entry_id, kind, orjson.loads(data))
                if kind == "end":
                    return
            if batch:
                continue
            if not follow or finished:
                return
            # ended without an `end` event (event streams off)? one more read, then stop
            finished = (await self.client.status(workflow_id)).status in ENDED

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self.client.dead_letters(limit)

    async def replay(self, dead_letter_id: str) -> str:
        return await self.client.replay(dead_letter_id)

    async def drop(self, dead_letter_id: str) -> None:
        await self.client.drop(dead_letter_id)


class ApiBackend:
    """The HTTP client: the same calls over the API's routes."""

    def __init__(self, client: AsyncHttpClient) -> None:
        self.client = client

    async def start(
        self, workflow: str, input: Any, *, idempotency_key: str | None,
        delay: float | None, max_steps: int | None,
    ) -> str:  # fmt: skip
        return await self.client.start(
            workflow, input, idempotency_key=idempotency_key, delay=delay, max_steps=max_steps
        )

    async def status(self, workflow_id: str) -> WorkflowStatus:
        return await self.client.status(workflow_id)

    async def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        return await self.client.result(workflow_id, timeout)

    async def cancel(self, workflow_id: str) -> str:
        return await self.client.cancel(workflow_id)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> str:
        return await self.client.signal(workflow_id, name, payload)

    async def list_workflows(
        self, *, name: str | None, status: str | None, limit: int, cursor: str | None
    ) -> WorkflowPage:
        return await self.client.list_workflows(
            name=name, status=status, limit=limit, cursor=cursor
        )

    async def events(self, workflow_id: str, follow: bool) -> AsyncIterator[Event]:
        # an async generator: aclose() ends its HTTP stream when we stop early
        stream = cast("AsyncGenerator[Event, None]", self.client.events(workflow_id))
        if follow and (await self.client.status(workflow_id)).status not in ENDED:
            # until its `end` event (a finished one is read as without --follow: when its
            # workers ran with event streams off, the API's stream never ends)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    yield event
            return
        wait = FIRST_EVENT_WAIT
        async with contextlib.aclosing(stream):
            while True:
                try:
                    event = await asyncio.wait_for(anext(stream), wait)
                except (TimeoutError, StopAsyncIteration):
                    return
                yield event
                wait = QUIET

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self.client.dead_letters(limit)

    async def replay(self, dead_letter_id: str) -> str:
        return await self.client.replay(dead_letter_id)

    async def drop(self, dead_letter_id: str) -> None:
        raise ConveyorError("the HTTP API has no route to drop dead letters: use Redis")


@dataclass(frozen=True, slots=True)
class Target:
    """What a command talks to: the API when ``api`` is set, else Redis."""

    redis_url: str | None = None
    namespace: str | None = None
    partitions: int | None = None
    api: str | None = None
    api_key: str | None = None


@contextlib.asynccontextmanager
async def connect(target: Target) -> AsyncIterator[Backend]:
    if target.api is None:
        settings = settings_from(target.redis_url, target.namespace, target.partitions)
        async with AsyncClient(
            settings.redis_url, settings.namespace, partitions=settings.partitions
        ) as client:
            yield RedisBackend(client)
        return
    from ..http import AsyncHttpClient

    async with AsyncHttpClient(_checked_url(target.api), target.api_key) as http:
        yield ApiBackend(http)


def _checked_url(api: str) -> str:
    """``api``, or one error line: httpx would fail on some bad URLs only when it connects,
    and not always with an error of its own."""
    import httpx

    try:
        url = httpx.URL(api)
    except httpx.InvalidURL as exc:
        fail(f"--api {api!r} is not a valid URL: {exc}")
    if url.scheme not in ("http", "https") or not url.host:
        fail(f"--api must be an http:// or https:// URL, not {api!r}")
    if url.port is not None and not 0 < url.port < 65536:
        fail(f"--api {api!r}: the port must be 1 to 65535")
    return api


def run_on(target: Target, action: Callable[[Backend], Coroutine[Any, Any, T]]) -> T:
    """Run ``action`` on the backend ``target`` names, in a fresh event loop."""

    async def go() -> T:
        async with connect(target) as backend:
            return await action(backend)

    return asyncio.run(go())
