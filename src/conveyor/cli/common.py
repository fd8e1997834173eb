"""What every ``conveyor`` command shares: the consoles, one-line errors and exit codes, the
connection options, the enumerated options' choices, and confirmation of destructive work."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.markup import escape

from ..errors import (
    ConfigurationError,
    ConveyorError,
    ResultTimeoutError,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from ..scaling.hpa import DEFAULT_BEHAVIOR
from ..settings import (
    ClientSettings,
    LogSettings,
    RedisSecrets,
    RuntimeSettings,
    Settings,
    warn_unknown_variables,
)
from ..storage.connection import UNAVAILABLE
from ..storage.errors import RedisError

T = TypeVar("T")
G = TypeVar("G", bound=BaseSettings)

#: Exit codes besides 0 and 1 (any other error): scripts tell a workflow's outcome apart.
EXIT_FAILED = 2  # also click's usage errors
EXIT_CANCELLED = 3
EXIT_TIMEOUT = 4

# no emoji codes (":b:" in a message is text) and no hard wrapping of long lines: ids, keys
# and commands must come out whole when piped
out = Console(emoji=False, soft_wrap=True)
err = Console(stderr=True, emoji=False, soft_wrap=True)


class LogLevelName(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class LogFormatName(StrEnum):
    json = "json"
    console = "console"
    auto = "auto"


def _given(ctx: typer.Context, param: typer.CallbackParam) -> bool:
    source = ctx.get_parameter_source(param.name or "")
    return source is not None and source.name == "COMMANDLINE"


def _settings(group: type[G]) -> G:
    try:
        return group()
    except ConfigurationError as exc:
        fail(str(exc))


# Options whose variable the settings module reads (conveyor.settings declares each once): an
# option given on the command line wins, else the variable, else the default.
def _log_level(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    return value if _given(ctx, param) else LogLevelName(_settings(LogSettings).log_level)


def _log_format(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    if _given(ctx, param) or "log_format" not in _settings(LogSettings).model_fields_set:
        return value
    return LogFormatName(_settings(LogSettings).log_format)


def _api_url(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    return value if _given(ctx, param) else _settings(ClientSettings).api_url


def _api_key(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    secret = _settings(ClientSettings).api_key
    return value if _given(ctx, param) or secret is None else secret.get_secret_value()


RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", help="Redis URL (else REDIS_URL, else redis://localhost:6379/0)."),
]
Namespace = Annotated[
    str | None,
    typer.Option("--namespace", help="Key namespace (else CONVEYOR_NAMESPACE, else conveyor)."),
]
Partitions = Annotated[
    int | None,
    typer.Option("--partitions", help="Stream partitions (else CONVEYOR_PARTITIONS, else 16)."),
]
LogLevel = Annotated[
    LogLevelName,
    typer.Option(
        "--log-level",
        case_sensitive=False,
        callback=_log_level,
        help="Logging level (else CONVEYOR_LOG_LEVEL).",
    ),
]
LogFormat = Annotated[
    LogFormatName | None,
    typer.Option(
        "--log-format",
        case_sensitive=False,
        callback=_log_format,
        help="Log lines (else CONVEYOR_LOG_FORMAT, else auto: console on a terminal, else json).",
    ),
]
ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api",
        callback=_api_url,
        help="Go through the HTTP API at this URL instead of Redis (else CONVEYOR_API_URL).",
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", callback=_api_key, help="API key (token) for --api (else CONVEYOR_API_KEY)."
    ),
]
Yes = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a TTY).")
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
SCALE_UP_WINDOW = DEFAULT_BEHAVIOR.scale_up.stabilization_window
SCALE_DOWN_WINDOW = DEFAULT_BEHAVIOR.scale_down.stabilization_window


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def readable_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn expected failures into one readable line and a non-zero exit code; warn first
    about unknown CONVEYOR_* variables."""
    return _readable(fn, warn=True)


def readable_process_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """:func:`readable_errors` for the long-running processes, which warn about unknown
    variables themselves once their logging is set up (:func:`start_process`)."""
    return _readable(fn, warn=False)


def start_process(log_level: str | None, log_format: str | None) -> None:
    """What a worker, API or dev process does first: set up logging, warn about unknown
    variables, refuse a bad process variable in one line (not later in a child process)."""
    from ..logs import setup_logging

    setup_logging(log_level, log_format)
    warn_unknown_variables()
    RuntimeSettings()
    RedisSecrets()


def _readable(fn: Callable[..., T], warn: bool) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            if warn:
                warn_unknown_variables()
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except WorkflowFailedError as exc:
            fail(str(exc), EXIT_FAILED)
        except WorkflowCancelledError as exc:
            fail(str(exc), EXIT_CANCELLED)
        except ResultTimeoutError as exc:
            fail(str(exc), EXIT_TIMEOUT)
        except ConveyorError as exc:
            fail(str(exc))
        except UNAVAILABLE as exc:
            fail(f"cannot reach Redis: {exc}")
        except RedisError as exc:
            fail(f"Redis error: {exc}")

    return wrapper


def settings_from(redis_url: str | None, namespace: str | None, partitions: int | None) -> Settings:
    """The engine settings of a command without an App: its options above the environment."""
    return Settings.from_env(redis_url=redis_url, namespace=namespace, partitions=partitions)


def parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")


def can_confirm(yes: bool, what: str) -> None:
    """Refuse at once when confirmation is needed but nobody can give it: a prompt on a
    closed or piped stdin would hang a script, or read its data as the answer."""
    if not yes and not sys.stdin.isatty():
        fail(f"{what} needs confirmation: pass --yes (stdin is not a terminal)")


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` on the terminal (after :func:`can_confirm`); exit 1 unless yes."""
    if yes:
        return
    if not typer.confirm(question, default=False, err=True):
        fail("aborted: nothing was changed")
