"""What steps stream while they run (``ctx.emit(data)``: model tokens, progress), appended to
the workflow's event stream, where the HTTP API's SSE route reads it.

Emits from any thread are queued on the event loop and written at once, in pipelined
batches (whatever was emitted while the previous batch was in flight), so followers see
tokens as they come. A step's outcome is committed only after its emits are written, so on
the event stream a step's emits always come before the record of its end. Emits are
at-least-once like the step itself: a retried attempt emits again (each event names its
attempt).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import codec
from ..storage.store import Store

log = logging.getLogger("conveyor.worker")


class Emitter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: list[tuple[str, list[Any]]] = []
        self._lock = asyncio.Lock()  # one batch in flight: events keep their order
        self._flusher: asyncio.Task[None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def emit(self, workflow_id: str, step: str, task: int, attempt: int, data: Any) -> None:
        """Queue one event; callable from the loop or from a step's thread. With event
        streams off (``Settings.events``) nothing is written."""
        payload = codec.dumps(data)  # a TypeError reaches the step at once
        if not self.store.settings.events:
            return
        fields = ["type", "emit", "step", step, "task", task, "attempt", attempt, "data", payload]
        if self.loop is None:
            raise RuntimeError("ctx.emit is only available inside a running worker")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._add(workflow_id, fields)
        else:
            self.loop.call_soon_threadsafe(self._add, workflow_id, fields)

    def _add(self, workflow_id: str, fields: list[Any]) -> None:
        self.pending.append((workflow_id, fields))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self.drain(), name="conveyor-emits")

    async def drain(self) -> None:
        """Write everything queued so far (also called before a step's outcome is committed,
        so its emits are on the stream first)."""
        async with self._lock:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    await self.store.workers.append_events(batch)
                except Exception as exc:  # best effort: an outage loses emits, not a transition
                    log.warning("writing %d emitted events failed: %s", len(batch), exc)
