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
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape

from ..errors import (
    ConveyorError,
    ResultTimeoutError,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from ..scaling.hpa import DEFAULT_BEHAVIOR
from ..settings import Settings
from ..storage.connection import UNAVAILABLE

T = TypeVar("T")

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
Partitions = Annotated[
    int | None,
    typer.Option(
        "--partitions", envvar="CONVEYOR_PARTITIONS", help="Stream partitions (default: 16)."
    ),
]
LogLevel = Annotated[
    LogLevelName,
    typer.Option(
        "--log-level", envvar="CONVEYOR_LOG_LEVEL", case_sensitive=False, help="Logging level."
    ),
]
LogFormat = Annotated[
    LogFormatName | None,
    typer.Option(
        "--log-format",
        envvar="CONVEYOR_LOG_FORMAT",
        case_sensitive=False,
        help="Log lines (default: auto, which is console on a terminal, else json).",
    ),
]
ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api",
        envvar="CONVEYOR_API_URL",
        help="Go through the HTTP API at this URL instead of Redis.",
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="CONVEYOR_API_KEY", help="API key (token) for --api."),
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
    """Turn expected failures into one readable line and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
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
