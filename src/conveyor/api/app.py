"""The HTTP dispatcher: a stateless ASGI app (FastAPI) in front of the engine. It validates a
request, authenticates and rate-limits its key, gives it a correlation id, starts the
workflow (concurrent submissions are coalesced into pipelines) and answers 202 with its id.
It also reads workflows, streams their events (SSE), takes signals and cancellations, lists
workflows, queues, waits and dead letters. See docs/api.md.

Handlers read and write raw bytes with orjson and return responses directly: the OpenAPI
document is declared alongside (``responses=``, ``openapi_extra=``) rather than produced by
validating every response, which would cost the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..app import App
from ..client import AsyncClient
from ..errors import (
    BackPressureError,
    ConveyorError,
    DeadLetterNotFoundError,
    DefinitionError,
    ReplayError,
    ResultTimeoutError,
    SignalError,
    UnknownWorkflowError,
    WorkflowNotFoundError,
)
from ..limits import Limit, Limiter
from ..storage.connection import UNAVAILABLE, connect
from ..storage.queries import Queries, QueueStats, WaitEntry, WorkflowSummary
from ..storage.records import DeadLetter, WorkflowStatus
from .auth import Authenticator
from .middleware import BodyTooLarge, RequestHygiene
from .problems import (
    Problem,
    ProblemModel,
    on_http_error,
    on_problem,
    on_validation_error,
    problem_response,
    problem_responses,
)
from .ratelimit import LeasedRateLimits
from .settings import ApiKey, ApiSettings
from .sse import event_stream

log = logging.getLogger("conveyor.api")

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


def _is_stream_id(value: str) -> bool:
    """Whether ``value`` is a Redis stream id ('ms' or 'ms-seq', each part below 2**64): Redis
    refuses any other, which would break an event stream after its headers went out."""
    if not re.match(r"^\d{1,20}(-\d{1,20})?$", value):
        return False
    return all(int(part) < 1 << 64 for part in value.split("-"))


_NAME_RE = re.compile(_NAME)


def _param_error(loc: tuple[str, ...], msg: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": "value_error"}


def _number(
    raw: str | None, kind: type, low: float, high: float, name: str, errors: list[Any]
) -> float | None:
    """A query parameter as FastAPI would check ``Query(None, ge=low, le=high)``."""
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        errors.append(_param_error(("query", name), f"Input should be a valid {kind.__name__}"))
        return None
    if not (low <= value <= high) or value != value:  # NaN compares false
        errors.append(_param_error(("query", name), f"Input should be between {low} and {high}"))
        return None
    return float(value)


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


class Dispatcher:
    """What the handlers share: the engine client, queries, auth and the rate limiter."""

    def __init__(self, app: App, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings
        self.auth = Authenticator(settings)
        self.client = AsyncClient(app=app)
        self.queries = Queries(self.client.store)
        # blocking reads (SSE, long polls) get their own pool: they hold a connection each
        self.stream_redis = connect(app.settings.redis_url, max_connections=1024)
        self.stream_queries = Queries(_with_redis(self.client.store, self.stream_redis))
        self.limiter = Limiter(self.client.redis, app.settings.namespace, self.client.store.scripts)
        self.limits: dict[str, Limit] = {}
        self.rate_limits = LeasedRateLimits(self.limiter)

    async def close(self) -> None:
        await self.client.close()
        await self.stream_redis.aclose()

    async def submit(
        self, request: Request, name: str, delay: float | None, max_steps: int | None
    ) -> Response:
        headers = await self.admit(request, "submit")
        value = await self.json_body(request)
        self.validate_input(name, value)
        try:
            wf_id = await self.client.start(
                name, value, idempotency_key=self.idempotency_key(request),
                request_id=self.request_id(request), delay=delay, max_steps=max_steps,
            )  # fmt: skip
        except BackPressureError as exc:
            raise _backpressure(exc, headers) from None
        url = f"/v1/workflows/{wf_id}"
        headers["Location"] = url
        return _json({"id": wf_id, "status_url": url}, 202, headers)

    async def submit_fast(self, request: Request) -> Response:
        """POST /v1/workflows/{name} without FastAPI's per-request parameter solving (about a
        third of its CPU): the same checks by hand, with the same answers (see FastSubmit)."""
        name = request.path_params["name"]
        errors = []
        if not _NAME_RE.match(name):
            errors.append(_param_error(("path", "name"), f"String should match pattern '{_NAME}'"))
        params = request.query_params
        delay = _number(params.get("delay"), float, 0, 31_536_000, "delay", errors)
        max_steps = _number(params.get("max_steps"), int, 1, 1_000_000_000, "max_steps", errors)
        if errors:
            raise RequestValidationError(errors)
        return await self.submit(
            request, name, delay, None if max_steps is None else int(max_steps)
        )

    def _limit_for(self, key: ApiKey, request: Request) -> Limit:
        who = key.name if key.sha256 else f"ip-{request.client.host if request.client else '-'}"
        limit = self.limits.get(who)
        if limit is None:
            safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", who)[:100]
            limit = Limit(f"api.{safe}", self.settings.rate_limit)
            self.limits[who] = limit
        return limit

    async def admit(self, request: Request, scope: str) -> dict[str, str]:
        """Authenticate, check the scope, take one request from the key's rate limit.
        Returns the RateLimit-* headers for the response."""
        key = self.auth.authenticate(request.headers.get("authorization"))
        self.auth.require(key, scope)
        request.state.api_key = key
        if not self.settings.rate_limit:
            return {}
        limit = self._limit_for(key, request)
        wait, remaining = await self.rate_limits.take(limit)
        rate = limit.parsed
        headers = {
            "RateLimit-Limit": str(int(limit.capacity)),
            "RateLimit-Remaining": str(max(0, remaining)),
            "RateLimit-Reset": str(math.ceil(wait or rate.interval)),
            "RateLimit-Policy": f"{int(limit.capacity)};w={rate.period:g}",
        }
        if wait > 0:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            raise Problem(
                429, f"rate limit of key {key.name!r} exceeded ({self.settings.rate_limit})",
                kind="rate-limited", headers=headers, retry_after=wait,
            )  # fmt: skip
        return headers

    async def json_body(self, request: Request, *, optional: bool = False) -> Any:
        body = await request.body()
        if not body and optional:
            return None
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != JSON and not (ctype.startswith("application/") and ctype.endswith("+json")):
            raise Problem(
                415, f"send JSON with 'Content-Type: {JSON}' (got {ctype or 'none'!r})",
                kind="unsupported-media-type",
            )  # fmt: skip
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Problem(400, f"malformed JSON: {exc}", kind="malformed-json") from None
        if _depth(value, self.settings.max_depth):
            raise Problem(
                400, f"JSON nested deeper than {self.settings.max_depth} levels",
                kind="json-too-deep",
            )  # fmt: skip
        return value

    def validate_input(self, workflow: str, value: Any, loc: tuple[Any, ...] = ("body",)) -> None:
        """422 with the field errors when ``value`` fails the start step's pydantic model."""
        wf = self.app.workflows.get(workflow)
        if wf is None:
            return  # known only from the registry: the worker validates it
        adapter = wf.start_step.input_adapter
        if adapter is None:
            return
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            errors = [
                {"loc": [*loc, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            ]
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
            raise Problem(
                422, f"input of workflow {workflow!r} is invalid: {where}",
                kind="invalid-input", errors=errors,
            ) from None  # fmt: skip

    @staticmethod
    def request_id(request: Request) -> str:
        return str(request.scope.get("state", {}).get("request_id", ""))

    @staticmethod
    def idempotency_key(request: Request) -> str | None:
        """The engine's idempotency key: the header, scoped to the calling API key, so two
        callers choosing the same key do not share a workflow."""
        key = request.headers.get("idempotency-key")
        if key is None:
            return None
        if not (0 < len(key) <= 256):
            raise Problem(400, "Idempotency-Key must be 1 to 256 characters", kind="bad-request")
        caller = getattr(request.state, "api_key", None)
        return f"{caller.name}/{key}" if caller is not None and caller.sha256 else key

    @staticmethod
    def redact(request: Request, error: dict[str, Any] | None) -> dict[str, Any] | None:
        """Tracebacks (server paths, code) only for admin keys."""
        caller = getattr(request.state, "api_key", None)
        if error and caller is not None and not caller.allows("admin"):
            return {**error, "traceback": None}
        return error


def _with_redis(store: Any, redis: Any) -> Any:
    """A Store sharing ``store``'s settings and scripts but using another connection pool."""
    from ..storage.store import Store

    other = Store(redis, store.settings)
    other.scripts = store.scripts
    return other


def create_app(app: App, settings: ApiSettings | None = None) -> FastAPI:
    """The ASGI app serving ``app``'s workflows (see docs/api.md)."""
    settings = settings or ApiSettings.from_env()
    dispatcher = Dispatcher(app, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not settings.auth:
            log.warning("API authentication is OFF (--no-auth): anyone who can reach it may use it")
        try:
            yield
        finally:
            await dispatcher.close()

    api = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Submit, follow, signal and cancel durable workflows.",
        lifespan=lifespan,
        responses=problem_responses(401, 403, 413, 429, 503),
    )
    api.state.dispatcher = dispatcher
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    api.add_exception_handler(Problem, on_problem)
    api.add_exception_handler(HTTPException, on_http_error)
    api.add_exception_handler(RequestValidationError, on_validation_error)
    for error, status, kind in ENGINE_ERRORS:
        api.add_exception_handler(error, _engine_error(status, kind))
    for error in UNAVAILABLE:
        api.add_exception_handler(error, _unavailable)
    api.add_exception_handler(Exception, _internal)
    api.include_router(_routes(dispatcher))
    # the busiest route, served before routing (see FastSubmit); the FastAPI route of the
    # same path documents it
    api.add_middleware(FastSubmit, dispatcher=dispatcher)
    api.add_middleware(RequestHygiene, max_body=settings.max_body)
    return api


UNAUTHENTICATED = {"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"}


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the bearer scheme (so /docs can send a key), and without
    the auth and rate-limit answers on the routes that need no key."""
    if api.openapi_schema:
        return api.openapi_schema
    schema = get_openapi(
        title=api.title, version=api.version, description=api.description, routes=api.routes
    )
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"}
    }
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in UNAUTHENTICATED:
                operation["security"] = []
                for status in ("401", "403", "413", "429"):
                    operation.get("responses", {}).pop(status, None)
            else:
                operation["security"] = [{"bearer": []}]
    api.openapi_schema = schema
    return schema


# engine errors -> HTTP
ENGINE_ERRORS: list[tuple[type[Exception], int, str]] = [
    (UnknownWorkflowError, 404, "unknown-workflow"),
    (WorkflowNotFoundError, 404, "workflow-not-found"),
    (DeadLetterNotFoundError, 404, "dead-letter-not-found"),
    (SignalError, 409, "workflow-finished"),
    (ReplayError, 409, "cannot-replay"),
    (DefinitionError, 400, "bad-request"),
    (ValueError, 400, "bad-request"),
]


def _engine_error(status: int, kind: str) -> Any:
    async def handler(request: Request, exc: Exception) -> Response:
        return problem_response(status, str(exc), kind=kind, instance=request.url.path)

    return handler


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable: %s", exc)
    return problem_response(
        503, "Redis is unavailable; retry later", kind="unavailable",
        headers={"Retry-After": "5"}, instance=request.url.path, retry_after=5,
    )  # fmt: skip


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "internal error", kind="internal", instance=request.url.path)


def _backpressure(
    exc: BackPressureError, headers: dict[str, str], accepted: list[str] | None = None
) -> Problem:
    wait = exc.retry_after or 1.0
    return Problem(
        429, str(exc), kind="backpressure",
        headers={**headers, "Retry-After": str(max(1, math.ceil(wait)))},
        retry_after=wait, accepted=accepted,
    )  # fmt: skip


def _routes(d: Dispatcher) -> APIRouter:
    r = APIRouter()
    WorkflowId = Path(pattern=_ID, description="workflow id")
    Name = Path(pattern=_NAME, description="workflow name")

    # -- submit -----------------------------------------------------------------------------

    @r.post(
        "/v1/workflows/{name}", status_code=202, response_model=Submitted, tags=["submit"],
        summary="Start a workflow",
        openapi_extra={**_body("the workflow's input (any JSON)"),
                       **_headers("Idempotency-Key", "X-Request-ID")},
        responses=problem_responses(400, 404, 415, 422),
    )  # fmt: skip
    async def submit(
        request: Request,
        name: str = Name,
        delay: float | None = Query(None, ge=0, le=31_536_000, description="seconds"),
        max_steps: int | None = Query(None, ge=1, le=1_000_000_000),
    ) -> Response:
        # documents the route; requests are served by submit_fast (see create_app)
        return await d.submit(request, name, delay, max_steps)

    @r.post(
        "/v1/workflows/{name}/batch", status_code=202, response_model=SubmittedBatch,
        tags=["submit"], summary="Start a workflow once per input",
        openapi_extra={**_body("a JSON array of inputs", {"type": "array", "items": ANY_JSON}),
                       **_headers("Idempotency-Key", "X-Request-ID")},
        responses=problem_responses(400, 404, 415, 422),
    )  # fmt: skip
    async def submit_batch(request: Request, name: str = Name) -> Response:
        headers = await d.admit(request, "submit")
        values = await d.json_body(request)
        if not isinstance(values, list):
            raise Problem(400, "the body must be a JSON array of inputs", kind="bad-request")
        if len(values) > d.settings.max_batch:
            raise Problem(
                413, f"at most {d.settings.max_batch} inputs per batch", kind="batch-too-large"
            )
        for i, value in enumerate(values):
            d.validate_input(name, value, ("body", i))
        results = await d.client.start_many(
            name, values, idempotency_key=d.idempotency_key(request),
            request_id=d.request_id(request),
        )  # fmt: skip
        refused = [x for x in results if isinstance(x, BackPressureError)]
        if refused:
            accepted = [x for x in results if isinstance(x, str)]
            raise _backpressure(refused[0], headers, accepted)
        return _json({"ids": results}, 202, headers)

    @r.post(
        "/start", status_code=202, response_model=Started, tags=["submit"],
        summary="Start a workflow (the reference architecture's route)",
        openapi_extra={
            **_body(
                'a JSON object: "workflow" names it (default: the app\'s first workflow); the '
                "other fields are its input",
                {"type": "object"},
            ),
            **_headers("Idempotency-Key", "X-Request-ID"),
        },
        responses=problem_responses(400, 404, 415, 422),
    )  # fmt: skip
    async def start(request: Request) -> Response:
        headers = await d.admit(request, "submit")
        body = await d.json_body(request)
        if not isinstance(body, dict):
            raise Problem(400, 'the body must be a JSON object ({"workflow": ..., ...})')
        body = dict(body)
        name = body.pop("workflow") if "workflow" in body else next(iter(d.app.workflows), None)
        if not isinstance(name, str) or not name:
            raise Problem(400, '"workflow" must be a workflow name', kind="bad-request")
        d.validate_input(name, body)
        try:
            wf_id = await d.client.start(
                name, body, idempotency_key=d.idempotency_key(request),
                request_id=d.request_id(request),
            )  # fmt: skip
        except BackPressureError as exc:
            raise _backpressure(exc, headers) from None
        headers["Location"] = f"/v1/workflows/{wf_id}"
        return _json({"workflow_id": wf_id}, 202, headers)

    # -- read -------------------------------------------------------------------------------

    @r.get(
        "/v1/workflows/{workflow_id}", response_model=WorkflowStatus, tags=["read"],
        summary="Status, step history, result or error", responses=problem_responses(404, 422),
    )  # fmt: skip
    async def status(request: Request, workflow_id: str = WorkflowId) -> Response:
        headers = await d.admit(request, "read")
        st = await d.client.status(workflow_id)
        if not request.state.api_key.allows("admin"):
            if st.error is not None:
                st.error.traceback = None
            for record in st.history:
                if record.error is not None:
                    record.error.traceback = None
        return Response(st.model_dump_json(), headers=headers, media_type=JSON)

    @r.get(
        "/v1/workflows/{workflow_id}/result", response_model=ResultModel, tags=["read"],
        summary="The result (long poll with ?wait=)",
        responses={
            202: {"model": ResultModel, "description": "not finished within the wait"},
            **problem_responses(404, 422),
        },
    )  # fmt: skip
    async def result(
        request: Request,
        workflow_id: str = WorkflowId,
        wait: float = Query(0, ge=0, le=3600, description="seconds to wait for the end"),
    ) -> Response:
        headers = await d.admit(request, "read")
        wait = min(wait, d.settings.max_wait)
        try:
            st = await d.client._wait_finished(workflow_id, wait)
        except ResultTimeoutError:
            current = await d.client.store.get_status(workflow_id)
            headers["Retry-After"] = "1"
            return _json({"id": workflow_id, "status": current}, 202, headers)
        body: dict[str, Any] = {"id": workflow_id, "status": st.status}
        if st.status == "completed":
            body["result"] = st.result
        elif st.error is not None:
            body["error"] = d.redact(request, st.error.model_dump())
        return _json(body, 200, headers)

    @r.get(
        "/v1/workflows/{workflow_id}/events", tags=["read"],
        summary="Server-Sent Events: every step attempt, every ctx.emit, then the end",
        response_class=Response,
        responses={
            200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                  "description": "event stream (the schema is one event's)"},
            204: {"description": "the stream ended at or before Last-Event-ID: nothing follows"},
            **problem_responses(400, 404, 422),
        },
        openapi_extra=_headers("Last-Event-ID"),
    )  # fmt: skip
    async def events(
        request: Request,
        workflow_id: str = WorkflowId,
        last_event_id: str | None = Query(
            None, pattern=r"^\d{1,20}-\d{1,20}$", description="resume after this event id"
        ),
    ) -> Response:
        headers = await d.admit(request, "read")
        await d.client.status(workflow_id)  # 404 for an unknown workflow
        resume = request.headers.get("last-event-id") or last_event_id or "0"
        if not _is_stream_id(resume):
            raise Problem(400, f"invalid Last-Event-ID {resume!r}", kind="bad-request")
        if await d.queries.ended_by(workflow_id, resume):
            return Response(status_code=204, headers=headers)  # EventSource stops reconnecting
        return event_stream(
            d.stream_queries,
            workflow_id,
            resume,
            request,
            headers,
            redact=not request.state.api_key.allows("admin"),
        )

    @r.get(
        "/v1/workflows", response_model=WorkflowPage, tags=["read"],
        summary="Recent workflows, newest first", responses=problem_responses(400, 422),
    )  # fmt: skip
    async def list_workflows(
        request: Request,
        name: str | None = Query(None, pattern=_NAME),
        status: str | None = Query(None, pattern="^(running|waiting|completed|failed|cancelled)$"),
        limit: int = Query(50, ge=1, le=1000),
        cursor: str | None = Query(None, max_length=300),
    ) -> Response:
        headers = await d.admit(request, "read")
        page = await d.queries.workflows(name, status, limit, cursor)
        items = [i.model_dump(mode="json") for i in page.items]
        return _json({"items": items, "next_cursor": page.cursor}, 200, headers)

    @r.get("/v1/queues", response_model=QueueList, tags=["read"], summary="Queue statistics")
    async def queues(request: Request) -> Response:
        headers = await d.admit(request, "read")
        stats = await d.queries.queues(d.app.queues)
        return _json({"queues": [s.model_dump() for s in stats]}, 200, headers)

    @r.get(
        "/v1/waits", response_model=WaitPage, tags=["read"],
        summary="Inbox of workflows waiting for a signal", responses=problem_responses(400, 422),
    )  # fmt: skip
    async def waits(
        request: Request,
        signal: str | None = Query(None, pattern=_NAME),
        workflow: str | None = Query(None, pattern=_NAME),
        limit: int = Query(50, ge=1, le=1000),
        cursor: str | None = Query(None, max_length=300),
    ) -> Response:
        headers = await d.admit(request, "read")
        page = await d.queries.waits(signal, workflow, limit, cursor)
        items = [i.model_dump(mode="json") for i in page.items]
        return _json({"items": items, "next_cursor": page.cursor}, 200, headers)

    # -- act --------------------------------------------------------------------------------

    @r.post(
        "/v1/workflows/{workflow_id}/signals/{signal}", response_model=SignalOutcome,
        tags=["submit"], summary="Send a signal (resumes a wait, or is buffered for one)",
        openapi_extra={"requestBody": {"required": False, "description": "payload (JSON)",
                                       "content": {JSON: {"schema": ANY_JSON}}}},
        responses=problem_responses(400, 404, 409, 415, 422),
    )  # fmt: skip
    async def signal(
        request: Request,
        workflow_id: str = WorkflowId,
        signal: str = Path(pattern=_NAME),
    ) -> Response:
        headers = await d.admit(request, "submit")
        payload = await d.json_body(request, optional=True)
        outcome = await d.client.signal(workflow_id, signal, payload)
        return _json({"id": workflow_id, "signal": signal, "outcome": outcome}, 200, headers)

    @r.post(
        "/v1/workflows/{workflow_id}/cancel", response_model=CancelOutcome, tags=["admin"],
        summary="Cancel a workflow wherever it is", responses=problem_responses(404, 422),
    )  # fmt: skip
    async def cancel(request: Request, workflow_id: str = WorkflowId) -> Response:
        headers = await d.admit(request, "admin")
        final = await d.client.cancel(workflow_id)
        return _json({"id": workflow_id, "status": final}, 200, headers)

    @r.get(
        "/v1/dlq", response_model=DeadLetterList, tags=["admin"], summary="Dead letters",
        responses=problem_responses(422),
    )  # fmt: skip
    async def dlq(request: Request, limit: int = Query(100, ge=1, le=10_000)) -> Response:
        headers = await d.admit(request, "admin")
        letters = await d.client.dead_letters(limit)
        return _json({"items": [x.model_dump(mode="json") for x in letters]}, 200, headers)

    @r.post(
        "/v1/dlq/{entry}/replay", response_model=Replayed, tags=["admin"],
        summary="Re-run a dead letter's failed step", responses=problem_responses(404, 409, 422),
    )  # fmt: skip
    async def replay(
        request: Request, entry: str = Path(pattern=r"^p\d{1,6}:\d{1,20}-\d{1,20}$")
    ) -> Response:
        headers = await d.admit(request, "admin")
        if not _is_stream_id(entry.partition(":")[2]):  # Redis would refuse the id: an error
            raise Problem(404, f"no dead letter {entry!r}", kind="dead-letter-not-found")
        wf_id = await d.client.replay(entry)
        return _json({"workflow_id": wf_id}, 200, headers)

    # -- health -----------------------------------------------------------------------------

    @r.get("/healthz", response_model=Health, tags=["health"], summary="The process is up")
    async def healthz() -> Response:
        return _json({"status": "ok", "version": __version__})

    @r.get(
        "/readyz", response_model=Health, tags=["health"],
        summary="Redis is reachable and the scripts are loaded",
        responses=problem_responses(503),
    )  # fmt: skip
    async def readyz() -> Response:
        try:
            await asyncio.wait_for(d.queries.ready(), 2.0)
        except (TimeoutError, *UNAVAILABLE) as exc:
            return problem_response(
                503, f"not ready: Redis unavailable ({type(exc).__name__})", kind="unavailable",
                headers={"Retry-After": "5"}, retry_after=5,
            )  # fmt: skip
        return _json({"status": "ready", "version": __version__})

    _ = (ProblemModel, ConveyorError)  # re-exported for the OpenAPI components
    return r


_SUBMIT_PATH = re.compile(r"^/v1/workflows/([^/]+)$")


class FastSubmit:
    """Serves ``POST /v1/workflows/{name}`` straight from the ASGI call, ahead of routing and
    of FastAPI's per-request parameter solving (together most of the API's own CPU per
    request), with the same checks and the same answers, errors included."""

    def __init__(self, app: ASGIApp, dispatcher: Dispatcher) -> None:
        self.app = app
        self.dispatcher = dispatcher
        self.errors = [
            (error, _engine_error(status, kind)) for error, status, kind in ENGINE_ERRORS
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _SUBMIT_PATH.match(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {"name": match.group(1)}
        request = Request(scope, receive)
        try:
            response = await self.dispatcher.submit_fast(request)
        except Exception as exc:
            response = await self._error(request, exc)
        await response(scope, receive, send)

    async def _error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, Problem):
            return await on_problem(request, exc)
        if isinstance(exc, RequestValidationError):
            return await on_validation_error(request, exc)
        for error, handler in self.errors:
            if isinstance(exc, error):
                return await handler(request, exc)  # type: ignore[no-any-return]
        if isinstance(exc, UNAVAILABLE):
            return await _unavailable(request, exc)
        if isinstance(exc, BodyTooLarge):
            raise exc  # RequestHygiene answers 413
        return await _internal(request, exc)
