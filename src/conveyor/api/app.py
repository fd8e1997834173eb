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
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response

from .. import __version__
from ..app import App
from ..errors import (
    BackPressureError,
    ResultTimeoutError,
)
from ..models import WorkflowStatus
from ..observability.exporter import queue_metrics_response
from ..observability.metrics import HttpMetrics, exposition
from ..status import RunStatus
from ..storage.connection import UNAVAILABLE
from ..storage.errors import OutOfMemoryError
from .dispatcher import (
    ENGINE_ERRORS,
    Dispatcher,
    FastSubmit,
    _backpressure,
    _engine_error,
    _internal,
    _is_stream_id,
    _unavailable,
)
from .middleware import RequestHygiene
from .models import (
    _ID,
    _NAME,
    ANY_JSON,
    JSON,
    SSE_STREAM,
    CancelOutcome,
    DeadLetterList,
    Health,
    QueueList,
    Replayed,
    ResultModel,
    SignalOutcome,
    Started,
    Submitted,
    SubmittedBatch,
    WaitPage,
    WorkflowPage,
    _body,
    _headers,
    _json,
)
from .openapi import build as build_openapi
from .problems import (
    Problem,
    on_http_error,
    on_out_of_memory,
    on_problem,
    on_validation_error,
    problem_response,
    problem_responses,
)
from .settings import ApiSettings
from .sse import event_stream
from .telemetry import STREAMING, add_tracing, native_telemetry_off

log = logging.getLogger("conveyor.api")


def request_timeout_from_env() -> float | None:
    """CONVEYOR_API_REQUEST_TIMEOUT: seconds a request may wait for its answer (default 10;
    0 turns the bound off)."""
    from ..settings import ApiEnvironment

    return ApiEnvironment().request_timeout or None


def create_app(
    app: App, settings: ApiSettings | None = None, *, request_timeout: float | None = None
) -> FastAPI:
    """The ASGI app serving ``app``'s workflows (see docs/api.md). A request whose answer has
    not started within ``request_timeout`` seconds (default: CONVEYOR_API_REQUEST_TIMEOUT, else
    10; a long poll adds its wait) is answered 503."""
    settings = settings or ApiSettings.from_env()
    timeout = request_timeout if request_timeout is not None else request_timeout_from_env()
    dispatcher = Dispatcher(app, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not settings.auth:
            log.warning("API authentication is OFF (--no-auth): anyone who can reach it may use it")
        flusher = asyncio.create_task(_flush_every(dispatcher.http_metrics, 1.0))
        # warn about Redis settings that lose work now, not at the first start (best effort:
        # with Redis down, the first start checks again)
        checker = asyncio.create_task(_check_redis(dispatcher))
        try:
            yield
        finally:
            checker.cancel()
            flusher.cancel()
            dispatcher.http_metrics.flush()
            await dispatcher.close()

    api = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Submit, follow, signal and cancel durable workflows.",
        lifespan=lifespan,
        responses=problem_responses(401, 403, 413, 429, 503),
        generate_unique_id_function=_operation_id,
        **native_telemetry_off(),
    )
    api.state.dispatcher = dispatcher
    api.openapi = lambda: _openapi(api, app)  # type: ignore[method-assign, unused-ignore]
    api.add_exception_handler(Problem, on_problem)
    api.add_exception_handler(HTTPException, on_http_error)
    api.add_exception_handler(RequestValidationError, on_validation_error)
    for error, status, kind in ENGINE_ERRORS:
        api.add_exception_handler(error, _engine_error(status, kind))
    for error in UNAVAILABLE:
        api.add_exception_handler(error, _unavailable)
    api.add_exception_handler(OutOfMemoryError, on_out_of_memory)
    api.add_exception_handler(Exception, _internal)
    api.include_router(_routes(dispatcher))
    # the busiest route, served before routing (see FastSubmit); the FastAPI route of the
    # same path documents it
    api.add_middleware(FastSubmit, dispatcher=dispatcher)
    api.add_middleware(
        RequestHygiene, max_body=settings.max_body, metrics=dispatcher.http_metrics,
        timeout=timeout, max_wait=settings.max_wait,
    )  # fmt: skip
    add_tracing(api)  # outermost: its span is current while a request starts workflows
    return api


def _operation_id(route: APIRoute) -> str:
    """A route's operationId is its handler's name: what generated clients call it."""
    return route.name


async def _check_redis(dispatcher: Dispatcher) -> None:
    with contextlib.suppress(Exception):
        await dispatcher.client.store.check_partitions()


async def _flush_every(metrics: HttpMetrics, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        metrics.flush()


def _openapi(api: FastAPI, app: App) -> dict[str, Any]:
    if not api.openapi_schema:
        api.openapi_schema = build_openapi(api, app)
    return api.openapi_schema


def _routes(d: Dispatcher) -> APIRouter:
    r = APIRouter()
    # one Path object per parameter name: FastAPI keeps the first name it was used with
    WorkflowId = Path(pattern=_ID, description="workflow id")
    Name = Path(pattern=_NAME, description="workflow name")
    StartName = Path(pattern=_NAME, description="the name of the workflow to start")
    ReadId = Path(pattern=_ID, description="the id of the workflow run to read")

    # -- submit -----------------------------------------------------------------------------

    # one path, two meanings (OpenAPI allows one parameter name per path): a workflow's
    # name to start it, a workflow run's id to read it
    @r.post(
        "/v1/workflows/{workflow}", status_code=202, response_model=Submitted, tags=["submit"],
        summary="Start a workflow",
        openapi_extra={**_body("the workflow's input (any JSON)"),
                       **_headers("Idempotency-Key", "X-Request-ID")},
        responses=problem_responses(400, 404, 415, 422),
    )  # fmt: skip
    async def submit(
        request: Request,
        workflow: str = StartName,
        delay: float | None = Query(None, ge=0, le=31_536_000, description="seconds"),
        max_steps: int | None = Query(None, ge=1, le=1_000_000_000),
    ) -> Response:
        # documents the route; requests are served by submit_fast (see create_app)
        return await d.submit(request, workflow, delay, max_steps)

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
                {"$ref": "#/components/schemas/StartBody"},
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
        name = body.pop("workflow", None)  # absent or null: the app's first workflow
        if name is None:
            name = next(iter(d.app.workflows), None)
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
        "/v1/workflows/{workflow}", response_model=WorkflowStatus, tags=["read"],
        summary="Status, step history, result or error", responses=problem_responses(404, 422),
    )  # fmt: skip
    async def status(request: Request, workflow: str = ReadId) -> Response:
        headers = await d.admit(request, "read")
        st = await d.client.status(workflow)
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
            200: {"content": {"text/event-stream": {"schema": SSE_STREAM}},
                  "description": "the workflow's events, until its end"},
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
        request.scope[STREAMING] = True  # its length is the client's: counted, not timed
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
        status: RunStatus | None = None,
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

    # -- metrics ----------------------------------------------------------------------------

    @r.get(
        "/metrics", tags=["metrics"], summary="Prometheus metrics of the API processes",
        response_class=PlainTextResponse,
    )  # fmt: skip
    async def metrics() -> Response:
        d.http_metrics.flush()  # this process's requests up to now
        body, content_type = exposition()
        return Response(body, headers={"Content-Type": content_type})

    @r.get(
        "/metrics/queues", tags=["metrics"],
        summary="Prometheus metrics of the queues in Redis (the queue exporter)",
        response_class=PlainTextResponse,
    )  # fmt: skip
    async def queue_metrics() -> Response:
        return await queue_metrics_response(d.queue_exporter)

    return r
