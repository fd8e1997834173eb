"""A workflow run's status, and what a finished one means to a caller.

The status is the ``status`` field of a workflow's state hash, written by the Lua scripts
(``start``, ``commit``, ``cancel``, ``signal``, ``claim``, ``replay``) and read by both
clients: the Redis client decodes the hash (``storage/records.py``), the HTTP client the
API's JSON. Both turn a finished status into a value or an exception with
:func:`outcome_error`.

Like :mod:`conveyor.errors`, this module imports nothing beyond the standard library.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .errors import (
    DeliveryLimitExceededError,
    StepBudgetExceededError,
    WorkflowCancelledError,
    WorkflowFailedError,
)


class RunStatus(StrEnum):
    """Where a workflow run stands. A ``str``: ``RunStatus.COMPLETED == "completed"``."""

    RUNNING = "running"  # a task of it is queued, delayed or running
    WAITING = "waiting"  # it waits for a signal (and nothing else of it runs)
    COMPLETED = "completed"  # finished with a result
    FAILED = "failed"  # finished with an error (a step failed for good, or its budget)
    CANCELLED = "cancelled"  # finished by a cancel

    @property
    def finished(self) -> bool:
        """Whether the run has ended (completed, failed or cancelled)."""
        return self in FINISHED


#: The statuses of a run that has ended.
FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

#: Failures the engine decided (not a step's own exception), by ``error["type"]``: ``result``
#: raises these subclasses of WorkflowFailedError for them.
_FAILURES: dict[str, type[WorkflowFailedError]] = {
    StepBudgetExceededError.error_type: StepBudgetExceededError,
    DeliveryLimitExceededError.error_type: DeliveryLimitExceededError,
}


def outcome_error(
    workflow_id: str, status: str, error: dict[str, Any] | None
) -> WorkflowFailedError | WorkflowCancelledError | None:
    """The exception ``result()`` raises for a finished workflow, or None when it completed
    (its result is the value). ``error`` is the workflow's error record (``type``,
    ``message``, ``step``, ...) when it failed."""
    if status == RunStatus.COMPLETED:
        return None
    if status == RunStatus.FAILED:
        error = error or {}
        kind = error.get("type")
        failure = _FAILURES.get(kind) if isinstance(kind, str) else None
        return (failure or WorkflowFailedError)(workflow_id, error)
    return WorkflowCancelledError(f"workflow {workflow_id} was cancelled")
