"""The whole engine as separate processes against one Redis URL (any topology): a worker, the
HTTP API and the exporter are real `conveyor` commands; the test talks to them over HTTP and
through an in-process AsyncClient, as users would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from conveyor import App, AsyncClient
from conveyor.embedded import free_port
from tests.apps import ha_app
from tests.processes import ROOT, spawn, stop, wait_http

APP = "tests.apps.ha_app:app"


def engine_env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_VISIBILITY_TIMEOUT": "3",
        "CONVEYOR_LOG_FORMAT": "console",
        **extra,
    }


@dataclass
class Stack:
    env: dict[str, str]
    api_url: str = ""
    exporter_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    output: dict[str, str] = field(default_factory=dict)

    def app(self) -> App:
        settings = {
            "redis_url": self.env["REDIS_URL"],
            "namespace": self.env["CONVEYOR_NAMESPACE"],
            "visibility_timeout": float(self.env["CONVEYOR_VISIBILITY_TIMEOUT"]),
        }
        if "CONVEYOR_DURABILITY" in self.env:
            settings["durability"] = self.env["CONVEYOR_DURABILITY"]
        return App(workflows=list(ha_app.app.workflows.values()), **settings)

    def client(self) -> AsyncClient:
        return AsyncClient(app=self.app())

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api_url, timeout=30)

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.processes.items()}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip


@contextmanager
def engine(redis_url: str, namespace: str, *, workers: int = 1, **env: str) -> Iterator[Stack]:
    """Start ``workers`` worker processes, the API and the exporter on ``redis_url``; stop
    them all at the end (their output lands in ``stack.output``)."""
    stack = Stack(engine_env(redis_url, namespace, **env))
    try:
        for i in range(workers):
            stack.processes[f"worker{i}"] = spawn(["worker", APP, "--concurrency", "32"], stack.env)
        api_port, exporter_port = free_port(), free_port()
        stack.processes["api"] = spawn(
            ["api", APP, "--port", str(api_port), "--no-auth", "--log-level", "WARNING"],
            stack.env,
        )
        stack.api_url = f"http://127.0.0.1:{api_port}"
        stack.processes["exporter"] = spawn(
            ["exporter", "--host", "127.0.0.1", "--port", str(exporter_port)], stack.env
        )
        stack.exporter_url = f"http://127.0.0.1:{exporter_port}"
        wait_http(f"{stack.api_url}/readyz", stack.processes["api"])
        wait_http(f"{stack.exporter_url}/metrics", stack.processes["exporter"])
        yield stack
    finally:
        for name, process in stack.processes.items():
            stack.output[name] = stop(process, timeout=20)


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    ok: tuple[int, ...] = (200,),
    deadline: float | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request as a real client does across a failover: a 503 (no master yet, or
    ``not-replicated``) or a dropped connection is sent again, with the same body and
    headers (so a start keeps its Idempotency-Key), until an answer in ``ok`` or the
    deadline. Any other answer fails the test: never a 500."""
    deadline = deadline if deadline is not None else time.monotonic() + 60
    while True:
        try:
            response = await http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            assert time.monotonic() < deadline, f"{method} {url}: {exc!r}"
        else:
            if response.status_code in ok:
                return response
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, f"{method} {url}: still {response.text}"
        await asyncio.sleep(0.1)


async def run_tours(stack: Stack, count: int, n: int = 3) -> list[str]:
    """Start ``count`` tours over HTTP, signal each once it waits, and check every result.

    Starts carry an Idempotency-Key and every request is retried on a 503, so this also
    runs right after a failover (``durability=replicated`` answers 503 until the new master
    has a replica). A signal sent again after a 503 may be delivered twice: the second is
    buffered (or refused with 409 once the tour finished), which the tour never reads."""
    async with stack.http() as http:
        ids = []
        for i in range(count):
            response = await send(
                http, "POST", "/v1/workflows/tour", ok=(202,), json=n + i % 2,
                headers={"Idempotency-Key": f"tour-{uuid.uuid4().hex}"},
            )  # fmt: skip
            ids.append(response.json()["id"])
        pending = set(ids)
        deadline = time.monotonic() + 60
        while pending:
            assert time.monotonic() < deadline, f"never waited: {pending}"
            for wf_id in list(pending):
                status = (await send(http, "GET", f"/v1/workflows/{wf_id}")).json()
                if status["status"] == "waiting":
                    await send(
                        http, "POST", f"/v1/workflows/{wf_id}/signals/go", ok=(200, 409),
                        json={"from": wf_id},
                    )  # fmt: skip
                    pending.discard(wf_id)
            await asyncio.sleep(0.05)
        for i, wf_id in enumerate(ids):
            response = await send(http, "GET", f"/v1/workflows/{wf_id}/result", params={"wait": 30})
            assert response.json()["result"] == ha_app.expected_tour(n + i % 2, {"from": wf_id})
    return ids


def committed_once(history: list[Any]) -> dict[int, int]:
    """Successful attempts per task number in a workflow's history (each must be 1)."""
    counts: dict[int, int] = {}
    for record in history:
        if record.status == "completed":
            counts[record.task] = counts.get(record.task, 0) + 1
    return counts
