"""Fixtures of the fault-injection suite: a :class:`Lab` per test that owns every process it
starts (Redis servers, worker fleets, API processes) and stops them at the end, whatever
happened, plus the scenario's report."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.apps import chaos

from .checker import AttemptLog, Checker, ClientSubmitter, HttpSubmitter, Submitter
from .harness import ApiProcess, Fleet, RedisProcess, Report, worker_env


class Lab:
    """One scenario's processes, folders, namespace and report."""

    def __init__(self, tmp: Path, report: Report) -> None:
        self.tmp = tmp
        self.namespace = f"c{uuid.uuid4().hex[:10]}"
        self.report = report
        self.attempts = AttemptLog(tmp / "attempts")
        self.logs = tmp / "logs"
        self.servers: list[RedisProcess] = []
        self.fleets: list[Fleet] = []
        self.apis: list[ApiProcess] = []
        self.checkers: list[Checker] = []

    def redis(self, **options: Any) -> RedisProcess:
        server = RedisProcess(self.tmp / f"redis-{len(self.servers)}", **options)
        self.servers.append(server)
        return server

    def env(
        self,
        redis_url: str,
        *,
        namespace: str | None = None,
        attempts: AttemptLog | None = None,
        **extra: str,
    ) -> dict[str, str]:
        """The subprocesses' environment: this lab's namespace and attempts log unless
        others are given (a scenario comparing two runs uses two of each)."""
        log = (attempts or self.attempts).directory
        return worker_env(redis_url, namespace or self.namespace, log, extra)

    def fleet(self, env: dict[str, str], *args: str) -> Fleet:
        fleet = Fleet(env, self.logs / f"fleet-{len(self.fleets)}", *args)
        self.fleets.append(fleet)
        return fleet

    def api(self, env: dict[str, str], *args: str) -> ApiProcess:
        api = ApiProcess(env, self.logs, *args)
        self.apis.append(api)
        return api

    def client(
        self, redis_url: str, *, timeout: float = 10.0, namespace: str | None = None
    ) -> ClientSubmitter:
        return ClientSubmitter.to(
            redis_url, namespace or self.namespace, chaos.app, timeout=timeout
        )

    def http(self, api: ApiProcess, *, timeout: float = 15.0) -> HttpSubmitter:
        return HttpSubmitter(api.url, timeout=timeout)

    def checker(
        self, redis_url: str, submitters: Sequence[Submitter], *, namespace: str | None = None
    ) -> Checker:
        checker = Checker(redis_url, namespace or self.namespace, submitters)
        self.checkers.append(checker)
        return checker

    async def close(self) -> None:
        if not self.report.written:  # it failed before its end: keep what it saw
            self.report.add(unfinished=True, outcomes=[c.outcomes() for c in self.checkers])
            self.report.require("finished", False, "True", False)
            self.report.write()
        for checker in self.checkers:
            with contextlib.suppress(Exception):  # Redis may be gone by now: nothing to keep
                await checker.aclose()
        for api in self.apis:
            api.close()
        for fleet in self.fleets:
            fleet.close()
        for server in self.servers:
            server.close()


def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("CONVEYOR_CHAOS_REPORT")
    return Path(configured) if configured else tmp_path_factory.getbasetemp() / "chaos-report"


@pytest.fixture
async def lab(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Lab]:
    scenario = request.node.name.removeprefix("test_")
    lab = Lab(tmp_path, Report(scenario, report_dir(tmp_path_factory)))
    try:
        yield lab
    finally:
        await lab.close()
