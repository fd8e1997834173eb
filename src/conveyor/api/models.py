"""Response models and OpenAPI fragments of the HTTP API (the handlers write raw JSON;
these describe it)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.responses import Response

from ..storage.queries import QueueStats, WaitEntry, WorkflowSummary
from ..storage.records import DeadLetter

JSON = "application/json"
ANY_JSON: dict[str, Any] = {}  # a JSON schema that accepts any value
_ID = r"^[A-Za-z0-9_.~\-]{1,200}$"
_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$"


# -- response models (for the OpenAPI document) --------------------------------------------------


class Submitted(BaseModel):
    id: str
    status_url: str


class SubmittedBatch(BaseModel):
    ids: list[str]


class Started(BaseModel):
    workflow_id: str


class ResultModel(BaseModel):
    id: str
    status: str = Field(description="completed, failed, cancelled; else still running")
    result: Any = None
    error: Any = None


class SignalOutcome(BaseModel):
    id: str
    signal: str
    outcome: str = Field(description="delivered (a wait resumed) or buffered")


class CancelOutcome(BaseModel):
    id: str
    status: str


class WorkflowPage(BaseModel):
    items: list[WorkflowSummary]
    next_cursor: str | None


class WaitPage(BaseModel):
    items: list[WaitEntry]
    next_cursor: str | None


class QueueList(BaseModel):
    queues: list[QueueStats]


class DeadLetterList(BaseModel):
    items: list[DeadLetter]


class Replayed(BaseModel):
    workflow_id: str


class Health(BaseModel):
    status: str
    version: str | None = None


#: One Server-Sent Event of /v1/workflows/{id}/events (OpenAPI < 3.2: the schema of a
#: text/event-stream response describes each event).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "resume after it with Last-Event-ID"},
        "event": {"type": "string", "enum": ["step", "emit", "end"],
                  "description": "an attempt's record, what a step emitted, the end"},
        "data": {"type": "string", "contentMediaType": JSON},
        "retry": {"type": "integer"},
    },
    "required": ["id", "event", "data"],
}  # fmt: skip


def _body(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {JSON: {"schema": ANY_JSON if schema is None else schema}},
        }
    }


def _headers(*names: str) -> dict[str, Any]:
    """OpenAPI header parameters the handlers read themselves."""
    described = {
        "Idempotency-Key": "starting again with the same key (per API key) returns the same "
        "workflow id and starts nothing (1 to 256 characters)",
        "X-Request-ID": "correlation id, stored with the workflow and returned (generated "
        "when absent)",
        "Last-Event-ID": "resume after this event id (what the last event received had)",
    }
    return {
        "parameters": [
            {"name": n, "in": "header", "required": False, "description": described[n],
             "schema": {"type": "string", "maxLength": 256}}
            for n in names
        ]
    }  # fmt: skip


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers=headers, media_type=JSON)
