"""Every error the API answers has one shape: RFC 9457 problem details, as
``application/problem+json`` with ``type``, ``title``, ``status``, ``detail`` (and ``errors``
for a 422's field errors)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

PROBLEM_TYPE = "https://conveyor.dev/problems/"
MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    """One field a 422 refused: where (``loc``, e.g. ``["body", "qty"]``) and why."""

    loc: list[str | int]
    msg: str
    type: str


class ProblemModel(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="a URI naming the kind of problem")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = Field(None, description="field errors (422)")
    retry_after: float | None = Field(None, description="seconds (429, 503)")
    accepted: list[str] | None = Field(None, description="ids started before a 429 (batch)")


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or HTTPStatus(status).phrase.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + (kind or HTTPStatus(status).phrase.lower().replace(" ", "-")),
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(orjson.dumps(body), status, headers=headers, media_type=MEDIA_TYPE)


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(
        exc.status, exc.detail, kind=exc.kind, headers=exc.headers,
        instance=request.url.path, **exc.extra,
    )  # fmt: skip


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem_response(
        exc.status_code, str(exc.detail), headers=dict(exc.headers or {}),
        instance=request.url.path,
    )  # fmt: skip


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return problem_response(
        422, f"invalid request: {where}", kind="invalid-request", errors=errors,
        instance=request.url.path,
    )  # fmt: skip


async def on_out_of_memory(request: Request, exc: Exception) -> Response:
    """Redis refused a write for memory (maxmemory reached, policy noeviction): the server is
    there but takes no writes until memory frees, so 503 with Retry-After, not a 500."""
    return problem_response(
        503, "Redis is out of memory (maxmemory reached); retry later", kind="out-of-memory",
        headers={"Retry-After": "5"}, instance=request.url.path, retry_after=5,
    )  # fmt: skip


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (problem details)."""
    return {
        status: {
            "model": ProblemModel,
            "description": HTTPStatus(status).phrase,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemModel"}}},
        }
        for status in statuses
    }
