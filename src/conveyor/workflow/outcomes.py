"""What a step returns to choose what happens next.

``goto(step, input)`` and ``done(value)`` move one line of work on; ``fan_out`` splits it into
parallel branches joined in order; ``wait`` parks it until a signal (or a timeout); ``sleep``
resumes it later; ``start_child`` runs another workflow and resumes with its outcome. Each is
applied by the worker as one atomic transition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from ..errors import DefinitionError

if TYPE_CHECKING:
    from .definition import Step, Workflow

#: Key of the marker a ``wait``'s ``then`` step receives when the signal did not come in time.
TIMEOUT_KEY = "$timeout"
#: Key of the marker in a fan-out slot (``on_error="collect"``) or a child's failed outcome.
ERROR_KEY = "$error"


@dataclass(frozen=True, slots=True)
class Goto:
    """Continue the workflow with ``step``, passing it ``input``."""

    step: str
    input: Any = None
    workflow: str | None = None  # set when the target was given as a Step object


@dataclass(frozen=True, slots=True)
class Done:
    """Finish the workflow (or, inside a fan-out branch, the branch) with ``value``."""

    value: Any = None


@dataclass(frozen=True, slots=True)
class FanOut:
    """Run ``step`` once per item in parallel, then ``then`` once with the results in order."""

    step: str
    items: tuple[Any, ...]
    then: str
    max_parallel: int | None = None
    on_error: Literal["fail", "collect"] = "fail"
    workflows: tuple[str | None, str | None] = (None, None)


@dataclass(frozen=True, slots=True)
class Wait:
    """Park until ``signal`` arrives; ``then`` receives its payload (or the timeout marker)."""

    signal: str
    then: str
    timeout: float | None = None
    on_timeout: str | None = None
    workflows: tuple[str | None, str | None] = (None, None)


@dataclass(frozen=True, slots=True)
class Sleep:
    """Resume with ``then`` (given ``input``) after ``seconds``, durably."""

    seconds: float
    then: str
    input: Any = None
    workflow: str | None = None


@dataclass(frozen=True, slots=True)
class StartChild:
    """Run workflow ``child`` with ``input``; ``then`` receives its result (or its failure)."""

    child: str
    input: Any
    then: str
    max_steps: int | None = None
    workflow: str | None = None


Outcome = Goto | Done | FanOut | Wait | Sleep | StartChild


class OutcomeKind(StrEnum):
    """What became of one delivery of a task, as a worker commits it: the ``outcome`` of its
    step span, and what its counters (``Stats``, metrics) count. A ``str``:
    ``OutcomeKind.COMPLETED == "completed"``."""

    COMPLETED = "completed"  # the step ran and returned: the workflow moved on
    CACHED = "cached"  # completed from the step-result cache (cache_ttl), without running
    RETRIED = "retried"  # the attempt failed; the task runs again later
    DEAD = "dead"  # the attempt failed for good: dead-lettered, the workflow failed
    DEAD_UNRUN = "dead_unrun"  # delivered past max_deliveries: dead-lettered without running
    LIMITED = "limited"  # held back by a rate or concurrency limit: runs later, same attempt
    DROPPED = "dropped"  # not run: its task is no longer active (cancelled, stale timer)
    POISON = "poison"  # an entry that names no valid task: dead-lettered
    CANCELLED = "cancelled"  # the run was interrupted before it had an outcome (span only)


#: What a committed transition of each kind counts: the names of the worker's counters
#: (``Stats`` fields; the Prometheus step counters and cache-hit / poison counters map them).
#: A transition answered DUPLICATE counts as a duplicate instead; CANCELLED is never committed.
OUTCOME_COUNTS: dict[OutcomeKind, tuple[str, ...]] = {
    OutcomeKind.COMPLETED: ("completed",),
    OutcomeKind.CACHED: ("completed", "cached"),
    OutcomeKind.RETRIED: ("failed", "retried"),
    OutcomeKind.DEAD: ("failed", "dead"),  # it ran and failed for good
    OutcomeKind.DEAD_UNRUN: ("dead",),  # delivered too often (it may crash workers): not run
    OutcomeKind.LIMITED: ("limited",),
    OutcomeKind.DROPPED: ("dropped",),
    OutcomeKind.POISON: ("poison",),
    OutcomeKind.CANCELLED: (),
}


def _name(step: Step | str, what: str) -> tuple[str, str | None]:
    from .definition import Step

    if isinstance(step, Step):
        return step.name, step.workflow_name
    if isinstance(step, str):
        return step, None
    raise TypeError(f"{what} takes a step or a step name, not {type(step).__name__}")


def goto(step: Step | str, input: Any = None) -> Goto:
    """Continue with ``step`` (a step of the same workflow, or its name) and ``input``."""
    name, workflow = _name(step, "goto()")
    return Goto(name, input, workflow)


def done(value: Any = None) -> Done:
    """Finish the workflow now with ``value`` as its result. Inside a fan-out branch, finish
    the branch: ``value`` fills the branch's slot in the join's list."""
    return Done(value)


def fan_out(
    step: Step | str,
    items: Iterable[Any],
    *,
    then: Step | str,
    max_parallel: int | None = None,
    on_error: Literal["fail", "collect"] = "fail",
) -> FanOut:
    """Run ``step`` once per item, on any worker, then ``then`` once with the list of results
    in item order. At most ``max_parallel`` branches run at once (default: all). A branch that
    fails for good fails the workflow; with ``on_error="collect"`` its slot holds an error
    marker instead (see :func:`error_of`). Empty ``items`` goes straight to ``then`` with ``[]``.
    """
    branch, branch_wf = _name(step, "fan_out()")
    join, join_wf = _name(then, "fan_out(then=...)")
    if max_parallel is not None and max_parallel < 1:
        raise DefinitionError(f"fan_out(max_parallel={max_parallel}): must be at least 1")
    if on_error not in ("fail", "collect"):
        raise DefinitionError(f"fan_out(on_error={on_error!r}): use 'fail' or 'collect'")
    return FanOut(branch, tuple(items), join, max_parallel, on_error, (branch_wf, join_wf))


def wait(
    signal: str,
    *,
    then: Step | str,
    timeout: float | None = None,
    on_timeout: Step | str | None = None,
) -> Wait:
    """Park the workflow (status ``waiting``) until ``signal`` is sent to it; ``then`` receives
    the signal's payload. A signal sent before the wait is buffered and consumed by it. After
    ``timeout`` seconds ``then`` receives a timeout marker (see :func:`is_timeout`) instead, or
    ``on_timeout`` runs when given. A signal racing the timeout resolves exactly one way."""
    from .definition import check_name

    check_name("signal", signal)
    then_name, then_wf = _name(then, "wait(then=...)")
    timeout_name, timeout_wf = (None, None)
    if on_timeout is not None:
        timeout_name, timeout_wf = _name(on_timeout, "wait(on_timeout=...)")
    if timeout is not None and timeout < 0:
        raise DefinitionError(f"wait({signal!r}, timeout={timeout}): must be >= 0 seconds")
    if on_timeout is not None and timeout is None:
        raise DefinitionError(f"wait({signal!r}): on_timeout needs a timeout")
    return Wait(signal, then_name, timeout, timeout_name, (then_wf, timeout_wf))


def sleep(seconds: float, *, then: Step | str, input: Any = None) -> Sleep:
    """Resume with ``then`` (given ``input``) after ``seconds``. Durable: the timer lives in
    Redis, so it survives worker and Redis restarts (with persistence on)."""
    if seconds < 0:
        raise DefinitionError(f"sleep({seconds}): must be >= 0 seconds")
    name, workflow = _name(then, "sleep(then=...)")
    return Sleep(float(seconds), name, input, workflow)


def start_child(
    workflow: Workflow | str,
    input: Any = None,
    *,
    then: Step | str,
    max_steps: int | None = None,
) -> StartChild:
    """Start ``workflow`` (of the same app) as a child; ``then`` receives its result, or an
    error marker (see :func:`error_of`) if it fails or is cancelled. Its id is
    ``<parent id>~<task>``, in the parent's partition, so both move on atomically."""
    from .definition import Workflow

    child = workflow.name if isinstance(workflow, Workflow) else workflow
    if not isinstance(child, str):
        raise TypeError("start_child() takes a workflow or a workflow name")
    name, then_wf = _name(then, "start_child(then=...)")
    return StartChild(child, input, name, max_steps, then_wf)


def is_timeout(value: Any) -> bool:
    """Whether a ``wait``'s ``then`` step was woken by its timeout rather than the signal."""
    return isinstance(value, dict) and TIMEOUT_KEY in value


def error_of(value: Any) -> dict[str, Any] | None:
    """The error in a fan-out slot (``on_error="collect"``) or in a child workflow's outcome:
    ``{"type", "message", ...}``, or None when ``value`` is a normal result."""
    error = value.get(ERROR_KEY) if isinstance(value, dict) else None
    return error if isinstance(error, dict) else None
