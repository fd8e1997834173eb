"""The OpenAPI document (``/openapi.json``) as generated clients need it: FastAPI's document
of the routes, plus the bearer scheme, errors as ``application/problem+json`` only, the
response headers the handlers set, and each workflow's input model where its start step
has one (a concrete ``POST /v1/workflows/<name>`` path, which clients match before the
templated one)."""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from ..app import App
from .models import StartBody
from .problems import MEDIA_TYPE

UNAUTHENTICATED = {
    "/healthz", "/readyz", "/metrics", "/metrics/queues", "/openapi.json", "/docs", "/redoc",
}  # fmt: skip

_INT = {"type": "integer", "minimum": 0}
_TEXT = {"type": "string"}
#: Response headers, by name: (schema, description).
HEADERS: dict[str, tuple[dict[str, Any], str]] = {
    "X-Request-ID": (_TEXT, "the request's correlation id (the one sent, else a new one)"),
    "Location": (_TEXT, "the new workflow's status URL"),
    "Retry-After": (_INT, "seconds to wait before trying again"),
    "RateLimit-Limit": (_INT, "requests the API key may make per window"),
    "RateLimit-Remaining": (_INT, "requests left in the window"),
    "RateLimit-Reset": (_INT, "seconds until the window is full again"),
    "RateLimit-Policy": (_TEXT, 'the limit and its window: "<limit>;w=<seconds>"'),
}
RATE_LIMIT = ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy"]
#: Operations whose 202 says where the new workflow is.
STARTS = {"submit", "start"}
#: FastAPI's own 422 schemas, replaced by problem details.
FASTAPI_422 = ("HTTPValidationError", "ValidationError")


def build(api: FastAPI, app: App) -> dict[str, Any]:
    """The document of ``api`` serving ``app`` (cached on ``api`` by the caller)."""
    schema = get_openapi(
        title=api.title, version=api.version, description=api.description, routes=api.routes
    )
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"}
    }
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            public = path in UNAUTHENTICATED
            if public:
                operation["security"] = []
                for status in ("401", "403", "413", "429"):
                    operation.get("responses", {}).pop(status, None)
            else:
                operation["security"] = [{"bearer": []}]
            for status, response in operation.get("responses", {}).items():
                if int(status) >= 400:  # the handlers answer every error as problem details
                    response["content"] = {MEDIA_TYPE: response["content"][MEDIA_TYPE]}
                response["headers"] = _headers(operation["operationId"], int(status), public)
    models = components.setdefault("schemas", {})
    for name in FASTAPI_422:
        models.pop(name, None)
    models["StartBody"] = StartBody.model_json_schema()  # read by hand, documented here
    _workflow_inputs(schema, app)
    return schema


def _headers(operation: str, status: int, public: bool) -> dict[str, Any]:
    names = ["X-Request-ID"]
    if not public and (status < 300 or status == 429):
        names += RATE_LIMIT
    if status in (429, 503) or (operation == "result" and status == 202):
        names.append("Retry-After")
    if operation in STARTS and status == 202:
        names.append("Location")
    headers: dict[str, dict[str, Any]] = {}
    for name in names:
        kind, description = HEADERS[name]
        headers[name] = {"description": description, "schema": kind}
    headers["X-Request-ID"]["required"] = True
    return headers


def _workflow_inputs(schema: dict[str, Any], app: App) -> None:
    """Each workflow whose start step takes a pydantic model gets its own start and batch
    operations, typed with that model (``start_<name>``, ``start_batch_<name>``)."""
    adapters: list[tuple[str, Literal["validation"], TypeAdapter[Any]]] = [
        (name, "validation", wf.start_step.input_adapter)
        for name, wf in app.workflows.items()
        if wf.start_step.input_adapter is not None
    ]
    if not adapters:
        return
    refs, defs = TypeAdapter.json_schemas(adapters, ref_template="#/components/schemas/{model}")
    models = schema["components"].setdefault("schemas", {})
    for model, definition in defs.get("$defs", {}).items():
        models.setdefault(model, definition)  # the API's own models keep their names
    paths = schema["paths"]
    start = paths["/v1/workflows/{workflow}"]["post"]
    batch = paths["/v1/workflows/{name}/batch"]["post"]
    for (name, _), ref in refs.items():
        ident = re.sub(r"\W", "_", name)
        paths[f"/v1/workflows/{name}"] = {
            "post": _concrete(start, f"start_{ident}", f"Start {name}", ref)
        }
        many = {"type": "array", "items": ref}
        summary = f"Start {name} once per input"
        paths[f"/v1/workflows/{name}/batch"] = {
            "post": _concrete(batch, f"start_batch_{ident}", summary, many)
        }


def _concrete(
    template: dict[str, Any], operation_id: str, summary: str, body: dict[str, Any]
) -> dict[str, Any]:
    operation = copy.deepcopy(template)
    operation["operationId"] = operation_id
    operation["summary"] = summary
    operation["parameters"] = [p for p in operation["parameters"] if p["in"] != "path"]
    operation["requestBody"]["content"]["application/json"]["schema"] = body
    return operation
