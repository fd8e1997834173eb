"""Coalesces concurrent starts of one client into pipelines (design rule 5: round trips are
the cost). A lone start goes out at once, from the caller itself; starts made while a
pipeline is in flight go together in the next one, so a burst costs a few round trips
instead of one each."""

from __future__ import annotations

import asyncio

from .storage.store import StartRequest, Store

MAX_BATCH = 512


class StartCoalescer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: list[tuple[StartRequest, asyncio.Future[tuple[str, bool]]]] = []
        self.busy = False  # a pipeline is in flight
        self.flusher: asyncio.Task[None] | None = None

    async def start(self, request: StartRequest) -> tuple[str, bool]:
        future: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        if not self.busy:
            await self._send_pending()  # no extra hop for a lone start
        return await future

    async def _flush(self) -> None:
        while self.pending and not self.busy:
            await self._send_pending()

    async def _send_pending(self) -> None:
        self.busy = True
        batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
        try:
            results = await self.store.start_many([request for request, _ in batch])
        except Exception as exc:  # Redis unreachable, ...: each caller gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self.busy = False
            # starts that arrived meanwhile: one task sends them (the callers just wait)
            if self.pending and (self.flusher is None or self.flusher.done()):
                self.flusher = asyncio.create_task(self._flush(), name="conveyor-starts")
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
