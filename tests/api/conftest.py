"""The HTTP API under test is a real `conveyor api` process (uvicorn) on a free port, talking
to a real redis-server; requests go over real HTTP (httpx)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from conveyor.api.settings import hash_token
from conveyor.embedded import EmbeddedRedis, free_port
from tests.processes import ROOT, spawn, stop, wait_http

APP = "tests.apps.api_app:app"

# one token per scope set; the server only ever sees their hashes
TOKENS = {
    "submitter": ("cvk_test_submit", "submit"),
    "reader": ("cvk_test_read", "read"),
    "admin": ("cvk_test_admin", "admin"),
    "both": ("cvk_test_both", "submit,read"),
}
KEYS = ";".join(f"{name}:{hash_token(tok)}:{scopes}" for name, (tok, scopes) in TOKENS.items())


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def auth(self, who: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[who][0]}"}

    def client(self, who: str | None = "admin", **options: object) -> httpx.Client:
        headers = self.auth(who) if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **options)  # type: ignore[arg-type]


def start_api(redis: EmbeddedRedis, namespace: str, *args: str, **env_extra: str) -> ApiServer:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis.url,
        "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_PARTITIONS": "4",
        "CONVEYOR_API_KEYS": KEYS,
        **env_extra,
    }
    process = spawn(["api", APP, "--port", str(port), "--log-level", "WARNING", *args], env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", process)
    return ApiServer(url, process, env)


def stop_api(server: ApiServer) -> str:
    return stop(server.process, timeout=15)


@pytest.fixture
def api(redis7: EmbeddedRedis, namespace: str) -> Iterator[ApiServer]:
    server = start_api(redis7, namespace)
    yield server
    stop_api(server)


@pytest.fixture
def make_api(redis7: EmbeddedRedis, namespace: str) -> Iterator[Callable[..., ApiServer]]:
    started: list[ApiServer] = []

    def make(*args: str, **env: str) -> ApiServer:
        server = start_api(redis7, namespace, *args, **env)
        started.append(server)
        return server

    yield make
    for server in started:
        stop_api(server)
