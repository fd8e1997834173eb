"""The ``ctx`` object every step receives."""

from __future__ import annotations

import time
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StepContext:
    """What a running step knows about itself.

    Attributes:
        workflow_id: id of the workflow run.
        workflow: workflow name.
        step: step name.
        task: sequence number of this task within the workflow (1 for the first step).
        attempt: attempt number, from 1; retries and crashed deliveries both count.
        state: per-workflow mapping; changes are persisted atomically with the step's
            successful completion (discarded when the step fails).
        deadline: wall-clock time (``time.time()``) by which the step must finish, or None.
        worker: name of the worker running the step.
        request_id: correlation id given at start, if any.
        cancelled: True once the workflow was cancelled while this step runs: stop early;
            whatever the step returns is discarded.
    """

    workflow_id: str
    workflow: str
    step: str
    task: int
    attempt: int
    state: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    worker: str = ""
    request_id: str | None = None
    #: the worker's mirror of workflows that stopped early (read by ``cancelled``)
    stopped_workflows: Container[str] | None = field(default=None, repr=False)
    charged: float | None = field(default=None, repr=False)
    emitter: Any = field(default=None, repr=False)
    emitted: int = field(default=0, repr=False)

    def emit(self, data: Any) -> None:
        """Stream ``data`` (JSON) to whoever follows this workflow's events (the HTTP API's
        ``/events`` route): model tokens, progress. Returns at once; works from sync and
        async steps. The events come before the step's own end on the stream; a retried
        attempt emits again (each event carries its attempt)."""
        if self.emitter is None:
            raise RuntimeError("ctx.emit is only available inside a running worker")
        self.emitter.emit(self.workflow_id, self.step, self.task, self.attempt, data)
        self.emitted += 1

    @property
    def cancelled(self) -> bool:
        return self.stopped_workflows is not None and self.workflow_id in self.stopped_workflows

    def charge(self, units: float) -> None:
        """Report what this step really used of its rate limit (``Limit`` with a cost, e.g.
        tokens of a model call). The estimate charged before the step is replaced by the
        total reported here once the step completes."""
        if units < 0:
            raise ValueError(f"ctx.charge({units}): units must be >= 0")
        self.charged = (self.charged or 0.0) + units

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries of this task: use it for outside side effects."""
        return f"{self.workflow_id}:{self.task}"

    @property
    def time_left(self) -> float | None:
        """Seconds until the deadline, or None when the step has no timeout."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())


@dataclass(slots=True)
class BatchContext:
    """What a batched step (``batch_size=``) receives instead of one ``ctx``: one
    :class:`StepContext` per input, in the order of the inputs list."""

    items: list[StepContext]
    step: str
    workflow: str
    worker: str = ""
    deadline: float | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def time_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.time())
