"""The trace carrier: the wire format of a task's ``trace`` field, which the Lua scripts store
opaquely like the request id: ``'<start ms>'`` or ``'<start ms> <traceparent>'`` (the
workflow's start time, and the W3C traceparent of the span that caused the task).

Storage owns the format; observability/tracing.py makes the traceparents and reads them back.
The caller of a start passes its carrier in, so storage imports no telemetry.
"""

from __future__ import annotations


def carrier(started_ms: int, traceparent: str = "") -> str:
    """``'<start ms>'`` or ``'<start ms> <traceparent>'``."""
    return f"{started_ms} {traceparent}" if traceparent else str(started_ms)


def split(value: str) -> tuple[int | None, str]:
    """(workflow start in ms or None, traceparent or '') of a carrier."""
    if not value:
        return None, ""
    head, _, traceparent = value.partition(" ")
    try:
        return int(head), traceparent
    except ValueError:
        return None, ""


def trace_id_of(value: str) -> str | None:
    """The 32-hex trace id in a carrier's traceparent, or None."""
    traceparent = split(value)[1]
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def child_carrier(started_ms: int, parent: str) -> str:
    """The carrier of a child workflow started by the step whose carrier is ``parent``: the
    child's start time under the parent step's span."""
    return carrier(started_ms, split(parent)[1])
