"""Conveyor: durable, high-throughput agentic workflows on Redis Streams.

The errors, the run status and the read models are imported with the package; everything
that needs the engine (redis, telemetry) is imported at its first use, through the module
``__getattr__`` below. So ``import conveyor.http`` works where only httpx and pydantic are
installed, and ``from conveyor import App`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BackPressureError,
    BatchResultError,
    ConfigurationError,
    ConveyorError,
    DeadLetterNotFoundError,
    DefinitionError,
    DeliveryLimitExceededError,
    NonRetryableError,
    OutboundBlockedError,
    RateLimited,
    ReplayError,
    ReplicationError,
    ResultEncodingError,
    ResultTimeoutError,
    Retry,
    SignalError,
    StepBudgetExceededError,
    StepInputError,
    StepTimeoutError,
    UnknownStepError,
    UnknownWorkflowError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from .models import DeadLetter, StepError, StepRecord, WaitInfo, WorkflowStatus
from .status import RunStatus

if TYPE_CHECKING:
    from .app import App
    from .client import AsyncClient, Client
    from .limits import Limit
    from .settings import Settings
    from .worker import Worker, WorkerListener
    from .workflow import (
        BatchContext,
        OutcomeKind,
        RetryPolicy,
        Step,
        StepContext,
        Workflow,
        done,
        error_of,
        fan_out,
        goto,
        is_timeout,
        sleep,
        start_child,
        wait,
    )

#: Public names imported at first use, by the module that defines them.
_LAZY = {
    "App": ".app",
    "AsyncClient": ".client",
    "Client": ".client",
    "Limit": ".limits",
    "Settings": ".settings",
    "Worker": ".worker",
    "WorkerListener": ".worker",
    **dict.fromkeys(
        [
            "BatchContext", "OutcomeKind", "RetryPolicy", "Step", "StepContext", "Workflow",
            "done", "error_of", "fan_out", "goto", "is_timeout", "sleep", "start_child", "wait",
        ],
        ".workflow",
    ),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "BackPressureError",
    "BatchContext",
    "BatchResultError",
    "Client",
    "ConfigurationError",
    "ConveyorError",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "DefinitionError",
    "DeliveryLimitExceededError",
    "Limit",
    "NonRetryableError",
    "OutboundBlockedError",
    "OutcomeKind",
    "RateLimited",
    "ReplayError",
    "ReplicationError",
    "ResultEncodingError",
    "ResultTimeoutError",
    "Retry",
    "RetryPolicy",
    "RunStatus",
    "Settings",
    "SignalError",
    "Step",
    "StepBudgetExceededError",
    "StepContext",
    "StepError",
    "StepInputError",
    "StepRecord",
    "StepTimeoutError",
    "UnknownStepError",
    "UnknownWorkflowError",
    "WaitInfo",
    "Worker",
    "WorkerListener",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowNotFoundError",
    "WorkflowStatus",
    "__version__",
    "done",
    "error_of",
    "fan_out",
    "goto",
    "is_timeout",
    "sleep",
    "start_child",
    "wait",
]
