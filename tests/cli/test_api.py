"""The CLI through the HTTP API (`--api URL` / CONVEYOR_API_URL): a real `conveyor api` process,
real Redis and a real worker; the commands get a Redis URL nobody listens on, so everything
they do goes over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from conveyor import App, Client
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.errors import DeadLetterNotFoundError
from conveyor.http import HttpClient
from tests.api.conftest import TOKENS, ApiServer, start_api, stop_api
from tests.api.test_http_client import worker_thread
from tests.apps import api_app
from tests.cli.test_cli import ROOT, assert_one_line_error, conveyor
from tests.helpers import until as eventually

ADMIN = TOKENS["admin"][0]


@pytest.fixture(scope="module")
def stack(redis7: EmbeddedRedis) -> Iterator[tuple[ApiServer, App]]:
    """One API process and one worker for the module; each test starts its own workflows."""
    namespace = f"c{uuid.uuid4().hex[:10]}"
    server = start_api(redis7, namespace)
    app = App(
        workflows=[api_app.orders, api_app.story, api_app.approval],
        redis_url=redis7.url, namespace=namespace, partitions=4,
    )  # fmt: skip
    try:
        with worker_thread(app):
            yield server, app
    finally:
        stop_api(server)


@pytest.fixture
def api(stack: tuple[ApiServer, App]) -> ApiServer:
    return stack[0]


@pytest.fixture
def via(api: ApiServer) -> dict[str, str]:
    """The environment of a command that may only use the API."""
    return {
        "CONVEYOR_API_URL": api.url,
        "CONVEYOR_API_KEY": ADMIN,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }


def test_workflow_commands(api: ApiServer, via: dict[str, str]) -> None:
    started = conveyor("start", "approval", "--input", '{"n": 1}', env=via)
    assert started.returncode == 0, started.stderr
    wf_id = started.stdout.strip()
    with HttpClient(api.url, ADMIN) as http:
        eventually(lambda: http.status(wf_id).status == "waiting")

    flags = ["--api", api.url, "--api-key", ADMIN]  # the options, not the environment
    status = conveyor("status", wf_id, "--json", *flags, env={"REDIS_URL": via["REDIS_URL"]})
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "waiting"
    listed = conveyor("list", "--name", "approval", "--status", "waiting", "--json", env=via)
    assert wf_id in [i["id"] for i in json.loads(listed.stdout)["items"]], listed.stderr
    table = conveyor("list", "--name", "approval", env={**via, "COLUMNS": "200"})
    row = next(line for line in table.stdout.splitlines() if wf_id in line)
    assert [cell.strip() for cell in row.split("│")[1:5]] == [wf_id, "approval", "waiting", "ask"]
    so_far = conveyor("events", wf_id, env=via)
    assert so_far.returncode == 0, so_far.stderr
    assert [line.split()[1:3] for line in so_far.stdout.splitlines()] == [["step", "ask"]]

    follower = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "events", wf_id, "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **via},
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().split()[1:3] == ["step", "ask"]
        sent = conveyor("signal", wf_id, "approve", "--payload", '"yes"', env=via)
        assert sent.stdout.split() == [wf_id, "approve", "delivered"], sent.stderr
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert [line.split()[1:3] for line in out.splitlines()] == [
        ["step", "decide"], ["end", "completed"]
    ]  # fmt: skip
    done = conveyor("result", wf_id, env=via)
    assert json.loads(done.stdout) == {"doc": {"n": 1}, "answer": "yes"}, done.stderr

    other = conveyor("start", "approval", env=via).stdout.strip()
    late = conveyor("result", other, "--timeout", "0.3", env=via)
    assert late.returncode == 4 and "did not finish within 0.3s" in late.stderr
    cancelled = conveyor("cancel", other, env=via)
    assert cancelled.stdout.split() == [other, "cancelled"], cancelled.stderr
    outcome = conveyor("result", other, "--json", env=via)
    assert outcome.returncode == 3
    assert json.loads(outcome.stdout) == {"id": other, "status": "cancelled"}

    story = conveyor("start", "story", "-i", '"otters"', "--wait", "--timeout", "30", env=via)
    assert story.returncode == 0 and json.loads(story.stdout) == {"story": "otters"}
    told = conveyor("events", story.stderr.split()[-1], "--follow", "--json", env=via)
    events = [json.loads(line) for line in told.stdout.splitlines()]
    assert [e["event"] for e in events].count("emit") == 10, told.stderr
    assert events[-1]["event"] == "end" and events[-1]["data"] == {"status": "completed"}


def test_dead_letters(stack: tuple[ApiServer, App], via: dict[str, str]) -> None:
    api, app = stack
    with Client(app=app) as client:  # past the API's input check: the step refuses it
        wf_id = client.start("orders", {"sku": "", "qty": 0})
    with HttpClient(api.url, ADMIN) as http:
        eventually(lambda: len(http.dead_letters()) == 1)
        letter = http.dead_letters()[0]
        assert (
            letter.workflow_id == wf_id and letter.error and letter.error.type == "StepInputError"
        )
        with pytest.raises(DeadLetterNotFoundError):
            http.replay("p0:1-0")
        page = http.list_workflows(name="orders", status="failed", limit=10)
        assert [w.id for w in page.items] == [wf_id] and page.next_cursor is None

        listing = conveyor("dlq", "list", "--json", env=via)
        assert [json.loads(line)["id"] for line in listing.stdout.splitlines()] == [letter.id]
        assert_one_line_error(
            conveyor("dlq", "replay", "--all", env=via), "dlq replay --all needs confirmation"
        )
        replayed = conveyor("dlq", "replay", "--all", "--yes", env=via)
        assert replayed.stdout.strip() == f"replayed {letter.id} -> workflow {wf_id}"
        again = conveyor("dlq", "replay", letter.id, env=via)
        assert again.returncode == 1 and f"no dead letter {letter.id!r}" in again.stderr
        eventually(lambda: len(http.dead_letters()) == 1)  # it failed again: a new letter
        assert http.dead_letters()[0].id != letter.id


def test_errors_are_one_line(api: ApiServer, via: dict[str, str]) -> None:
    reader = {**via, "CONVEYOR_API_KEY": TOKENS["reader"][0]}
    assert_one_line_error(conveyor("cancel", "abc", env=reader), "HTTP 403")
    assert_one_line_error(conveyor("status", "abc", env={**via, "CONVEYOR_API_KEY": "no"}), "401")
    closed = {**via, "CONVEYOR_API_URL": f"http://127.0.0.1:{free_port()}"}
    assert_one_line_error(conveyor("status", "abc", env=closed), "cannot reach the API at")
    assert_one_line_error(
        conveyor("list", "--api", "localhost:8000", env=via),
        "--api must be an http:// or https:// URL, not 'localhost:8000'",
    )
    assert_one_line_error(
        conveyor("list", "--api", "http://127.0.0.1:99999", env=via), "the port must be 1 to 65535"
    )
    assert_one_line_error(conveyor("status", "0" * 32, env=via), "no workflow with id")
    assert_one_line_error(conveyor("events", "0" * 32, env=via), "no workflow with id")
    assert_one_line_error(conveyor("list", "--cursor", "bogus", env=via), "invalid cursor")
    assert_one_line_error(conveyor("start", "nope", env=via), "nope")
    refused = conveyor("start", "orders", "--input", '{"sku": "", "qty": 1}', env=via)
    assert_one_line_error(refused, "sku")
    no_drop = conveyor("dlq", "drop", "--all", "--api", api.url, env=via)
    assert no_drop.returncode == 2 and "No such option: --api" in no_drop.stderr
