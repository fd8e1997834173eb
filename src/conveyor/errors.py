"""Exception hierarchy: every error Conveyor raises derives from ``ConveyorError``.

``Retry`` and ``NonRetryableError`` are the two control-flow signals a step may raise. The
errors a worker records in a failed attempt (``StepTimeoutError``, ``UnknownStepError``, ...)
are classes here too, so a caller can compare ``error.type`` with their names.

This module imports nothing beyond the standard library (the HTTP client uses it).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar

#: Error type of a workflow that reached its ``max_steps`` budget (written by lib.lua, which
#: spells it once as ``STEP_BUDGET_EXCEEDED``; tests/lua/test_layout.py checks the two agree).
STEP_BUDGET_EXCEEDED = "StepBudgetExceeded"
#: Error type of a task dead-lettered unrun: delivered more than ``max_deliveries`` times.
DELIVERY_LIMIT_EXCEEDED = "DeliveryLimitExceeded"


class ConveyorError(Exception):
    """Root of every Conveyor error."""


class DefinitionError(ConveyorError):
    """A workflow is defined wrongly (raised at import / definition time)."""


class ConfigurationError(ConveyorError):
    """Settings are inconsistent (for example a partition count that differs from Redis)."""


class UnknownWorkflowError(ConveyorError):
    """No workflow of that name is registered."""


class WorkflowNotFoundError(ConveyorError):
    """No workflow with that id exists (never started, or its state expired)."""


class BackPressureError(ConveyorError):
    """The backlog is past its configured bound; retry the start later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReplicationError(ConveyorError):
    """In ``durability="replicated"`` mode, replicas did not confirm a write in time.

    The write reached the master and may or may not survive a failover. Retrying is safe
    with the same idempotency key (a start) and for transitions (they are idempotent)."""

    def __init__(self, message: str, wanted: int, confirmed: int = 0) -> None:
        super().__init__(message)
        self.wanted = wanted
        self.confirmed = confirmed
        self.retry_after = 1.0


class WorkflowFailedError(ConveyorError):
    """The workflow failed; ``error`` carries the failing step's type, message and traceback."""

    def __init__(self, workflow_id: str, error: dict[str, Any]) -> None:
        step = error.get("step", "?")
        super().__init__(
            f"workflow {workflow_id} failed in step {step!r}: "
            f"{error.get('type', 'Error')}: {error.get('message', '')}"
        )
        self.workflow_id = workflow_id
        self.error = error


class WorkflowCancelledError(ConveyorError):
    """The workflow was cancelled before it finished."""


class ResultTimeoutError(ConveyorError, TimeoutError):
    """The workflow did not finish within the time the caller was willing to wait."""


class DeadLetterNotFoundError(ConveyorError):
    """No dead-letter entry with that id."""


class ReplayError(ConveyorError):
    """A dead-letter entry cannot be replayed (its workflow state is gone or not failed)."""


class StepInputError(ConveyorError):
    """A step's input failed validation against its annotated pydantic model."""


class NonRetryableError(ConveyorError):
    """Raise from a step to fail it at once, skipping any remaining retries."""


class Retry(ConveyorError):
    """Raise from a step to retry it after ``delay`` seconds (counts as an attempt)."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay


class RateLimited(ConveyorError):
    """Raise from a step when an outside API refused it for rate (an HTTP 429 with
    Retry-After): the step's shared rate limit is pushed back by ``retry_after`` seconds, so
    every worker slows down, and the task runs again later. It is not counted as a failure."""

    def __init__(self, retry_after: float, reason: str = "rate limited") -> None:
        super().__init__(f"{reason} (retry after {retry_after:g}s)")
        self.retry_after = max(0.0, float(retry_after))


class StepBudgetExceededError(WorkflowFailedError):
    """The workflow failed because it reached its ``max_steps`` budget (a runaway loop?).
    Raised by ``result()``; a WorkflowFailedError, so code catching that sees it too. Its
    ``error["type"]`` is ``"StepBudgetExceeded"`` (:attr:`error_type`)."""

    error_type: ClassVar[str] = STEP_BUDGET_EXCEEDED


class DeliveryLimitExceededError(WorkflowFailedError):
    """The workflow failed because a task of it was delivered more than ``max_deliveries``
    times (its step may crash workers) and was dead-lettered without running again. Raised by
    ``result()``; a WorkflowFailedError. Its ``error["type"]`` is ``"DeliveryLimitExceeded"``
    (:attr:`error_type`, the name recorded in history and dead letters)."""

    error_type: ClassVar[str] = DELIVERY_LIMIT_EXCEEDED


#: The name the error type is recorded under (``error.type``).
DeliveryLimitExceeded = DeliveryLimitExceededError


class StepTimeoutError(ConveyorError):
    """A step ran past its ``timeout`` (recorded as the attempt's error; retried)."""


class BatchResultError(ConveyorError):
    """A batched step returned something other than one result per input (not retried)."""


class UnknownStepError(ConveyorError):
    """A task names a workflow or step this worker's app does not define (not retried)."""


class ResultEncodingError(ConveyorError):
    """A step returned something that cannot be encoded as JSON (not retried)."""


class SignalError(ConveyorError):
    """A signal could not be delivered (the workflow finished, or bad arguments)."""


class OutboundBlockedError(NonRetryableError):
    """An outbound HTTP request (:mod:`conveyor.outbound`) was refused before connecting:
    ``host`` resolved to ``address``, which is ``reason`` (loopback, private, link-local,
    cloud metadata, ...) and not allowed by the policy. A step that raises it fails at once:
    retrying cannot help."""

    def __init__(self, host: str, port: int, address: str, reason: str) -> None:
        target = f"{host}:{port}" if address == host else f"{host}:{port} ({address})"
        super().__init__(
            f"outbound request to {target} refused: {address} is {reason} (allow it with "
            "OutboundPolicy(allow_hosts=...) or allow_networks=...)"
        )
        self.host = host
        self.port = port
        self.address = address
        self.reason = reason

    def __reduce__(self) -> tuple[type[OutboundBlockedError], tuple[str, int, str, str]]:
        return type(self), (self.host, self.port, self.address, self.reason)


class ScriptCode(IntEnum):
    """Stable result codes returned by the Lua transition scripts."""

    OK = 0
    DUPLICATE = 1  # the task was already done: the entry was ACKed and dropped
    BACKPRESSURE = 2  # the partition's stream is past its bound: nothing written
    NOT_FOUND = 3  # the workflow (or dead-letter entry) does not exist
    NOT_FAILED = 4  # replay of a workflow that is not in the failed state
    FINISHED = 5  # the workflow already finished (cancel of a finished workflow)
    CHANGED = 6  # what the caller read before the call changed meanwhile: read again
    ENDED_COMPLETED = 7  # committed, and the transition completed its workflow
    ENDED_FAILED = 8  # committed, and the transition failed its workflow
