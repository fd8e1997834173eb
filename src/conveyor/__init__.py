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
    ReplayError,
    ResultTimeoutError,
    Retry,
    StepInputError,
    UnknownWorkflowError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from .settings import Settings
from .storage.records import DeadLetter, StepError, StepRecord, WorkflowStatus
from .worker import Worker
from .workflow import RetryPolicy, Step, StepContext, Workflow, done, goto

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "BackPressureError",
    "Client",
    "ConfigurationError",
    "ConveyorError",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "DefinitionError",
    "NonRetryableError",
    "ReplayError",
    "ResultTimeoutError",
    "Retry",
    "RetryPolicy",
    "Settings",
    "Step",
    "StepContext",
    "StepError",
    "StepInputError",
    "StepRecord",
    "UnknownWorkflowError",
    "Worker",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowNotFoundError",
    "WorkflowStatus",
    "__version__",
    "done",
    "goto",
]
