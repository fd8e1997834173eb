"""Conveyor: durable, high-throughput agentic workflows on Redis Streams."""

from .app import App
from .client import AsyncClient, Client
from .errors import (
    BackPressureError,
    ConfigurationError,
    ConveyorError,
    DeadLetterNotFoundError,
    DefinitionError,
    NonRetryableError,
    RateLimited,
    ReplayError,
    ResultTimeoutError,
    Retry,
    SignalError,
    StepBudgetExceededError,
    StepInputError,
    UnknownWorkflowError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from .limits import Limit
from .settings import Settings
from .storage.records import DeadLetter, StepError, StepRecord, WaitInfo, WorkflowStatus
from .worker import Worker
from .workflow import (
    BatchContext,
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

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "BackPressureError",
    "BatchContext",
    "Client",
    "ConfigurationError",
    "ConveyorError",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "DefinitionError",
    "Limit",
    "NonRetryableError",
    "RateLimited",
    "ReplayError",
    "ResultTimeoutError",
    "Retry",
    "RetryPolicy",
    "Settings",
    "SignalError",
    "Step",
    "StepBudgetExceededError",
    "StepContext",
    "StepError",
    "StepInputError",
    "StepRecord",
    "UnknownWorkflowError",
    "WaitInfo",
    "Worker",
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
