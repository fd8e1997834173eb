"""Tables for the terminal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ..storage.records import DeadLetter, WorkflowStatus

if TYPE_CHECKING:
    from ..http.core import Event
    from ..storage.queries import WorkflowSummary

STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "waiting": "magenta",
    "limited": "magenta",
}


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else "-"


def _ms(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return "-"
    return f"{(end - start).total_seconds() * 1000:.1f}"


def print_status(console: Console, st: WorkflowStatus) -> None:
    style = STATUS_STYLE.get(st.status, "white")
    console.print(
        f"[bold]{st.workflow}[/] {st.id}  [{style}]{st.status}[/]  step: {st.step or '-'}"
    )
    console.print(
        f"created {_time(st.created_at)}  finished {_time(st.finished_at)}", highlight=False
    )
    if st.request_id:
        console.print(f"request id: {st.request_id}", highlight=False)
    budget = f" of {st.max_steps}" if st.max_steps else ""
    console.print(f"tasks: {st.tasks}{budget}", highlight=False)
    if st.parent:
        console.print(f"parent: {st.parent}", highlight=False)
    for child in st.children:
        console.print(f"child: {child}", highlight=False)
    for w in st.waits:
        console.print(
            f"waiting for signal [bold]{w.signal}[/] (-> {w.step}) since {_time(w.since)}, "
            f"deadline {_time(w.deadline)}"
        )
    if st.cancel_reason:
        console.print(f"cancelled: {st.cancel_reason}", highlight=False)
    table = Table("step", "task", "attempt", "status", "started", "ms", "worker", "error")
    for h in st.history:
        error = f"{h.error.type}: {h.error.message}" if h.error else ""
        shown = f"{h.status} (cached)" if h.cached else h.status
        table.add_row(
            h.step, str(h.task), str(h.attempt),
            f"[{STATUS_STYLE.get(h.status, 'white')}]{shown}[/]",
            _time(h.started_at), _ms(h.started_at, h.finished_at), h.worker or "-", error,
        )  # fmt: skip
    console.print(table)
    if st.status == "completed":
        console.print("result:", json.dumps(st.result), highlight=False, soft_wrap=True)
    if st.error:
        console.print(f"[red]error in step {st.error.step}: {st.error.type}: {st.error.message}[/]")


def print_dead_letters(console: Console, letters: list[DeadLetter]) -> None:
    if not letters:
        console.print("no dead letters")
        return
    table = Table("id", "workflow", "workflow id", "step", "reason", "error", "failed")
    for d in letters:
        error = f"{d.error.type}: {d.error.message}" if d.error else ""
        table.add_row(
            d.id, d.workflow or "-", d.workflow_id or "-", d.step or "-", d.reason,
            error[:80], _time(d.failed_at),
        )  # fmt: skip
    console.print(table)


def print_workflows(console: Console, items: list[WorkflowSummary]) -> None:
    if not items:
        console.print("no workflows")
        return
    table = Table("id", "workflow", "status", "step", "created", "updated")
    for w in items:
        style = STATUS_STYLE.get(w.status, "white")
        table.add_row(
            w.id, w.workflow, f"[{style}]{w.status}[/]", w.step or "-",
            _time(_datetime(w.created_at)), _time(_datetime(w.updated_at)),
        )  # fmt: skip
    console.print(table)


def _datetime(value: Any) -> datetime | None:
    # a summary's times are datetimes from Redis, ISO strings from the API's JSON
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _epoch_ms(value: Any) -> datetime | None:
    # the event stream carries times as milliseconds since the epoch
    return datetime.fromtimestamp(value / 1000, tz=UTC) if isinstance(value, int) else None


def event_line(event: Event) -> str:
    """One event as one plain line: its id, its kind, then what happened."""
    data = event.data if isinstance(event.data, dict) else {}
    if event.event == "step":
        took = _ms(_epoch_ms(data.get("started_at")), _epoch_ms(data.get("finished_at")))
        what = (
            f"{data.get('step')} task {data.get('task')} attempt {data.get('attempt')} "
            f"{data.get('status')}" + (f" ({took} ms)" if took != "-" else "")
        )
        error = data.get("error")
        if isinstance(error, dict):
            what += f": {error.get('type')}: {error.get('message')}"
    elif event.event == "emit":
        what = (
            f"{data.get('step')} task {data.get('task')} attempt {data.get('attempt')}: "
            f"{json.dumps(data.get('data'))}"
        )
    elif event.event == "end":
        what = str(data.get("status"))
    else:
        what = json.dumps(event.data)
    return f"{event.id}  {event.event:<4}  {what}"
