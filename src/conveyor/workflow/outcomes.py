"""What a step returns to choose what happens next: ``goto(step, input)`` or ``done(value)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .definition import Step


@dataclass(frozen=True, slots=True)
class Goto:
    """Continue the workflow with ``step``, passing it ``input``."""

    step: str
    input: Any = None
    workflow: str | None = None  # set when the target was given as a Step object


@dataclass(frozen=True, slots=True)
class Done:
    """Finish the workflow with ``value`` as its result."""

    value: Any = None


def goto(step: Step | str, input: Any = None) -> Goto:
    """Continue with ``step`` (a step of the same workflow, or its name) and ``input``."""
    from .definition import Step

    if isinstance(step, Step):
        return Goto(step.name, input, step.workflow_name)
    if isinstance(step, str):
        return Goto(step, input)
    raise TypeError(f"goto() takes a step or a step name, not {type(step).__name__}")


def done(value: Any = None) -> Done:
    """Finish the workflow now with ``value`` as its result."""
    return Done(value)
