"""``conveyor start | status | result | list | events | signal | cancel``: one workflow's life,
through Redis or, with ``--api``, through the HTTP API."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from ..errors import (
    ConveyorError,
    ResultTimeoutError,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from .backend import Backend, Target, run_on
from .common import (
    ApiKey,
    ApiUrl,
    Namespace,
    Partitions,
    RedisUrl,
    err,
    out,
    parse_json,
    readable_errors,
)
from .output import event_line, print_status, print_workflows


class StatusName(StrEnum):
    """The statuses `conveyor list --status` filters on (those the API's listing takes)."""

    running = "running"
    waiting = "waiting"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


WorkflowId = Annotated[str, typer.Argument(help="Workflow id.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@readable_errors
def start(
    name: Annotated[str, typer.Argument(help="Workflow name.")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="Input as JSON.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait for the result and print it.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait with --wait.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Start at most once per key.")
    ] = None,
    delay: Annotated[
        float | None,
        typer.Option("--delay", min=0, help="Seconds before the first step runs (durable)."),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=1, help="Step budget of this run (default: workflow's)."),
    ] = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Start a workflow and print its id.

    With --wait, wait for it and print its result as JSON (exit codes as for `conveyor
    result`). With --api it goes through the HTTP API, for machines that may not reach Redis.
    """
    payload = parse_json(input, "--input")

    async def go(backend: Backend) -> None:
        workflow_id = await backend.start(
            name, payload, idempotency_key=idempotency_key, delay=delay, max_steps=max_steps
        )
        if not wait:
            out.print(workflow_id, highlight=False)
            return
        err.print(f"started {workflow_id}", highlight=False)
        result = await backend.result(workflow_id, timeout=timeout)
        out.print_json(json.dumps(result))

    run_on(Target(redis_url, namespace, partitions, api, api_key), go)


@readable_errors
def status(
    workflow_id: WorkflowId,
    as_json: AsJson = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Show a workflow's status, result or error, and its step history."""
    target = Target(redis_url, namespace, partitions, api, api_key)
    st = run_on(target, lambda b: b.status(workflow_id))
    if as_json:
        out.print_json(st.model_dump_json())
    else:
        print_status(out, st)


@readable_errors
def result(
    workflow_id: WorkflowId,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Seconds to wait (default: for ever)."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the outcome as one JSON object, whatever it is."),
    ] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Wait for a workflow to finish and print its result as JSON.

    Exits 2 when it failed, 3 when it was cancelled, 4 when --timeout passed first (with
    an error line on stderr). With --json, stdout gets {"id", "status", "result" or
    "error"} in every case, as the API's /result answers.
    """
    target = Target(redis_url, namespace, partitions, api, api_key)
    if not as_json:
        value = run_on(target, lambda b: b.result(workflow_id, timeout))
        out.print_json(json.dumps(value))
        return

    async def outcome(backend: Backend) -> tuple[dict[str, Any], ConveyorError | None]:
        body: dict[str, Any] = {"id": workflow_id}
        try:
            body |= {"status": "completed", "result": await backend.result(workflow_id, timeout)}
        except WorkflowFailedError as exc:
            return body | {"status": "failed", "error": exc.error}, exc
        except WorkflowCancelledError as exc:
            return body | {"status": "cancelled"}, exc
        except ResultTimeoutError as exc:
            return body | {"status": (await backend.status(workflow_id)).status}, exc
        return body, None

    body, error = run_on(target, outcome)
    out.print(json.dumps(body), highlight=False, soft_wrap=True)
    if error is not None:
        raise error  # its line on stderr and its exit code (readable_errors)


@readable_errors
def list_workflows(
    name: Annotated[str | None, typer.Option("--name", help="Only workflows of this name.")] = None,
    status: Annotated[
        StatusName | None,
        typer.Option("--status", case_sensitive=False, help="Only workflows in this status."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="Most workflows shown.")
    ] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Where to go on (printed after a full page).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"items": [...], "next_cursor": ...}.')
    ] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List recent workflows, newest first.

    Filters by name and status. After a full page, the line to get the next one goes to
    stderr (with --json, it is next_cursor).
    """
    target = Target(redis_url, namespace, partitions, api, api_key)
    page = run_on(
        target,
        lambda b: b.list_workflows(
            name=name, status=status.value if status else None, limit=limit, cursor=cursor
        ),
    )
    if as_json:
        items = [item.model_dump(mode="json") for item in page.items]
        out.print(json.dumps({"items": items, "next_cursor": page.next_cursor}), highlight=False)
        return
    print_workflows(out, page.items)
    if page.next_cursor and len(page.items) == limit:
        err.print(f"more: --cursor {page.next_cursor}", highlight=False)


@readable_errors
def events(
    workflow_id: WorkflowId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep following until the workflow ends.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help='One {"id", "event", "data"} object per line.')
    ] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Print a workflow's events: step attempts, what its steps emit, its end.

    Without --follow it prints the events so far (through --api: until the stream has been
    quiet for a second); with --follow it prints them as they come, until the workflow ends.
    """

    async def go(backend: Backend) -> int:
        printed = 0
        async for event in backend.events(workflow_id, follow):
            if as_json:
                line = json.dumps({"id": event.id, "event": event.event, "data": event.data})
            else:
                line = event_line(event)
            out.print(line, highlight=False, markup=False, soft_wrap=True)
            printed += 1
        return printed

    # Ctrl-C while following: exit 130 (cli.main.run)
    if not run_on(Target(redis_url, namespace, partitions, api, api_key), go):
        err.print("no events (workers with CONVEYOR_EVENTS=0 record none)", highlight=False)


@readable_errors
def signal(
    workflow_id: WorkflowId,
    name: Annotated[str, typer.Argument(help="Signal name, as in wait(name, ...).")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="Payload as JSON (default null).")
    ] = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Send a signal to a workflow; prints 'delivered' or 'buffered'.

    It resumes the workflow if it waits for that signal; otherwise the payload is kept for
    its next wait of that name.
    """
    body = parse_json(payload, "--payload")
    target = Target(redis_url, namespace, partitions, api, api_key)
    outcome = run_on(target, lambda b: b.signal(workflow_id, name, body))
    out.print(f"{workflow_id} {name} {outcome}", highlight=False)


@readable_errors
def cancel(
    workflow_id: WorkflowId,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a workflow wherever it is, and its child workflows.

    Queued and delayed steps are dropped, waits released, running steps see ctx.cancelled
    (their results are discarded), and its on_cancel step runs once.
    """
    target = Target(redis_url, namespace, partitions, api, api_key)
    final = run_on(target, lambda b: b.cancel(workflow_id))
    out.print(f"{workflow_id} {final}", highlight=False)


def register(cli: typer.Typer) -> None:
    """Add the workflow commands to ``cli``."""
    for command in (start, status, result):
        cli.command()(command)
    cli.command("list")(list_workflows)
    for command in (events, signal, cancel):
        cli.command()(command)
