"""What the API's handlers share (the Dispatcher: engine client, queries, auth, rate
limits, body and input checks), the mapping of engine errors to problem details, and the
fast path of the busiest route."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..app import App
from ..client import AsyncClient
from ..errors import (
    BackPressureError,
    DeadLetterNotFoundError,
    DefinitionError,
    ReplayError,
    ReplicationError,
    SignalError,
    UnknownWorkflowError,
    WorkflowNotFoundError,
)
from ..limits import Limit
from ..observability.metrics import HttpMetrics, count_refused, declare_series
from ..observability.queues import QueueExporter
from ..storage.connection import UNAVAILABLE, NoReplicasError, connect
from ..storage.errors import OutOfMemoryError
from ..storage.queries import Queries
from .auth import Authenticator
from .middleware import BodyTooLarge
from .models import _NAME, JSON, _json
from .problems import (
    Problem,
    on_out_of_memory,
    on_problem,
    on_validation_error,
    problem_response,
)
from .ratelimit import LeasedRateLimits
from .settings import ApiKey, ApiSettings
from .telemetry import ROUTE_KEY

log = logging.getLogger("conveyor.api")


def _is_stream_id(value: str) -> bool:
    """Whether ``value`` is a Redis stream id ('ms' or 'ms-seq', each part below 2**64): Redis
    refuses any other, which would break an event stream after its headers went out."""
    if not re.match(r"^\d{1,20}(-\d{1,20})?$", value):
        return False
    return all(int(part) < 1 << 64 for part in value.split("-"))


_NAME_RE = re.compile(_NAME)
#: Most per-caller limits kept in memory (one per key; per client address with auth off).
MAX_LIMITS = 10_000


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
        self.stream_queries = Queries(self.client.store.with_client(self.stream_redis))
        self.limiter = self.client.store.limiter
        self.limits: dict[str, Limit] = {}
        self.rate_limits = LeasedRateLimits(self.limiter)
        self.queue_exporter = QueueExporter(self.client.store, known=app.queues)
        self.http_metrics = HttpMetrics()
        declare_series(app.workflows.values(), worker=False)

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
        """POST /v1/workflows/{workflow} without FastAPI's per-request parameter solving (about a
        third of its CPU): the same checks by hand, with the same answers (see FastSubmit)."""
        name = request.path_params["workflow"]
        errors = []
        if not _NAME_RE.match(name):
            errors.append(
                _param_error(("path", "workflow"), f"String should match pattern '{_NAME}'")
            )
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
            if len(self.limits) >= MAX_LIMITS:  # many client addresses (auth off): stay small
                self.limits.clear()
                self.rate_limits.leases.clear()
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
            if scope == "submit" and "signal" not in request.url.path:  # a start refused
                # labelled by known names only: a path is caller input (/start: in the body)
                params = request.path_params
                name = params.get("workflow") or params.get("name") or ""
                count_refused(name if name in self.app.workflows else "other", "rate_limit")
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
    if isinstance(exc, NoReplicasError):  # the master's min-replicas-to-write refusal
        log.warning("Redis refused a write: NOREPLICAS %s", exc)
        return problem_response(
            503, f"Redis refused the write (NOREPLICAS {exc}); retry later",
            kind="not-replicated", headers={"Retry-After": "1"},
            instance=request.url.path, retry_after=1,
        )  # fmt: skip
    if isinstance(exc, ReplicationError):  # durability "replicated": WAIT fell short
        log.warning("write not confirmed by replicas: %s", exc)
        return problem_response(
            503,
            f"{exc}: the request reached the Redis master but may not survive a failover; "
            "retry (a start with the same Idempotency-Key is not run twice)",
            kind="not-replicated", headers={"Retry-After": "1"},
            instance=request.url.path, retry_after=1,
        )  # fmt: skip
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


#: The route label of its metrics and spans (kept from before the path parameter was
#: renamed ``workflow`` in the document, so dashboards and queries keep working).
SUBMIT_ROUTE = "/v1/workflows/{name}"
_SUBMIT_PATH = re.compile(r"^/v1/workflows/([^/]+)$")


class FastSubmit:
    """Serves ``POST /v1/workflows/{workflow}`` straight from the ASGI call, ahead of routing and
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
        scope["path_params"] = {"workflow": match.group(1)}
        scope[ROUTE_KEY] = SUBMIT_ROUTE
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
                return await handler(request, exc)  # type: ignore[no-any-return, unused-ignore]
        if isinstance(exc, OutOfMemoryError):
            return await on_out_of_memory(request, exc)
        if isinstance(exc, UNAVAILABLE):
            return await _unavailable(request, exc)
        if isinstance(exc, BodyTooLarge):
            raise exc  # RequestHygiene answers 413
        return await _internal(request, exc)
