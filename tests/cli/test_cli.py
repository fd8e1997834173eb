"""The command line, run as a real subprocess against a real Redis."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from conveyor import App, Client, NonRetryableError, StepContext, Worker, Workflow
from conveyor.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]


def conveyor(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert text in lines[0]


@pytest.fixture
def env(redis7: EmbeddedRedis, namespace: str) -> dict[str, str]:
    return {"REDIS_URL": redis7.url, "CONVEYOR_NAMESPACE": namespace, "CONVEYOR_PARTITIONS": "4"}


def assert_usage_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    """click's own error for a bad option value: exit 2, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert text in " ".join(result.stderr.replace("│", " ").split()), result.stderr


COMMANDS = ("worker", "dev", "api", "config", "api-key", "start", "status", "result", "list", "events",
            "signal", "cancel", "exporter", "top", "autoscale-sim", "acl", "dlq")  # fmt: skip


def test_help_lists_every_command_on_one_line() -> None:
    result = conveyor("--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    panel = result.stdout.split("Commands")[1]
    rows = [line.strip("│ ") for line in panel.splitlines()[1:] if line.startswith("│")]
    assert [row.split()[0] for row in rows] == list(COMMANDS), rows  # no wrapped summaries
    assert conveyor("dlq", "--help").returncode == 0


def test_every_command_help_is_a_summary_then_detail() -> None:
    """The first paragraph (what --help lists) is one line ending with a period."""
    import typer

    from conveyor.cli.main import cli

    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, command
        if hasattr(command, "list_commands"):  # a group (typer's own copy of click's)
            ctx = typer.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, f"{path} {name}")

    commands = list(walk(typer.main.get_command(cli), "conveyor"))
    assert len(commands) == len(COMMANDS) + 4  # the group itself; dlq list, replay, drop
    for path, command in commands:
        summary = (command.help or "").strip().split("\n\n")[0]
        assert summary.endswith(".") and "\n" not in summary, (path, summary)
        assert len(f"{path.split()[-1]:<15}{summary}") <= 100, (path, summary)


def test_version() -> None:
    from conveyor import __version__

    result = conveyor("--version")
    assert result.returncode == 0 and result.stdout == f"conveyor {__version__}\n"


def test_enumerated_options_are_choices(env: dict[str, str]) -> None:
    """--log-level, --log-format, --profile, --status take only their values (any case)."""
    from conveyor.cli.scale import ProfileName
    from conveyor.scaling.sim import PROFILES

    assert tuple(ProfileName) == PROFILES
    assert_usage_error(
        conveyor("worker", "conveyor.demo:app", "--log-format", "yaml", env=env),
        "'yaml' is not one of 'json', 'console', 'auto'",
    )
    # a variable is the settings module's to refuse, in one line naming it
    assert_one_line_error(
        conveyor("exporter", env={**env, "CONVEYOR_LOG_LEVEL": "LOUD"}),
        "CONVEYOR_LOG_LEVEL='LOUD': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    )
    assert_usage_error(conveyor("autoscale-sim", "--profile", "flat"), "'flat' is not one of")
    assert_usage_error(conveyor("list", "--status", "done", env=env), "'done' is not one of")
    # the case does not matter: these reach the app's import (and fail there)
    accepted = conveyor("worker", "no_such_module:app", "--log-level", "debug",
                        "--log-format", "JSON", env=env)  # fmt: skip
    assert_one_line_error(accepted, "cannot import module")


def test_readable_errors(env: dict[str, str]) -> None:
    assert_one_line_error(conveyor("start", "nope", env=env), "unknown workflow 'nope'")
    assert_one_line_error(
        conveyor("start", "x", "--input", "{bad", env=env), "--input is not valid JSON"
    )
    assert_one_line_error(conveyor("status", "0" * 32, env=env), "no workflow with id")
    assert_one_line_error(conveyor("dlq", "replay", env=env), "give dead-letter ids")
    assert_one_line_error(
        conveyor("dlq", "drop", "bogus", env=env), "invalid dead-letter id 'bogus'"
    )
    closed = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    assert_one_line_error(conveyor("status", "abc", env=closed), "cannot reach Redis")
    assert_one_line_error(conveyor("worker", "no_such_module:app", env=env), "cannot import module")
    assert_one_line_error(
        conveyor("worker", "conveyor.demo:nothing", env=env), "has no attribute 'nothing'"
    )
    assert_one_line_error(
        conveyor("worker", "conveyor.demo:app", "--queues", "default, nope", env=env),
        "no step of this app runs on queue(s) ['nope']",
    )
    assert_one_line_error(
        conveyor("status", "x", env={**env, "REDIS_URL": "http://x"}), "unsupported Redis URL"
    )


def test_worker_processes_start_status_and_sigterm(env: dict[str, str]) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "conveyor.demo:app", "--processes", "2"],
        env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        registry = redis.Redis.from_url(env["REDIS_URL"])
        deadline = time.monotonic() + 20
        while not registry.hexists(f"{env['CONVEYOR_NAMESPACE']}:workflows", "demo"):
            assert time.monotonic() < deadline, "the workers never registered"
            time.sleep(0.05)
        registry.close()
        result = conveyor("start", "demo", "--input", '"cli"', "--wait", "--timeout", "20", env=env)
        assert result.returncode == 0, result.stderr
        assert '"message": "HELLO, CLI!!!"' in result.stdout
        workflow_id = result.stderr.split()[-1]
        status = conveyor("status", workflow_id, env=env)
        assert status.returncode == 0 and "completed" in status.stdout and "shout" in status.stdout
        as_json = conveyor("status", workflow_id, "--json", env=env)
        assert '"status": "completed"' in as_json.stdout
        started = conveyor("start", "demo", "--input", '"again"', env=env)
        assert re.fullmatch(r"[0-9a-f]{32}\n", started.stdout)
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    assert output.count("serving queues") == 2 and output.count("stopped") >= 2


def test_dlq_list_replay_drop(redis7: EmbeddedRedis, namespace: str, env: dict[str, str]) -> None:
    broken = {"on": True}
    wf = Workflow("dlq")

    @wf.step
    def fragile(ctx, x):
        if broken["on"]:
            raise NonRetryableError(f"bad {x}")
        return x

    app = App([wf], redis_url=redis7.url, namespace=namespace, partitions=4)
    import asyncio

    with Client(app=app) as client:
        ids = [client.start("dlq", i) for i in range(3)]
        asyncio.run(Worker(app, block_ms=50).run(until_idle=True))
        listing = conveyor("dlq", "list", env={**env, "COLUMNS": "250"})
        assert listing.returncode == 0 and listing.stdout.count("NonRetryableError: bad") == 3
        as_json = conveyor("dlq", "list", "--json", env=env)
        assert as_json.stdout.count('"type":"NonRetryableError"') == 3
        letters = client.dead_letters()
        replay = conveyor("dlq", "replay", letters[0].id, env=env)
        assert replay.returncode == 0 and f"-> workflow {letters[0].workflow_id}" in replay.stdout
        again = conveyor("dlq", "replay", letters[0].id, env=env)
        assert again.returncode == 1 and "no dead letter" in again.stderr
        broken["on"] = False
        asyncio.run(Worker(app, block_ms=50).run(until_idle=True))
        assert client.status(letters[0].workflow_id or "").status == "completed"
        for verb in ("drop", "replay"):  # no terminal to ask on, no --yes: refused, untouched
            assert_one_line_error(
                conveyor("dlq", verb, "--all", env=env),
                f"dlq {verb} --all needs confirmation: pass --yes (stdin is not a terminal)",
            )
        assert len(client.dead_letters()) == 2
        dropped = conveyor("dlq", "drop", "--all", "--yes", env=env)
        assert dropped.returncode == 0 and dropped.stdout.count("dropped") == 2
        assert client.dead_letters() == [] and len(ids) == 3
        nothing = conveyor("dlq", "replay", "--all", "-y", env=env)
        assert nothing.returncode == 0 and nothing.stdout == "no dead letters\n"


def on_a_terminal(args: list[str], answer: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``conveyor ARGS`` with a pseudo-terminal as stdin, typing ``answer``."""
    import pty

    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args], stdin=slave, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **env},
        )  # fmt: skip
        os.write(master, answer.encode())  # kept by the terminal until the prompt reads it
        out, err = process.communicate(timeout=30)
    finally:
        os.close(slave)
        os.close(master)
    return process.returncode, out, err


def test_dlq_all_asks_on_a_terminal(
    redis7: EmbeddedRedis, namespace: str, env: dict[str, str]
) -> None:
    import asyncio

    wf = Workflow("doomed")

    @wf.step
    def fail_now(ctx: StepContext, x: Any) -> Any:
        raise NonRetryableError("no")

    app = App([wf], redis_url=redis7.url, namespace=namespace, partitions=4)
    with Client(app=app) as client:
        for i in range(2):
            client.start("doomed", i)
        asyncio.run(Worker(app, block_ms=50).run(until_idle=True))
        assert len(client.dead_letters()) == 2
        code, out, err = on_a_terminal(["dlq", "drop", "--all"], "n\n", env)
        assert code == 1 and "Drop all 2 dead letters for good? [y/N]" in err
        assert "error: aborted: nothing was changed" in err and out.strip() == ""
        assert len(client.dead_letters()) == 2
        code, out, err = on_a_terminal(["dlq", "drop", "--all"], "y\n", env)
        assert code == 0 and out.count("dropped p") == 2, err
        assert client.dead_letters() == []


def test_signal_delayed_start_and_budget(
    redis7: EmbeddedRedis, namespace: str, env: dict[str, str]
) -> None:
    """`conveyor signal` resumes a waiting workflow; `start --delay --max-steps` reach the
    engine; a workflow's waits show in `conveyor status`; bad input is a one-line error."""
    import asyncio

    from conveyor import wait

    wf = Workflow("gate")

    @wf.step(start=True)
    async def ask(ctx, x):
        return wait("approval", then=answer)

    @wf.step
    async def answer(ctx, payload):
        return {"got": payload, "max": ctx.attempt}

    app = App([wf], redis_url=redis7.url, namespace=namespace, partitions=4)
    with Client(app=app) as client:
        asyncio.run(Worker(app, block_ms=50).run(until_idle=True))  # registers the workflow
        started = conveyor("start", "gate", "--input", "1", "--delay", "0.2", "--max-steps",
                           "7", env=env)  # fmt: skip
        assert started.returncode == 0, started.stderr
        wf_id = started.stdout.strip()
        asyncio.run(Worker(app, block_ms=50, promote_interval=0.02).run(until_idle=True))
        status = conveyor("status", wf_id, env={**env, "COLUMNS": "200"})
        assert "waiting" in status.stdout and "waiting for signal approval" in status.stdout
        assert "tasks: 2 of 7" in status.stdout
        sent = conveyor("signal", wf_id, "approval", "--payload", '{"ok": true}', env=env)
        assert sent.returncode == 0 and sent.stdout.split() == [wf_id, "approval", "delivered"]
        asyncio.run(Worker(app, block_ms=50).run(until_idle=True))
        assert client.result(wf_id, timeout=5) == {"got": {"ok": True}, "max": 1}
        assert_one_line_error(
            conveyor("signal", wf_id, "approval", env=env), "has already finished"
        )
        assert_one_line_error(
            conveyor("signal", wf_id, "approval", "--payload", "{x", env=env),
            "--payload is not valid JSON",
        )
        negative = conveyor("start", "gate", "--delay", "-1", env=env)  # typer's usage error
        assert negative.returncode == 2 and "Traceback" not in negative.stderr
        assert "Invalid value for '--delay'" in negative.stderr


def test_dev_runs_embedded_redis_and_worker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    dev = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "dev", "--data-dir", str(tmp_path),
         "--api-port", str(free_port())],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = api = None
        deadline = time.monotonic() + 20
        assert dev.stdout is not None
        while time.monotonic() < deadline and (url is None or api is None):
            line = dev.stdout.readline()
            match = re.search(r"export REDIS_URL=(\S+)", line)
            url = match.group(1) if match else url
            match = re.search(r"HTTP API .* at (http://\S+)", line)
            api = match.group(1) if match else api
        assert url, "dev did not print its Redis URL"
        assert api, "dev did not print its API URL"
        result = conveyor(
            "start", "demo", "--input", '"dev"', "--wait", "--timeout", "20", env={"REDIS_URL": url}
        )
        assert result.returncode == 0 and "HELLO, DEV!!!" in result.stdout, result.stderr
        # the HTTP API of dev mode: submit, then long-poll the result
        submitted = httpx.post(f"{api}/v1/workflows/demo", json="http", timeout=10)
        assert submitted.status_code == 202, submitted.text
        done = httpx.get(f"{api}{submitted.json()['status_url']}/result?wait=20", timeout=30)
        assert done.status_code == 200 and done.json()["result"] == {"message": "HELLO, HTTP!!!"}
    finally:
        dev.send_signal(signal.SIGINT)
        output, _ = dev.communicate(timeout=30)
    assert dev.returncode == 0, output
    assert "embedded Redis stopped" in output
    assert (tmp_path / "redis" / "redis.log").exists()
    assert list((tmp_path / "redis").glob("appendonly*"))  # data kept on disk (AOF)


def test_api_key_prints_a_token_and_its_hash_only() -> None:
    from conveyor.api.settings import hash_token, parse_key

    made = conveyor("api-key", "--name", "ci-bot", "--scopes", "submit,read",
                    env={"COLUMNS": "40"})  # fmt: skip
    assert made.returncode == 0, made.stderr
    lines = dict(line.split(":  ", 1) if ":  " in line else line.split(": ", 1)
                 for line in made.stdout.splitlines())  # fmt: skip
    token, config = lines["token"].strip(), lines["config"].strip()
    key = parse_key(config)  # whole on one line even in a narrow terminal
    assert key.name == "ci-bot" and key.sha256 == hash_token(token) and token not in config
    assert key.scopes == {"submit", "read"}
    assert_one_line_error(conveyor("api-key", "--name", "a;b"), "invalid API key name 'a;b'")
    assert_one_line_error(
        conveyor("api-key", "--name", "x", "--scopes", "root"), "scopes must be some of"
    )
