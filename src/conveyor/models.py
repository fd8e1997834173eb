"""The public read models: what the Redis client, the HTTP API and the HTTP client return
(a workflow's status and step history, dead letters, list pages, open waits, queue
statistics, events).

Like :mod:`conveyor.errors` and :mod:`conveyor.status`, this module needs only pydantic, so
:mod:`conveyor.http` can be used where neither Redis nor the engine is installed. How the
models are read from Redis is ``storage/records.py``'s and ``storage/queries.py``'s concern.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from .status import RunStatus


class StepError(BaseModel):
    """Why an attempt failed."""

    type: str
    message: str
    traceback: str | None = None
    step: str | None = None


class StepRecord(BaseModel):
    """One attempt of one step, as kept in the workflow's history."""

    step: str
    task: int
    attempt: int
    status: Literal["completed", "failed", "limited"] = Field(
        description="limited: held back by a rate limit, not an attempt"
    )
    cached: bool = Field(False, description="completed from the step-result cache, unrun")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    result: Any = None
    error: StepError | None = None


class WaitInfo(BaseModel):
    """A signal a workflow waits for."""

    signal: str
    step: str = Field(description="the step the signal's payload goes to")
    since: datetime | None = None
    deadline: datetime | None = None


class WorkflowStatus(BaseModel):
    """A workflow run: where it stands, its input, result or error, and its history."""

    id: str
    workflow: str
    status: RunStatus
    step: str | None = Field(None, description="current (or last) step")
    input: Any = None
    result: Any = None
    error: StepError | None = None
    state: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    request_id: str | None = None
    trace_id: str | None = Field(None, description="OpenTelemetry trace id (when traced)")
    waits: list[WaitInfo] = Field(default_factory=list)
    parent: str | None = Field(None, description="id of the parent (a child workflow)")
    children: list[str] = Field(default_factory=list, description="running child workflows")
    tasks: int = Field(0, description="tasks created so far (counted against max_steps)")
    max_steps: int | None = None
    cancel_reason: str | None = None
    history: list[StepRecord] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def waiting_for(self) -> list[str]:
        return [w.signal for w in self.waits]

    @classmethod
    def from_redis(
        cls, workflow_id: str, fields: dict[bytes, bytes], history: list[bytes]
    ) -> WorkflowStatus:
        """Decoded from the state hash: see ``storage.records.workflow_status``, which storage
        calls directly (imported here only when called, so this module stays Redis-free)."""
        from .storage.records import workflow_status

        return workflow_status(workflow_id, fields, history)


class DeadLetter(BaseModel):
    """A task that failed for good (or could not be processed at all)."""

    id: str = Field(description="p<partition>:<entry id>, what `conveyor dlq replay` takes")
    workflow_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    task: int | None = None
    queue: str | None = None
    reason: str
    error: StepError | None = None
    failed_at: datetime | None = None


class WorkflowSummary(BaseModel):
    """One workflow of a list: what its state hash says without its history."""

    id: str
    workflow: str
    status: RunStatus
    step: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class WaitEntry(BaseModel):
    """One open wait: a workflow waiting for a signal (e.g. a human approval)."""

    workflow_id: str
    workflow: str
    signal: str
    step: str = Field(description="the step the signal's payload goes to")
    waiting_step: str | None = Field(None, description="the step that started the wait")
    since: datetime | None = None
    deadline: datetime | None = None
    state: dict[str, Any] = Field(default_factory=dict, description="the workflow's ctx.state")
    input: Any = Field(None, description="the workflow's input")


class QueueStats(BaseModel):
    queue: str
    stream: int = Field(description="tasks in the task streams, waiting or running (backlog)")
    pending: int = Field(description="tasks delivered to a worker, not yet acknowledged")
    lag: int = Field(0, description="tasks not yet delivered to any worker")
    oldest_age: float = Field(0.0, description="seconds the oldest of them has waited")
    delayed: int = Field(description="retries, timers and held-back tasks not yet due")
    dead: int = Field(description="dead letters of this queue")
    workers: int = Field(0, description="live workers serving this queue")


@dataclass(frozen=True, slots=True)
class WorkflowPage:
    """One page of recent workflows, newest first; pass ``next_cursor`` back for the next
    page (None after the last one)."""

    items: list[WorkflowSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class WaitPage:
    """One page of open waits, newest first (``next_cursor`` as in WorkflowPage)."""

    items: list[WaitEntry]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event of a workflow.

    ``event`` is ``step`` (an attempt's history record), ``emit`` (what a step sent with
    ``ctx.emit``: step, task, attempt and data) or ``end`` (its final status); ``data`` is
    decoded from JSON; ``id`` is what ``events(last_event_id=...)`` takes to resume after it.
    """

    id: str
    event: str
    data: Any
