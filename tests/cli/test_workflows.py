"""`conveyor list`, `result` and `events` against a real Redis (the commands run as real
subprocesses; the workers run in the test, until idle)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import App, Client, NonRetryableError, StepContext, Worker, Workflow, wait
from conveyor.embedded import EmbeddedRedis
from tests.cli.test_cli import ROOT, assert_one_line_error, conveyor


def drain(app: App) -> None:
    asyncio.run(Worker(app, block_ms=50, promote_interval=0.02).run(until_idle=True))


def flow_app(redis: EmbeddedRedis, namespace: str) -> App:
    gate = Workflow("gate")

    @gate.step(start=True)
    async def ask(ctx: StepContext, x: Any) -> Any:
        ctx.emit({"asked": x})
        ctx.state["x"] = x
        return wait("approval", then=answer)

    @gate.step
    async def answer(ctx: StepContext, payload: Any) -> Any:
        if payload == "boom":
            raise NonRetryableError("refused")
        return {"x": ctx.state["x"], "got": payload}

    echo = Workflow("echo")

    @echo.step
    def repeat(ctx: StepContext, x: Any) -> Any:
        return x

    return App([gate, echo], redis_url=redis.url, namespace=namespace, partitions=4)


@pytest.fixture
def env(redis7: EmbeddedRedis, namespace: str) -> dict[str, str]:
    return {"REDIS_URL": redis7.url, "CONVEYOR_NAMESPACE": namespace, "CONVEYOR_PARTITIONS": "4"}


@pytest.fixture
def client(redis7: EmbeddedRedis, namespace: str) -> Iterator[Client]:
    with Client(app=flow_app(redis7, namespace)) as client:
        yield client


def test_list_filters_pages_and_prints_json(client: Client, env: dict[str, str]) -> None:
    app = client._client.app
    assert app is not None
    echoes = [client.start("echo", i) for i in range(3)]
    gates = [client.start("gate", i) for i in range(2)]
    drain(app)  # the echoes complete, the gates wait

    listed = conveyor("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    newest = [i["id"] for i in page["items"]]
    assert sorted(newest) == sorted(echoes + gates) and page["next_cursor"] is None
    created = [i["created_at"] for i in page["items"]]
    assert created == sorted(created, reverse=True)  # newest first

    waiting = json.loads(conveyor("list", "--status", "WAITING", "--json", env=env).stdout)
    assert {(i["id"], i["workflow"], i["status"]) for i in waiting["items"]} == {
        (g, "gate", "waiting") for g in gates
    }
    named = json.loads(conveyor("list", "--name", "echo", "--json", env=env).stdout)
    assert {i["status"] for i in named["items"]} == {"completed"} and len(named["items"]) == 3

    first = conveyor("list", "--limit", "3", env={**env, "COLUMNS": "200"})
    assert first.returncode == 0, first.stderr
    rows = [line.split("│")[1:4] for line in first.stdout.splitlines() if line.startswith("│ ")]
    assert [[c.strip() for c in row] for row in rows] == [
        [i["id"], i["workflow"], i["status"]] for i in page["items"][:3]
    ]  # one row per workflow: id, name, status
    cursor = first.stderr.split("more: --cursor ")[1].strip()
    rest = json.loads(conveyor("list", "--cursor", cursor, "--json", env=env).stdout)
    assert [i["id"] for i in rest["items"]] == newest[3:]

    none = conveyor("list", "--name", "nobody", env=env)
    assert none.returncode == 0 and none.stdout == "no workflows\n"
    assert_one_line_error(conveyor("list", "--cursor", "bogus", env=env), "invalid cursor")
    too_many = conveyor("list", "--limit", "5000", env=env)
    assert too_many.returncode == 2 and "Invalid value for '--limit'" in too_many.stderr


def test_result_waits_and_exits_by_outcome(client: Client, env: dict[str, str]) -> None:
    app = client._client.app
    assert app is not None
    done, failed, cancelled, waiting = (client.start("gate", i) for i in range(4))
    drain(app)
    # `result` waits: started before the workflow can finish, it prints the result once it has
    waiter = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "result", done, "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **env},
    )  # fmt: skip
    client.signal(done, "approval", "yes")
    client.signal(failed, "approval", "boom")
    client.cancel(cancelled)
    drain(app)
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert json.loads(out) == {"x": 0, "got": "yes"}

    as_json = conveyor("result", done, "--json", env=env)
    assert json.loads(as_json.stdout) == {
        "id": done, "status": "completed", "result": {"x": 0, "got": "yes"}
    }  # fmt: skip
    broken = conveyor("result", failed, env=env)
    assert broken.returncode == 2 and broken.stdout == ""
    assert_one_line_error(broken, "failed in step 'answer': NonRetryableError: refused")
    broken_json = conveyor("result", failed, "--json", env=env)
    body = json.loads(broken_json.stdout)
    assert broken_json.returncode == 2 and body["status"] == "failed"
    assert body["error"]["message"] == "refused"
    stopped = conveyor("result", cancelled, env=env)
    assert stopped.returncode == 3
    assert_one_line_error(stopped, f"workflow {cancelled} was cancelled")
    late = conveyor("result", waiting, "--timeout", "0.2", "--json", env=env)
    assert late.returncode == 4 and json.loads(late.stdout) == {"id": waiting, "status": "waiting"}
    assert_one_line_error(late, "did not finish within 0.2s")
    assert_one_line_error(conveyor("result", "0" * 32, env=env), "no workflow with id")
    # `start --wait` exits the same way
    started = conveyor("start", "gate", "--wait", "--timeout", "0.2", env=env)
    assert started.returncode == 4 and "did not finish within 0.2s" in started.stderr


def test_events_prints_and_follows(client: Client, env: dict[str, str]) -> None:
    app = client._client.app
    assert app is not None
    wf_id = client.start("gate", 7)
    drain(app)  # it emitted, its first step completed, now it waits for the signal

    so_far = conveyor("events", wf_id, env=env)
    assert so_far.returncode == 0, so_far.stderr
    lines = so_far.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[1:] == ["emit", "ask", "task", "1", "attempt", "1:", '{"asked":', "7}"]
    assert lines[1].split()[1:7] == ["step", "ask", "task", "1", "attempt", "1"]
    assert lines[1].split()[7] == "completed"

    follower = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "events", wf_id, "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())  # it has read what was there
        assert (first["event"], first["data"]["data"]) == ("emit", {"asked": 7})
        client.signal(wf_id, "approval", "ok")
        drain(app)  # what happens now reaches the follower, which ends with the workflow
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["event"], e["data"].get("step")) for e in events] == [
        ("step", "ask"), ("step", "answer"), ("end", None)
    ]  # fmt: skip
    assert events[-1]["data"] == {"status": "completed"}
    assert events[1]["data"]["result"] == {"x": 7, "got": "ok"}

    ended = conveyor("events", wf_id, "--follow", env=env)  # a finished one: no waiting
    assert ended.returncode == 0 and ended.stdout.splitlines()[-1].split()[1:] == [
        "end", "completed"
    ]  # fmt: skip
    assert_one_line_error(conveyor("events", "0" * 32, env=env), "no workflow with id")


def test_events_of_a_workflow_run_without_event_streams(
    redis7: EmbeddedRedis, namespace: str, env: dict[str, str]
) -> None:
    """Workers with CONVEYOR_EVENTS=0 write no `end` event: following a finished workflow
    still ends at once."""
    app = flow_app(redis7, namespace)
    app.settings = app.settings.replace(events=False)
    with Client(app=app) as client:
        wf_id = client.start("echo", 1)
        drain(app)
        assert client.status(wf_id).status == "completed"
    quiet = conveyor("events", wf_id, "--follow", env=env)
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert quiet.stderr.startswith("no events")
