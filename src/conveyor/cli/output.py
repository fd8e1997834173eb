"""Tables for the terminal."""

from __future__ import annotations

import json
from datetime import datetime

from rich.console import Console
from rich.table import Table

from ..storage.records import DeadLetter, WorkflowStatus

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
