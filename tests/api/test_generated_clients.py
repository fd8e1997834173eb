"""Clients generated from the API's own /openapi.json work: a Python one
(openapi-python-client, pinned) and a TypeScript one (openapi-typescript + openapi-fetch,
type-checked by tsc, versions locked in tests/api/typescript/package-lock.json). Each
starts workflows, reads their status and result, and gets a problem answer from a real
`conveyor api` process with a real worker process. And conveyor.http imports and works in a
virtual environment holding only httpx and pydantic (no redis, no telemetry packages)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.embedded import EmbeddedRedis
from tests.api.conftest import APP, TOKENS, ApiServer, start_api, stop_api
from tests.processes import ROOT, spawn, stop

ADMIN = TOKENS["admin"][0]
UV = ROOT / ".tools" / "uv" / "bin" / "uv"
#: The generator, from PyPI, in a tool environment of its own (it would hold typer back in
#: ours): its version and every package it needs are pinned in openapi-python-client.txt
#: (compiled from the .in file beside it by scripts/lock).
OPENAPI_PYTHON_CLIENT = "openapi-python-client==0.29.1"
TOOL_PINS = Path(__file__).with_name("openapi-python-client.txt")
TYPESCRIPT = Path(__file__).parent / "typescript"


@pytest.fixture(scope="module")
def served(redis7: EmbeddedRedis) -> Iterator[ApiServer]:
    """One API process and one worker process (both `python -m conveyor`)."""
    server = start_api(redis7, f"g{uuid.uuid4().hex[:10]}")
    worker = spawn(["worker", APP], server.env)
    try:
        yield server
    finally:
        stop(worker, timeout=15)
        stop_api(server)


@pytest.fixture(scope="module")
def document(served: ApiServer) -> dict[str, Any]:
    response = httpx.get(f"{served.url}/openapi.json", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def run(args: list[str | Path], cwd: Path, timeout: float = 300, **env: str) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# -- the document -------------------------------------------------------------------------------


def test_one_parameter_name_per_path_shape(document: dict[str, Any]) -> None:
    shapes: dict[str, str] = {}
    for path in document["paths"]:
        shape = "/".join("{}" if p.startswith("{") else p for p in path.split("/"))
        assert shapes.setdefault(shape, path) == path, f"{path} and {shapes[shape]}"


def test_typed_statuses_times_headers_and_problems(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["RunStatus"]["enum"] == ["running", "waiting", "completed", "failed",
                                            "cancelled"]  # fmt: skip
    assert schemas["ResultModel"]["properties"]["status"] == {
        "$ref": "#/components/schemas/RunStatus",
        "description": "completed, failed, cancelled; else still running",
    }
    created = schemas["WorkflowSummary"]["properties"]["created_at"]["anyOf"][0]
    assert created == {"type": "string", "format": "date-time"}
    start = document["paths"]["/v1/workflows/{workflow}"]["post"]["responses"]
    assert {"Location", "X-Request-ID", "RateLimit-Remaining"} <= set(start["202"]["headers"])
    assert "Retry-After" in start["429"]["headers"]
    assert set(start["404"]["content"]) == {"application/problem+json"}
    events = document["paths"]["/v1/workflows/{workflow_id}/events"]["get"]["responses"]["200"]
    assert events["content"]["text/event-stream"]["schema"]["type"] == "string"
    body = document["paths"]["/start"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/StartBody"}
    order = document["paths"]["/v1/workflows/orders"]["post"]["requestBody"]["content"]
    assert order["application/json"]["schema"] == {"$ref": "#/components/schemas/Order"}
    assert schemas["Order"]["required"] == ["sku", "qty"]
    assert "HTTPValidationError" not in schemas


# -- a Python client ------------------------------------------------------------------------------


def test_generated_python_client(
    served: ApiServer, document: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    run(
        [UV, "tool", "run", "--constraints", TOOL_PINS, "--from", OPENAPI_PYTHON_CLIENT,
         "openapi-python-client",
         "generate", "--path", "openapi.json", "--meta", "none", "--output-path", "conveyor_gen",
         "--fail-on-warning"],
        tmp_path,
    )  # fmt: skip
    sys.path.insert(0, str(tmp_path))
    try:
        gen = importlib.import_module("conveyor_gen")
        submit = importlib.import_module("conveyor_gen.api.submit")
        read = importlib.import_module("conveyor_gen.api.read")
        models = importlib.import_module("conveyor_gen.models")
        importlib.import_module("conveyor_gen.api.submit.start_orders")
        importlib.import_module("conveyor_gen.api.read.status")
        importlib.import_module("conveyor_gen.api.read.result")
        client = gen.AuthenticatedClient(
            base_url=served.url, token=ADMIN, timeout=httpx.Timeout(40)
        )
        with client:
            started = submit.start_orders.sync(client=client, body=models.Order(sku="py-1", qty=3))
            assert isinstance(started, models.Submitted)
            status = read.status.sync(started.id, client=client)
            assert isinstance(status, models.WorkflowStatus)
            assert status.workflow == "orders" and status.created_at is not None
            assert status.created_at.tzinfo is not None  # parsed as a date-time
            result = read.result.sync(started.id, client=client, wait=30)
            assert isinstance(result, models.ResultModel)
            assert result.status == models.RunStatus.COMPLETED
            assert result.to_dict()["result"] == {"sku": "py-1", "total": 6}

            missing = read.status.sync_detailed("no-such-workflow", client=client)
            assert missing.status_code == 404
            assert isinstance(missing.parsed, models.ProblemModel)
            assert missing.parsed.type_.endswith("/workflow-not-found")
            assert missing.headers["content-type"] == "application/problem+json"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "conveyor_gen"]:
            del sys.modules[name]


# -- a TypeScript client --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs Node.js (npm)")
def test_generated_typescript_client(
    served: ApiServer, document: dict[str, Any], tmp_path: Path
) -> None:
    """tsc checks client.ts against the generated types (its @ts-expect-error lines prove
    that wrong bodies and statuses are refused), then node runs it against the API."""
    for name in ("package.json", "package-lock.json", "tsconfig.json", "client.ts"):
        shutil.copy(TYPESCRIPT / name, tmp_path / name)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "openapi.json").write_text(json.dumps(document))
    run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"], tmp_path)
    bin_ = tmp_path / "node_modules" / ".bin"
    run([bin_ / "openapi-typescript", "build/openapi.json", "-o", "build/schema.d.ts"], tmp_path)
    run([bin_ / "tsc", "-p", "tsconfig.json"], tmp_path)
    out = run(["node", "build/client.js"], tmp_path, 120, BASE_URL=served.url, API_KEY=ADMIN)
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["location"] == f"/v1/workflows/{seen['id']}"
    assert seen["start_id"] and seen["first_status"] in {"running", "completed"}
    assert seen["result_status"] == "completed"
    assert seen["result"] == {"sku": "ts-1", "total": 4}
    assert seen["created_at"].endswith("Z") or "+00:00" in seen["created_at"]
    assert seen["problem_status"] == 404
    assert seen["problem_type"] == "application/problem+json"
    assert seen["problem"]["type"].endswith("/workflow-not-found")
    assert seen["invalid_status"] == 422
    assert {tuple(e["loc"]) for e in seen["invalid_errors"]} == {("body", "sku"), ("body", "qty")}


# -- conveyor.http alone --------------------------------------------------------------------------

ALONE = """
import importlib.util, json, sys
for engine in ("redis", "prometheus_client", "opentelemetry", "orjson", "fastapi"):
    assert importlib.util.find_spec(engine) is None, engine
import conveyor.http
from conveyor import RunStatus, WorkflowStatus
from conveyor.http import HttpClient, InputError
with HttpClient(sys.argv[1], sys.argv[2]) as client:
    wf_id = client.start("orders", {"sku": "alone", "qty": 5})
    status = client.status(wf_id)
    assert isinstance(status, WorkflowStatus), status
    result = client.result(wf_id, timeout=30)
    try:
        client.start("orders", {"sku": "", "qty": 0})
        raise AssertionError("an invalid input was accepted")
    except InputError as exc:
        refused = sorted(e["loc"][-1] for e in exc.errors)
    assert client.status(wf_id).status is RunStatus.COMPLETED
try:
    import conveyor.client  # the Redis client: needs the engine's dependencies
    raise AssertionError("conveyor.client imported without redis")
except ModuleNotFoundError as exc:
    missing = exc.name
print(json.dumps({"result": result, "refused": refused, "missing": missing,
                  "modules": sorted(m for m in sys.modules if m.startswith("conveyor"))}))
"""


def locked() -> list[str]:
    """``name==version`` of every package in uv.lock (constraints: the lock's versions)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return [f"{p['name']}=={p['version']}" for p in lock["package"] if "version" in p]


def test_http_client_imports_alone(served: ApiServer, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([UV, "venv", "--python", sys.executable, venv], tmp_path)
    (tmp_path / "constraints.txt").write_text("\n".join(locked()) + "\n")
    python = venv / "bin" / "python"
    run(
        [UV, "pip", "install", "--python", python, "-c", "constraints.txt", "httpx", "pydantic"],
        tmp_path,
    )  # fmt: skip
    env = {"PYTHONPATH": str(ROOT / "src"), "VIRTUAL_ENV": str(venv)}
    out = run([python, "-c", ALONE, served.url, ADMIN], tmp_path, 120, **env)
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["result"] == {"sku": "alone", "total": 10}
    assert seen["refused"] == ["qty", "sku"]
    # the Redis client fails on the first engine dependency it imports, not on conveyor's own
    assert seen["missing"] and not seen["missing"].startswith(("conveyor", "httpx", "pydantic."))
    assert "conveyor.storage" not in seen["modules"]
