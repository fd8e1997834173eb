"""Pure workflow definitions: no I/O happens in this package."""

from .context import BatchContext, StepContext
from .definition import DEFAULT_MAX_STEPS, DEFAULT_QUEUE, Step, Workflow
from .outcomes import (
    Done,
    FanOut,
    Goto,
    OutcomeKind,
    Sleep,
    StartChild,
    Wait,
    done,
    error_of,
    fan_out,
    goto,
    is_timeout,
    sleep,
    start_child,
    wait,
)
from .policy import RetryPolicy, compute_backoff

__all__ = [
    "DEFAULT_MAX_STEPS",
    "DEFAULT_QUEUE",
    "BatchContext",
    "Done",
    "FanOut",
    "Goto",
    "OutcomeKind",
    "RetryPolicy",
    "Sleep",
    "StartChild",
    "Step",
    "StepContext",
    "Wait",
    "Workflow",
    "compute_backoff",
    "done",
    "error_of",
    "fan_out",
    "goto",
    "is_timeout",
    "sleep",
    "start_child",
    "wait",
]
