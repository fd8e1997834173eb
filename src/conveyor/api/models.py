"""Response models and OpenAPI fragments of the HTTP API (the handlers write raw JSON;
these describe it)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..models import DeadLetter, QueueStats, StepError
from ..models import WaitPage as WaitPage  # response models of their routes
from ..models import WorkflowPage as WorkflowPage
from ..status import RunStatus

JSON = "application/json"
ANY_JSON: dict[str, Any] = {}  # a JSON schema that accepts any value
_ID = r"^[A-Za-z0-9_.~\-]{1,200}$"
_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$"


# -- response models (for the OpenAPI document) --------------------------------------------------


class Submitted(BaseModel):
    id: str = Field(description="the new workflow's id")
    status_url: str = Field(description="where to read its status (also the Location header)")


class SubmittedBatch(BaseModel):
    ids: list[str] = Field(description="the new workflows' ids, in the order of the inputs")


class StartBody(BaseModel):
    """The body of ``POST /start``: ``workflow`` names the workflow (default: the app's
    first); every other field is its input."""

    model_config = ConfigDict(extra="allow")

    workflow: str | None = Field(None, pattern=_NAME, description="the workflow's name")


class Started(BaseModel):
    workflow_id: str


class ResultModel(BaseModel):
    id: str
    status: RunStatus = Field(description="completed, failed, cancelled; else still running")
    result: Any = Field(None, description="the result (completed)")
    error: StepError | None = Field(None, description="why it failed (failed)")


class SignalOutcome(BaseModel):
    id: str
    signal: str
    outcome: Literal["delivered", "buffered"] = Field(
        description="delivered (a wait resumed) or buffered (kept for a later wait)"
    )


class CancelOutcome(BaseModel):
    id: str
    status: RunStatus = Field(description="its final status (cancelled, or how it had ended)")


class QueueList(BaseModel):
    queues: list[QueueStats]


class DeadLetterList(BaseModel):
    items: list[DeadLetter]


class Replayed(BaseModel):
    workflow_id: str


class Health(BaseModel):
    status: Literal["ok", "ready"]
    version: str | None = None


#: The text/event-stream answer of /v1/workflows/{id}/events: a string to generated clients
#: (OpenAPI 3.1 has no schema per event), each event described in words.
SSE_STREAM: dict[str, Any] = {
    "type": "string",
    "description": "Server-Sent Events, each `id: <entry id>` (resume after it with "
    "Last-Event-ID), `event: step|emit|end` (an attempt's history record, what a step "
    "emitted, the end) and `data: <JSON>`; a `retry:` line first and `: keep-alive` "
    "comments between events",
}


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
