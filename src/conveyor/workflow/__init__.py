"""Pure workflow definitions: no I/O happens in this package."""

from .context import StepContext
from .definition import DEFAULT_QUEUE, Step, Workflow
from .outcomes import Done, Goto, done, goto
from .policy import RetryPolicy, compute_backoff

__all__ = [
    "DEFAULT_QUEUE",
    "Done",
    "Goto",
    "RetryPolicy",
    "Step",
    "StepContext",
    "Workflow",
    "compute_backoff",
    "done",
    "goto",
]
