"""Public read models (workflow status, step history, dead letters) and the internal task."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from .. import codec
from ..observability.tracing import trace_id_of
from ..status import RunStatus
from .frames import parent_id


def from_ms(raw: bytes | str | int | None) -> datetime | None:
    if raw is None or raw == b"" or raw == "":
        return None
    return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)


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
    status: str  # completed | failed | limited (held back by a rate limit, not an attempt)
    cached: bool = False  # completed from the step-result cache, without running
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
    """A workflow run as stored in Redis."""

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
        def text(name: bytes) -> str | None:
            value = fields.get(name)
            return value.decode() if value is not None else None

        records = []
        for raw in history:
            item = codec.loads(raw)
            for key in ("started_at", "finished_at"):
                item[key] = from_ms(item.get(key))
            records.append(StepRecord.model_validate(item))
        error = codec.loads(fields.get(b"error"))
        waits, children = [], []
        for name, value in fields.items():
            if name.startswith(b"w:"):
                wait = codec.loads(value)
                waits.append(WaitInfo(
                    signal=name[2:].decode().rpartition(":")[0], step=wait["step"],
                    since=from_ms(wait.get("since")),
                    deadline=from_ms(wait.get("deadline")),
                ))  # fmt: skip
            elif name.startswith(b"c:"):
                children.append(name[2:].decode())
        parent = text(b"parent")
        max_steps = fields.get(b"max_steps")
        return cls(
            id=workflow_id,
            workflow=text(b"workflow") or "",
            status=RunStatus(text(b"status") or ""),
            step=text(b"step"),
            input=codec.loads(fields.get(b"input")),
            result=codec.loads(fields.get(b"result")),
            error=StepError.model_validate(error) if error else None,
            state=codec.loads(fields.get(b"state")) or {},
            created_at=from_ms(fields.get(b"created_at")),
            updated_at=from_ms(fields.get(b"updated_at")),
            finished_at=from_ms(fields.get(b"finished_at")),
            request_id=text(b"request_id"),
            trace_id=trace_id_of(text(b"trace") or ""),
            waits=waits,
            parent=parent_id(parent) if parent else None,
            children=children,
            tasks=int(fields.get(b"seq") or 0),
            max_steps=int(max_steps) if max_steps and int(max_steps) > 0 else None,
            cancel_reason=text(b"cancel_reason"),
            history=records,
        )


class DeadLetter(BaseModel):
    """A task that failed for good (or could not be processed at all)."""

    id: str  # "p<partition>:<entry id>", what `conveyor dlq replay` takes
    workflow_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    task: int | None = None
    queue: str | None = None
    reason: str
    error: StepError | None = None
    failed_at: datetime | None = None


@dataclass(slots=True)
class Task:
    """One task entry read from a stream, not yet decoded beyond its routing fields."""

    stream: str
    entry_id: bytes
    partition: int
    queue: str
    workflow_id: str
    workflow: str
    step: str
    task: int
    attempt: int
    input: bytes
    state: bytes | None
    request_id: str | None
    frame: str = ""  # where it runs: '' at the top level, else see storage/frames.py
    parent: str = ""  # a child workflow's continuation in its parent (storage/frames.py)
    wait: str | None = None  # set on a wait's timer task: the signal it times out
    trace: str = ""  # the trace carrier it came with (observability/tracing.py)
    carry: str | None = None  # the carrier its transition passes on (None: ``trace``)
    deliveries: int = 1

    @property
    def ref(self) -> tuple[str, bytes]:
        return (self.stream, self.entry_id)
