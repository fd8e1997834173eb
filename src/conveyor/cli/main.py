"""``conveyor``: run workers and dev mode, start and inspect workflows, handle dead letters."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape

from ..client import AsyncClient
from ..errors import ConveyorError, WorkflowFailedError
from ..scaling.hpa import DEFAULT_BEHAVIOR, default_target
from ..settings import Settings
from ..storage.connection import UNAVAILABLE
from . import observe, scale, security
from .output import print_dead_letters, print_status

T = TypeVar("T")

cli = typer.Typer(
    name="conveyor",
    help="Durable, high-throughput agentic workflows on Redis Streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq = typer.Typer(help="List, replay and drop dead letters.", no_args_is_help=True)
cli.add_typer(dlq, name="dlq")

# no emoji codes (":b:" in a message is text) and no hard wrapping of long lines: ids, keys
# and commands must come out whole when piped
out = Console(emoji=False, soft_wrap=True)
err = Console(stderr=True, emoji=False, soft_wrap=True)

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url", envvar="REDIS_URL", help="Redis URL (default: redis://localhost:6379/0)."
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace", envvar="CONVEYOR_NAMESPACE", help="Key namespace (default: conveyor)."
    ),
]
LogLevel = Annotated[
    str, typer.Option("--log-level", envvar="CONVEYOR_LOG_LEVEL", help="DEBUG, INFO, WARNING...")
]
LogFormat = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        envvar="CONVEYOR_LOG_FORMAT",
        help="json, console, or auto (console on a terminal, else JSON lines).",
    ),
]
Partitions = Annotated[
    int | None,
    typer.Option(
        "--partitions", envvar="CONVEYOR_PARTITIONS", help="Stream partitions (default: 16)."
    ),
]

# the HPA's stabilization windows: `worker --autoscale` and `autoscale-sim` (a negative one
# is refused by ScalingRules, in one readable line)
ScaleUpWindow = Annotated[
    float,
    typer.Option("--scale-up-window", help="Seconds a higher backlog must last to scale up."),
]
ScaleDownWindow = Annotated[
    float,
    typer.Option(
        "--scale-down-window",
        help="Seconds the backlog must stay low before scaling down.",
    ),
]


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def readable_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn expected failures into one readable line and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except WorkflowFailedError as exc:
            fail(str(exc), 2)
        except ConveyorError as exc:
            fail(str(exc))
        except UNAVAILABLE as exc:
            fail(f"cannot reach Redis: {exc}")
        except RedisError as exc:
            fail(f"Redis error: {exc}")
        raise AssertionError("unreachable")

    return wrapper


def settings_from(redis_url: str | None, namespace: str | None, partitions: int | None) -> Settings:
    return Settings.from_env(redis_url=redis_url, namespace=namespace, partitions=partitions)


def with_client(
    redis_url: str | None,
    namespace: str | None,
    partitions: int | None,
    action: Callable[[AsyncClient], Coroutine[Any, Any, T]],
) -> T:
    settings = settings_from(redis_url, namespace, partitions)

    async def go() -> T:
        async with AsyncClient(
            settings.redis_url, settings.namespace, partitions=settings.partitions
        ) as client:
            return await action(client)

    return asyncio.run(go())


def parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")


# -- workers ---------------------------------------------------------------------------------


@cli.command()
@readable_errors
def worker(
    app: Annotated[str, typer.Argument(help="The App to run, as MODULE:ATTRIBUTE.")],
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Steps running at once per process.")
    ] = 64,
    processes: Annotated[
        int, typer.Option("--processes", "-p", min=1, help="Worker processes.")
    ] = 1,
    queues: Annotated[
        str | None,
        typer.Option("--queues", "-q", help="Comma-separated queues (default: all of the app's)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Thread pool size for sync steps.")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="Seconds to finish running steps on SIGTERM.")
    ] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            envvar="CONVEYOR_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve the metrics of all worker processes (/metrics) and the probes "
            "(/healthz, /readyz, /drain) on this port.",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics port listens on.")
    ] = "0.0.0.0",
    autoscale: Annotated[
        str | None,
        typer.Option(
            "--autoscale",
            metavar="MIN:MAX",
            help="Grow and shrink the worker processes between MIN and MAX on the backlog "
            "(instead of --processes), as the Kubernetes HPA does.",
        ),
    ] = None,
    autoscale_target: Annotated[
        float | None,
        typer.Option(
            "--autoscale-target",
            min=1,
            help="Backlog (tasks waiting or running) per process to aim at "
            "(default: 80% of --concurrency).",
        ),
    ] = None,
    autoscale_interval: Annotated[
        float,
        typer.Option("--autoscale-interval", min=0.1, help="Seconds between decisions."),
    ] = 15.0,
    scale_up_window: ScaleUpWindow = DEFAULT_BEHAVIOR.scale_up.stabilization_window,
    scale_down_window: ScaleDownWindow = DEFAULT_BEHAVIOR.scale_down.stabilization_window,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = None,
) -> None:
    """Run workers for an app until SIGTERM or Ctrl-C (then drain and exit 0)."""
    from ..loader import load_app
    from ..logs import setup_logging
    from ..scaling.local import AutoscaleOptions, parse_range
    from ..worker.process import WorkerOptions, run_workers

    scaling = None
    if autoscale is not None:
        if processes != 1:
            fail("use either --processes or --autoscale, not both")
        low, high = parse_range(autoscale)
        target = autoscale_target or default_target(concurrency)
        scaling = AutoscaleOptions(
            low, high, target, autoscale_interval, scale_up_window, scale_down_window
        )
    setup_logging(log_level, log_format)
    loaded = load_app(app)
    overrides = {"redis_url": redis_url, "namespace": namespace, "partitions": partitions}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    loaded.settings = loaded.settings.replace(**overrides)
    options = WorkerOptions(
        concurrency=concurrency,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        threads=threads,
        drain_timeout=drain_timeout,
        settings=overrides,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        autoscale=scaling,
    )
    raise typer.Exit(run_workers(app, loaded, processes, options, log_level))


@cli.command()
@readable_errors
def dev(
    app: Annotated[
        str | None,
        typer.Argument(help="The App to run, as MODULE:ATTRIBUTE (default: the bundled demo)."),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 64,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    data_dir: Annotated[
        str, typer.Option("--data-dir", help="Where the embedded Redis keeps its data.")
    ] = ".conveyor",
    log_level: LogLevel = "INFO",
    api_port: Annotated[
        int, typer.Option("--api-port", min=1, max=65535, help="Port of the HTTP API.")
    ] = 8000,
    no_api: Annotated[bool, typer.Option("--no-api", help="Do not serve the HTTP API.")] = False,
) -> None:
    """Everything on one machine: an embedded Redis (unless REDIS_URL is set), a worker and
    the HTTP API (no API keys; localhost only)."""
    from .dev import run_dev

    run_dev(
        app,
        concurrency=concurrency,
        redis_url=redis_url,
        namespace=namespace,
        data_dir=data_dir,
        log_level=log_level,
        api_port=None if no_api else api_port,
    )


# -- HTTP API --------------------------------------------------------------------------------


@cli.command()
@readable_errors
def api(
    app: Annotated[str, typer.Argument(help="The App to serve, as MODULE:ATTRIBUTE.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="API processes.")] = 1,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys (logged as a warning).")
    ] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = None,
) -> None:
    """Serve the HTTP API (see docs/api.md). API keys come from CONVEYOR_API_KEYS or
    CONVEYOR_API_KEYS_FILE (make them with `conveyor api-key`). Prometheus metrics are at
    /metrics (all API processes) and the queue exporter's at /metrics/queues."""
    import os

    from ..api.server import run
    from ..logs import setup_logging

    setup_logging(log_level, log_format)
    for name, value in (
        ("REDIS_URL", redis_url),
        ("CONVEYOR_NAMESPACE", namespace),
        ("CONVEYOR_PARTITIONS", str(partitions) if partitions else None),
    ):
        if value:
            os.environ[name] = value
    run(app, host=host, port=port, workers=workers, auth=False if no_auth else None,
        log_level=log_level)  # fmt: skip


@cli.command("api-key")
@readable_errors
def api_key(
    name: Annotated[str, typer.Option("--name", help="Who the key is for (logs, limits).")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: submit, read, admin.")
    ] = "submit,read",
) -> None:
    """Make an API key: prints the token (give it to the caller; it is not stored) and the
    line to add to CONVEYOR_API_KEYS or the keys file (it holds only the token's SHA-256)."""
    from ..api.settings import hash_token, new_token, parse_key

    token = new_token()
    line = f"{name}:{hash_token(token)}:{scopes}"
    parse_key(line)  # a readable error for a bad name or scope
    out.print(f"token:  {token}", highlight=False)
    out.print(f"config: {line}", highlight=False)


# -- workflows -------------------------------------------------------------------------------


@cli.command()
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
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            envvar="CONVEYOR_API_URL",
            help="Go through the HTTP API at this URL instead of Redis.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="CONVEYOR_API_KEY", help="API key (token) for --api."),
    ] = None,
) -> None:
    """Start a workflow and print its id (or, with --wait, its result as JSON). With --api
    it goes through the HTTP API, for machines that may not reach Redis."""
    payload = parse_json(input, "--input")
    if api is not None:
        from ..http import AsyncHttpClient  # httpx is loaded only when --api is used

    async def go(client: AsyncClient | AsyncHttpClient) -> None:
        workflow_id = await client.start(
            name, payload, idempotency_key=idempotency_key, delay=delay, max_steps=max_steps
        )
        if not wait:
            out.print(workflow_id, highlight=False)
            return
        err.print(f"started {workflow_id}", highlight=False)
        result = await client.result(workflow_id, timeout=timeout)
        out.print_json(json.dumps(result))

    if api is None:
        with_client(redis_url, namespace, partitions, go)
        return

    async def via_api(url: str) -> None:
        async with AsyncHttpClient(url, api_key) as client:
            await go(client)

    asyncio.run(via_api(api))


@cli.command()
@readable_errors
def status(
    workflow_id: Annotated[str, typer.Argument(help="Workflow id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
) -> None:
    """Show a workflow's status, result or error, and its step history."""
    st = with_client(redis_url, namespace, partitions, lambda c: c.status(workflow_id))
    if as_json:
        out.print_json(st.model_dump_json())
    else:
        print_status(out, st)


@cli.command()
@readable_errors
def cancel(
    workflow_id: Annotated[str, typer.Argument(help="Workflow id.")],
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
) -> None:
    """Cancel a workflow wherever it is: queued and delayed steps are dropped, waits released,
    running steps see ctx.cancelled (their results are discarded), child workflows are
    cancelled too, and its on_cancel step runs once."""
    final = with_client(redis_url, namespace, partitions, lambda c: c.cancel(workflow_id))
    out.print(f"{workflow_id} {final}", highlight=False)


@cli.command()
@readable_errors
def signal(
    workflow_id: Annotated[str, typer.Argument(help="Workflow id.")],
    name: Annotated[str, typer.Argument(help="Signal name, as in wait(name, ...).")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="Payload as JSON (default null).")
    ] = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
) -> None:
    """Send a signal to a workflow: it resumes if it waits for it, else the payload is kept
    for its next wait of that name. Prints 'delivered' or 'buffered'."""
    body = parse_json(payload, "--payload")
    outcome = with_client(
        redis_url, namespace, partitions, lambda c: c.signal(workflow_id, name, body)
    )
    out.print(f"{workflow_id} {name} {outcome}", highlight=False)


# -- dead letters ----------------------------------------------------------------------------


@dlq.command("list")
@readable_errors
def dlq_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
) -> None:
    """List dead letters, oldest first."""
    letters = with_client(redis_url, namespace, partitions, lambda c: c.dead_letters(limit))
    if as_json:
        for letter in letters:
            out.print(letter.model_dump_json(), highlight=False, soft_wrap=True)
    else:
        print_dead_letters(out, letters)


def _each_letter(
    ids: list[str] | None, all_: bool, action: str,
    redis_url: str | None, namespace: str | None, partitions: int | None,
    apply: Callable[[AsyncClient, str], Coroutine[Any, Any, Any]],
) -> None:  # fmt: skip
    if bool(ids) == all_:
        fail(f"give dead-letter ids to {action}, or --all (not both)")

    async def go(client: AsyncClient) -> int:
        targets = ids or [d.id for d in await client.dead_letters(limit=1_000_000)]
        failures = 0
        for dead_id in targets:
            try:
                result = await apply(client, dead_id)
                out.print(
                    f"{action} {dead_id}" + (f" -> workflow {result}" if result else ""),
                    highlight=False,
                )
            except ConveyorError as exc:
                failures += 1
                err.print(f"[red]error:[/] {exc}", highlight=False)
        if not targets:
            out.print("no dead letters")
        return failures

    if with_client(redis_url, namespace, partitions, go):
        raise typer.Exit(1)


@dlq.command("replay")
@readable_errors
def dlq_replay(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Dead-letter ids (from `dlq list`).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
) -> None:
    """Re-run the failed step of dead-lettered workflows."""
    _each_letter(ids, all_, "replayed", redis_url, namespace, partitions, lambda c, i: c.replay(i))


@dlq.command("drop")
@readable_errors
def dlq_drop(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Dead-letter ids (from `dlq list`).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Drop every dead letter.")] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
) -> None:
    """Delete dead letters for good."""
    _each_letter(ids, all_, "dropped", redis_url, namespace, partitions, lambda c, i: c.drop(i))


# `conveyor exporter`, `conveyor top` (cli/observe.py) and `conveyor autoscale-sim`
# (cli/scale.py): registered once the shared options
# above exist, which that module imports from here
observe.register(cli)
scale.register(cli)
security.register(cli)  # `conveyor acl` (cli/security.py)


def run() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
