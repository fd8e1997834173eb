"""The ``ctx`` object every step receives."""

from __future__ import annotations

import time
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

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries of this task: use it for outside side effects."""
        return f"{self.workflow_id}:{self.task}"

    @property
    def time_left(self) -> float | None:
        """Seconds until the deadline, or None when the step has no timeout."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())
