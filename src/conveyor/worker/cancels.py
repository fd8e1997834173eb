"""Which workflows stopped early (cancelled, or failed with tasks possibly left), mirrored
in the worker so its tasks are dropped unrun (after one HEXISTS that tells a replayed
workflow's active task from a stale one) and its running steps see ``ctx.cancelled``; other
tasks pay nothing.

The stopped sets (one per partition, see Keys.stopped) hold every such workflow for the
retention period; each addition ('stop <id>') and each removal by a replay ('resume <id>')
is PUBLISHed on a channel of the same name. The worker
subscribes first and then loads the sets, at start and after every reconnect, so nothing
announced while it was away is missed. A task read in the instant before the announcement
arrives runs; its result is discarded at commit all the same (its task is no longer active).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..storage.store import Store, Subscription, now_ms
from .resilience import Backoff

log = logging.getLogger("conveyor.worker")

PRUNE_ABOVE = 100_000  # forget entries past the retention once the mirror grows this big


class StoppedWorkflows:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.ids: dict[str, int] = {}  # workflow id -> when it stopped (ms)
        partitions = range(store.settings.partitions)
        self.channels = [store.keys.stopped_channel(p) for p in partitions]
        self.subscription: Subscription | None = None

    def __contains__(self, workflow_id: object) -> bool:
        return workflow_id in self.ids

    async def start(self) -> None:
        """Subscribe, then load what stopped within the retention period (once: after that,
        :meth:`run` resubscribes and reloads by itself when its connection drops)."""
        if self.subscription is not None:
            return
        self.subscription = self.store.subscription()
        await self.subscription.subscribe(*self.channels)
        since = now_ms() - int(self.store.settings.retention * 1000)
        self.ids = await self.store.stopped_since(since)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(cap=2.0)
        while not stop.is_set():
            try:
                if self.subscription is None:
                    await self.start()
                    assert self.subscription is not None
                message = await self.subscription.message(timeout=0.5)
                backoff.reset()
                if message is not None:
                    self._apply(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._close()  # resubscribe and reload: a message may have been lost
                await backoff.wait("listening for stopped workflows", exc)
        await self._close()

    def _apply(self, text: str) -> None:
        """'stop <id>' (cancelled or failed) or 'resume <id>' (replayed from dead letters)."""
        what, _, workflow_id = text.partition(" ")
        if what == "stop":
            self.ids[workflow_id] = now_ms()
            if len(self.ids) > PRUNE_ABOVE:
                self._prune()
        elif what == "resume":
            self.ids.pop(workflow_id, None)

    def resumed(self, workflow_id: str) -> None:
        """The workflow runs again (replayed): found before its 'resume' message arrived."""
        self.ids.pop(workflow_id, None)

    def _prune(self) -> None:
        oldest = now_ms() - int(self.store.settings.retention * 1000)
        self.ids = {i: at for i, at in self.ids.items() if at >= oldest}

    async def _close(self) -> None:
        if self.subscription is not None:
            subscription, self.subscription = self.subscription, None
            with contextlib.suppress(Exception):
                await subscription.close()
