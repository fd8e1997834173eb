"""The OpenAPI document matches what the server does: schemathesis generates requests for
every operation of a running `conveyor api` process (admin key) and checks that none gets a
5xx, an undeclared status or content type, or a body that breaks the declared schema. Real
workflows in every state (completed, waiting, failed and dead-lettered, queued) are also
requested by id, so the 200 bodies are checked with real data and not only 404s."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conveyor import App, AsyncClient, Worker
from conveyor.embedded import EmbeddedRedis
from tests.api.conftest import ApiServer, start_api, stop_api
from tests.apps import api_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: The event stream's schema is a string, as OpenAPI 3.1 means it (the whole body: what
#: generated clients need); schemathesis reads it as each event's, so its body is checked by
#: the SSE tests of test_api.py and test_http_client.py instead.
STREAM_CHECKS = [c for c in CHECKS if c is not response_schema_conformance]


def checks_for(path: str) -> list[Any]:
    return STREAM_CHECKS if path.endswith("/events") else CHECKS


async def seed(server: ApiServer) -> dict[str, str]:
    """Workflows in every state, made through the API and a worker."""
    app = App(
        workflows=[api_app.orders, api_app.story, api_app.approval],
        redis_url=server.env["REDIS_URL"],
        namespace=server.env["CONVEYOR_NAMESPACE"],
        partitions=4,
    )
    async with httpx.AsyncClient(base_url=server.url, headers=server.auth("admin")) as c:
        story = (await c.post("/v1/workflows/story", json="owls")).json()["id"]
        waiting = (await c.post("/v1/workflows/approval", json={"doc": "x"})).json()["id"]
        async with AsyncClient(app=app) as direct:  # skips the API's input validation
            failed = await direct.start("orders", {"sku": "", "qty": 0})
        worker = Worker(app, block_ms=50, promote_interval=0.02)
        task = asyncio.create_task(worker.run())
        await c.get(f"/v1/workflows/{story}/result", params={"wait": 30})
        for _ in range(500):
            states = [
                (await c.get(f"/v1/workflows/{i}")).json()["status"] for i in (waiting, failed)
            ]
            if states == ["waiting", "failed"]:
                break
            await asyncio.sleep(0.02)
        worker.request_stop()
        await task
        queued = (await c.post("/v1/workflows/orders", json={"sku": "q", "qty": 1})).json()["id"]
        (letter,) = (await c.get("/v1/dlq")).json()["items"]
    return {"story": story, "waiting": waiting, "failed": failed, "queued": queued,
            "letter": letter["id"]}  # fmt: skip


@pytest.fixture(scope="module")
def served(redis7: EmbeddedRedis) -> Iterator[tuple[ApiServer, dict[str, str]]]:
    server = start_api(redis7, f"t{uuid.uuid4().hex[:10]}")
    try:
        yield server, asyncio.run(seed(server))
    finally:
        stop_api(server)


@pytest.fixture(scope="module")
def api_schema(served: tuple[ApiServer, dict[str, str]]) -> Any:
    return schemathesis.openapi.from_url(f"{served[0].url}/openapi.json")


OPERATIONS = [
    "POST /v1/workflows/{workflow}",
    "POST /v1/workflows/{name}/batch",
    "POST /start",
    "GET /v1/workflows/{workflow}",
    "GET /v1/workflows/{workflow_id}/result",
    "GET /v1/workflows/{workflow_id}/events",
    "GET /v1/workflows",
    "GET /v1/queues",
    "GET /v1/waits",
    "POST /v1/workflows/{workflow_id}/signals/{signal}",
    "POST /v1/workflows/{workflow_id}/cancel",
    "GET /v1/dlq",
    "POST /v1/dlq/{entry}/replay",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /metrics/queues",
    # typed with the input model of the workflow's start step (tests/apps/api_app.py)
    "POST /v1/workflows/orders",
    "POST /v1/workflows/orders/batch",
]


def test_the_document_lists_every_route(api_schema: Any) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_requests_conform(
    label: str, api_schema: Any, served: tuple[ApiServer, dict[str, str]]
) -> None:
    """Valid and invalid requests (schemathesis's positive and negative modes)."""
    server, _ = served
    operation = api_schema.find_operation_by_label(label)
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    statuses: list[int] = []

    @given(case=cases)
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    def check(case: Any) -> None:
        response = case.call_and_validate(
            base_url=server.url, headers=server.auth("admin"), checks=checks_for(label),
            timeout=10,
        )  # fmt: skip
        statuses.append(response.status_code)

    check()
    assert statuses and max(statuses) < 500


def test_real_workflows_conform(api_schema: Any, served: tuple[ApiServer, dict[str, str]]) -> None:
    server, ids = served
    by_id = "/v1/workflows/{workflow_id}"
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("/v1/workflows/{workflow}", "GET", {"path_parameters": {"workflow": ids["story"]}}, 200),
        ("/v1/workflows/{workflow}", "GET", {"path_parameters": {"workflow": ids["failed"]}}, 200),
        (
            "/v1/workflows/{workflow}",
            "GET",
            {"path_parameters": {"workflow": ids["waiting"]}},
            200,
        ),
        (f"{by_id}/result", "GET", {"path_parameters": {"workflow_id": ids["story"]}}, 200),
        (f"{by_id}/result", "GET", {"path_parameters": {"workflow_id": ids["failed"]}}, 200),
        (f"{by_id}/result", "GET", {"path_parameters": {"workflow_id": ids["queued"]}}, 202),
        (f"{by_id}/events", "GET", {"path_parameters": {"workflow_id": ids["story"]}}, 200),
        (
            f"{by_id}/events",
            "GET",
            {
                "path_parameters": {"workflow_id": ids["story"]},
                "query": {"last_event_id": "99999999999999999999-99999999999999999999"},
            },
            400,
        ),
        (
            f"{by_id}/events",
            "GET",
            {
                "path_parameters": {"workflow_id": ids["story"]},
                "query": {"last_event_id": "18446744073709551615-18446744073709551615"},
            },
            204,
        ),
        ("/v1/workflows", "GET", {"query": {"limit": 2}}, 200),
        ("/v1/waits", "GET", {}, 200),
        ("/v1/queues", "GET", {}, 200),
        ("/v1/dlq", "GET", {}, 200),
        (
            "/v1/workflows/{workflow_id}/signals/{signal}",
            "POST",
            {"path_parameters": {"workflow_id": ids["story"], "signal": "late"}, "body": 1},
            409,
        ),
        (
            "/v1/dlq/{entry}/replay",
            "POST",
            {"path_parameters": {"entry": "p0:99999999999999999999-99999999999999999999"}},
            404,
        ),
        ("/v1/dlq/{entry}/replay", "POST", {"path_parameters": {"entry": ids["letter"]}}, 200),
        ("/readyz", "GET", {}, 200),
        (
            "/v1/workflows/{workflow}",
            "POST",
            {"path_parameters": {"workflow": "approval"}, "body": {}},
            202,
        ),
        ("/v1/workflows/orders", "POST", {"body": {"sku": "s", "qty": 1}}, 202),
        ("/v1/workflows/orders/batch", "POST", {"body": [{"sku": "s", "qty": 1}]}, 202),
        (
            "/v1/workflows/{name}/batch",
            "POST",
            {"path_parameters": {"name": "approval"}, "body": [1, None]},
            202,
        ),
        ("/start", "POST", {"body": {"workflow": "approval", "doc": 1}}, 202),
        (
            "/v1/workflows/{workflow_id}/signals/{signal}",
            "POST",
            {"path_parameters": {"workflow_id": ids["waiting"], "signal": "approve"}},
            200,
        ),
        (
            "/v1/workflows/{workflow_id}/cancel",
            "POST",
            {"path_parameters": {"workflow_id": ids["waiting"]}},
            200,
        ),
    ]
    for path, method, data, status in cases:
        case = api_schema[path][method].Case(**data)
        response = case.call_and_validate(
            base_url=server.url, headers=server.auth("admin"), checks=checks_for(path),
            timeout=10,
        )  # fmt: skip
        assert response.status_code == status, (path, data, response.text)
