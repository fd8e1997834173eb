"""``conveyor worker --autoscale MIN:MAX``: worker processes on one machine, grown and shrunk
on the queue backlog with the HPA's algorithm (:mod:`.hpa`).

The signal is the one a cluster's HPA reads from ``conveyor exporter``:
``conveyor_queue_backlog``, the tasks of the worker's queues not acknowledged yet (stream
lag + pending), summed. The supervisor reads it straight from Redis with the exporter's
snapshot, every ``interval`` seconds, and keeps ``target`` tasks per process.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError
from ..settings import Settings
from ..storage.connection import connect
from ..storage.errors import UNAVAILABLE, RedisError
from ..storage.snapshot import queue_snapshot
from ..storage.store import Store
from .hpa import DEFAULT_BEHAVIOR, Autoscaler, Behavior

__all__ = ["AutoscaleOptions", "BacklogSignal", "LocalAutoscaler", "parse_range"]

log = logging.getLogger("conveyor.autoscale")


@dataclass(frozen=True)
class AutoscaleOptions:
    """``--autoscale MIN:MAX`` and its tuning options; defaults as the Helm chart's HPA."""

    min: int
    max: int
    target: float  # backlog per process (the CLI's default: hpa.default_target)
    interval: float = 15.0  # seconds between syncs (the HPA's sync period)
    up_window: float = DEFAULT_BEHAVIOR.scale_up.stabilization_window
    down_window: float = DEFAULT_BEHAVIOR.scale_down.stabilization_window

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ConfigurationError("the autoscale interval must be above 0 seconds")
        self.behavior()  # refuses a negative window now, before any process starts

    def behavior(self) -> Behavior:
        return DEFAULT_BEHAVIOR.with_windows(self.up_window, self.down_window)


def parse_range(text: str) -> tuple[int, int]:
    """``"2:8"`` -> (2, 8); a readable error for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise ConfigurationError(f"--autoscale takes MIN:MAX, e.g. 1:8 (got {text!r})")
    low, high = int(match[1]), int(match[2])
    if low < 1 or high < low:
        raise ConfigurationError(f"--autoscale needs 1 <= MIN <= MAX (got {text!r})")
    return low, high


class BacklogSignal:
    """Reads the backlog of some queues from Redis, for a synchronous caller (the
    supervisor), over one connection kept in its own event loop."""

    def __init__(self, settings: Settings, queues: Sequence[str]) -> None:
        self.settings = settings
        self.queues = list(queues)
        self._runner = asyncio.Runner()
        self._store: Store | None = None

    def read(self) -> int | None:
        """The backlog now; None while Redis cannot be read (the caller keeps its count)."""
        try:
            return self._runner.run(asyncio.wait_for(self._read(), timeout=5))
        except (*UNAVAILABLE, RedisError) as exc:
            log.warning("autoscale: cannot read the backlog: %s", str(exc) or type(exc).__name__)
            return None

    async def _read(self) -> int:
        if self._store is None:
            self._store = Store(connect(self.settings.redis_url, max_connections=1), self.settings)
        snap = await queue_snapshot(self._store, self.queues)
        return sum(t.backlog for t in snap.totals())

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            self._runner.run(store.close())
        self._runner.close()


class LocalAutoscaler:
    """Decides the process count: call :meth:`poll` often; it syncs every ``interval``."""

    def __init__(
        self,
        options: AutoscaleOptions,
        read_backlog: Callable[[], int | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.read_backlog = read_backlog
        self.clock = clock
        self.hpa = Autoscaler(options.min, options.max, options.target, options.behavior())
        self._next_sync = clock() + options.interval

    def poll(self, current: int) -> int | None:
        """The process count to run now, given ``current`` asked for so far; None when it
        is not time to sync yet or the backlog could not be read."""
        now = self.clock()
        if now < self._next_sync:
            return None
        self._next_sync = now + self.options.interval
        backlog = self.read_backlog()
        if backlog is None:
            return None
        desired = self.hpa.desired(now, current, backlog)
        if desired != current:
            log.info(
                "autoscale: backlog %d for %d processes (target %g each): %d -> %d",
                backlog, current, self.options.target, current, desired,
            )  # fmt: skip
        return desired
