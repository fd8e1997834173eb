"""Decoding the public read models (conveyor/models.py) from Redis, and the internal task."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .. import codec
from ..models import DeadLetter, StepError, StepRecord, WaitInfo, WorkflowStatus
from ..status import RunStatus
from .carriers import trace_id_of
from .frames import parent_id

# the read models live in conveyor/models.py (Redis-free); storage modules import them here
__all__ = [
    "DeadLetter", "StepError", "StepRecord", "Task", "WaitInfo", "WorkflowStatus", "from_ms",
    "workflow_status",
]  # fmt: skip


def from_ms(raw: bytes | str | int | None) -> datetime | None:
    if raw is None or raw == b"" or raw == "":
        return None
    return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)


def workflow_status(
    workflow_id: str, fields: dict[bytes, bytes], history: list[bytes]
) -> WorkflowStatus:
    """A workflow's status from its state hash and history list."""

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
    return WorkflowStatus(
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
    trace: str = ""  # the trace carrier it came with (carriers.py)
    carry: str | None = None  # the carrier its transition passes on (None: ``trace``)
    deliveries: int = 1

    @property
    def ref(self) -> tuple[str, bytes]:
        return (self.stream, self.entry_id)
