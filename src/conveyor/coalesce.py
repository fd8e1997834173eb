"""Coalesces concurrent calls into pipelines (design rule 5: round trips are the cost). A lone
call goes out at once, from the caller itself; calls made while a pipeline is in flight go
together in the next one, so a burst costs a few round trips instead of one each. Used for
starts (the client) and for the HTTP API's rate-limit checks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from .storage.errors import RedisConnectionError

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 512


class Coalescer(Generic[T, R]):
    """``send_many(items)`` returns one result per item, or an exception in its place (raised
    to that caller alone); an exception it raises goes to every caller of the batch."""

    def __init__(self, send_many: Callable[[list[T]], Awaitable[Sequence[R | Exception]]]) -> None:
        self.send_many = send_many
        self.pending: list[tuple[T, asyncio.Future[R]]] = []
        self.busy = False  # a pipeline is in flight
        self.flusher: asyncio.Task[None] | None = None

    async def call(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if not self.busy:
            await self._send_pending(future)  # no extra hop for a lone call
        return await future

    async def _flush(self) -> None:
        while self.pending and not self.busy:
            await self._send_pending()

    async def _send_pending(self, own: asyncio.Future[R] | None = None) -> None:
        self.busy = True
        batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
        try:
            results = await self.send_many([item for item, _ in batch])
        except Exception as exc:  # Redis unreachable, ...: each caller gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            # The sending caller was cancelled (a timeout around its call): its own future
            # goes with it, but the others of the batch must not wait forever. Whether the
            # pipeline ran is unknown, as after a dropped connection: the same error, which
            # callers retry (a start with its idempotency key runs once).
            for _, future in batch:
                if future is own:
                    future.cancel()
                elif not future.done():
                    future.set_exception(
                        RedisConnectionError("the call was interrupted: its result is unknown")
                    )
            raise
        finally:
            self.busy = False
            # calls that arrived meanwhile: one task sends them (the callers just wait)
            if self.pending and (self.flusher is None or self.flusher.done()):
                self.flusher = asyncio.create_task(self._flush(), name="conveyor-coalesce")
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
