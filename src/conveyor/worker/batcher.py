"""Micro-batching: collects admitted tasks of a batched step (``batch_size=``) from any number
of workflows and hands them to the step together, when the batch is full or its oldest task
has waited ``batch_wait_ms``. Each task then moves on by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..storage.records import Task
from ..workflow import Step


class Batcher:
    def __init__(self, step: Step, launch: Callable[[Step, list[Task]], None]) -> None:
        self.step = step
        self.size = step.batch_size or 1
        self.launch = launch
        self.items: list[Task] = []
        self.timer: asyncio.TimerHandle | None = None

    def add(self, task: Task) -> None:
        self.items.append(task)
        if len(self.items) >= self.size:
            self.flush()
        elif self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.step.batch_wait_ms / 1000, self.flush)

    def flush(self) -> None:
        """Launch everything collected, in batches of at most ``batch_size``."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.items:
            batch, self.items = self.items[: self.size], self.items[self.size :]
            self.launch(self.step, batch)

    def __len__(self) -> int:
        return len(self.items)
