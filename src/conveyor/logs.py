"""Logging: JSON lines for log shippers, or readable lines on a terminal, each carrying the
context it was written in: the workflow, step and attempt a step runs (its own log calls
included), the HTTP request id and the trace id. So the lines of one workflow can be joined
across processes by ``workflow_id`` and ``trace_id``.

The context lives in a ContextVar: a step runs in its own asyncio task (a sync step in a
thread with a copy of that task's context), so concurrent steps never mix their fields.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

from .observability.tracing import current_trace_id
from .settings import LogSettings

if TYPE_CHECKING:
    from .storage.records import Task

FORMATS = ("auto", "json", "console")
FIELDS = ("workflow_id", "workflow", "step", "attempt", "request_id")

# (workflow_id, workflow, step, attempt, request_id) of the step or request being served
_context: ContextVar[tuple[str | None, str | None, str | None, int | None, str | None] | None] = (
    ContextVar("conveyor_log_context", default=None)
)


def bind_step(
    workflow_id: str, workflow: str, step: str, attempt: int, request_id: str | None
) -> Token[Any]:
    """Log lines written from here on (in this task) carry this step's fields."""
    return _context.set((workflow_id, workflow, step, attempt, request_id))


def step_fields(task: Task) -> dict[str, Any]:
    """The fields :func:`bind_step` binds, for one log call's ``extra``."""
    fields = {"workflow_id": task.workflow_id, "workflow": task.workflow, "step": task.step,
              "attempt": task.attempt}  # fmt: skip
    if task.request_id is not None:
        fields["request_id"] = task.request_id
    return fields


def bind_request(request_id: str) -> Token[Any]:
    return _context.set((None, None, None, None, request_id))


def unbind(token: Token[Any]) -> None:
    _context.reset(token)


class ContextFilter(logging.Filter):
    """Adds the bound fields (those set) and the active trace id to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        if bound is not None:
            for name, value in zip(FIELDS, bound, strict=True):
                if value is not None:
                    setattr(record, name, value)
        trace_id = current_trace_id()
        if trace_id is not None:
            record.trace_id = trace_id
        return True


class ConsoleFormatter(logging.Formatter):
    """``time level logger process: message  workflow_id=... step=...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(processName)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [
            f"{name}={getattr(record, name)}"
            for name in (*FIELDS, "trace_id")
            if getattr(record, name, None) is not None
        ]
        return f"{line}  {' '.join(extra)}" if extra else line


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}{process}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601, UTC
        json_ensure_ascii=False,
    )


def resolve_format(fmt: str | None) -> str:
    """``fmt`` (an argument) else CONVEYOR_LOG_FORMAT, with ``auto`` made concrete."""
    resolved = LogSettings.read(log_format=fmt).log_format
    if resolved == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return resolved


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once per process: ``level`` (or CONVEYOR_LOG_LEVEL, default
    INFO) and ``fmt`` (or CONVEYOR_LOG_FORMAT): ``json``, ``console``, or ``auto`` (console
    on a terminal, JSON lines otherwise, as in a container)."""
    level = LogSettings.read(log_level=level).log_level
    resolved = resolve_format(fmt)
    # children of `conveyor worker --processes N` set up the same way
    os.environ["CONVEYOR_LOG_FORMAT"] = resolved
    os.environ["CONVEYOR_LOG_LEVEL"] = level
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter() if resolved == "json" else ConsoleFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
