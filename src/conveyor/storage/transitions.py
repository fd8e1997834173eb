"""Builds the transitions the worker commits: one per finished task, each applied by
scripts/commit.lua. Its header declares the layout of keys and arguments, which the builders
here follow position by position (tests/lua/test_layout.py checks that they agree).

Every transition carries the same seven leading keys and thirteen leading arguments, then what
its action needs. Keys are built here from the task (all in the task's partition), so the
runner only decides *what* happens, never *where* it is stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .. import codec
from ..settings import Settings
from .carriers import child_carrier
from .frames import parent_target
from .keys import Keys
from .records import Task


class TransitionAction(StrEnum):
    """What a transition does: commit.lua's first argument of each transition (its header
    describes each action's keys and arguments)."""

    NEXT = "next"  # go on with another step
    SLEEP = "sleep"  # go on with another step after a delay
    RETURN = "return"  # end a line of work: the workflow at the top level, else a branch
    FAN_OUT = "fan_out"  # start parallel branches
    WAIT = "wait"  # park until a signal (or its timer)
    CHILD = "child"  # start a child workflow
    RETRY = "retry"  # run the task again later (also a task a limit held back)
    DEAD = "dead"  # dead-letter the task, fail the workflow (or fill a collecting slot)
    ACK = "ack"  # only acknowledge the entry (its task is no longer active)
    POISON = "poison"  # dead-letter an entry that names no valid task


# module-level names: an enum member's attribute lookup costs more than a global's, and
# every transition names its action
_NEXT, _SLEEP, _RETURN = TransitionAction.NEXT, TransitionAction.SLEEP, TransitionAction.RETURN
_FAN_OUT, _WAIT, _CHILD = TransitionAction.FAN_OUT, TransitionAction.WAIT, TransitionAction.CHILD
_RETRY, _DEAD = TransitionAction.RETRY, TransitionAction.DEAD
_ACK, _POISON = TransitionAction.ACK, TransitionAction.POISON


@dataclass(slots=True)
class Transition:
    """One transition for Store.commit: the partition (hash slot) it touches, and its keys
    and arguments. Transitions of one partition are sent together in one script call."""

    partition: int
    keys: list[str]
    argv: list[Any]
    action: TransitionAction


class Transitions:
    def __init__(self, keys: Keys, settings: Settings) -> None:
        self.keys = keys
        self.settings = settings
        # per-partition names every transition carries, built once
        partitions = range(settings.partitions)
        self._stopped = [keys.stopped(p) for p in partitions]
        self._finished = [keys.finished_channel(p) for p in partitions]

    def _base(
        self,
        task: Task,
        action: TransitionAction,
        record: bytes,
        now: int,
        state: bytes = b"",
    ) -> tuple[list[str], list[Any]]:
        p = task.partition
        wf = self.keys.workflow(task.workflow_id, p)
        parent_key, parent_stream = wf, task.stream
        if task.parent:
            parent_id, parent_queue = parent_target(task.parent)
            parent_key = self.keys.workflow(parent_id, p)
            parent_stream = self.keys.stream(p, parent_queue)
        history = self.keys.history(task.workflow_id, p)
        events = self.keys.events(task.workflow_id, p)
        keys = [task.stream, wf, history, parent_key, parent_stream, self._stopped[p], events]
        argv = [
            action,
            task.entry_id,
            task.task,
            record,
            now,
            task.workflow_id,
            task.workflow,
            task.request_id or "",
            state,
            self._finished[p],
            task.frame,
            task.parent,
            task.trace if task.carry is None else task.carry,
        ]
        return keys, argv

    def _make(
        self, task: Task, action: TransitionAction, base: tuple[list[str], list[Any]],
        keys: list[str], argv: list[Any],
    ) -> Transition:  # fmt: skip
        return Transition(task.partition, base[0] + keys, base[1] + argv, action)

    def _stream(self, task: Task, queue: str) -> str:
        return self.keys.stream(task.partition, queue)

    def _frame_streams(self, task: Task, frame_queues: tuple[str, str] | None) -> list[str]:
        if frame_queues is None:  # not in a branch: unused slots repeat the source stream
            return [task.stream, task.stream]
        join_queue, branch_queue = frame_queues
        return [self._stream(task, join_queue), self._stream(task, branch_queue)]

    # -- successes --------------------------------------------------------------------------

    def next(
        self, task: Task, record: bytes, now: int, state: bytes, step: str, queue: str,
        payload: bytes,
    ) -> Transition:  # fmt: skip
        base = self._base(task, _NEXT, record, now, state)
        return self._make(task, _NEXT, base, [self._stream(task, queue)], [step, payload])

    def sleep(
        self, task: Task, record: bytes, now: int, state: bytes, step: str, queue: str,
        payload: bytes, delay_ms: int,
    ) -> Transition:  # fmt: skip
        base = self._base(task, _SLEEP, record, now, state)
        keys = [self.keys.delayed(task.partition, queue)]
        return self._make(task, _SLEEP, base, keys, [step, payload, delay_ms])

    def returned(
        self, task: Task, record: bytes, now: int, state: bytes, value: bytes,
        frame_queues: tuple[str, str] | None,
    ) -> Transition:  # fmt: skip
        """The line of work ends with ``value``: the workflow's result at the top level, a
        slot of the join inside a fan-out branch."""
        base = self._base(task, _RETURN, record, now, state)
        return self._make(task, _RETURN, base, self._frame_streams(task, frame_queues), [value])

    def fan_out(
        self, task: Task, record: bytes, now: int, state: bytes, *, step: str, queue: str,
        join: str, join_queue: str, max_parallel: int, collect: bool, items: list[bytes],
    ) -> Transition:  # fmt: skip
        base = self._base(task, _FAN_OUT, record, now, state)
        keys = [self._stream(task, queue), self._stream(task, join_queue)]
        argv = [step, join, max_parallel, "1" if collect else "0", *items]
        return self._make(task, _FAN_OUT, base, keys, argv)

    def wait(
        self, task: Task, record: bytes, now: int, state: bytes, *, signal: str, step: str,
        queue: str, timeout_ms: int | None, timer_step: str, timer_queue: str,
        marker: bytes,
    ) -> Transition:  # fmt: skip
        base = self._base(task, _WAIT, record, now, state)
        p = task.partition
        keys = [
            self.keys.signals(task.workflow_id, signal, p),
            self._stream(task, queue),
            self.keys.delayed(p, timer_queue),
            self.keys.waiting(p),
        ]
        timeout = "" if timeout_ms is None else timeout_ms
        argv = [signal, step, queue, timeout, timer_step, marker]
        return self._make(task, _WAIT, base, keys, argv)

    def child(
        self, task: Task, record: bytes, now: int, state: bytes, *, child_workflow: str,
        first_step: str, first_queue: str, payload: bytes, step: str, queue: str,
        max_steps: int, on_cancel: str,
    ) -> Transition:  # fmt: skip
        base = self._base(task, _CHILD, record, now, state)
        child_id = child_workflow_id(task.workflow_id, task.task)
        keys = [self.keys.workflow(child_id, task.partition), self._stream(task, first_queue)]
        carry = task.trace if task.carry is None else task.carry
        argv = [
            child_id, child_workflow, first_step, payload, step, queue, max_steps, on_cancel,
            child_carrier(now, carry) if carry else "",
        ]  # fmt: skip
        return self._make(task, _CHILD, base, keys, argv)

    # -- failures and drops -----------------------------------------------------------------

    def retry(self, task: Task, record: bytes, now: int, delay_ms: int, attempt: int) -> Transition:
        """Run ``task`` again after ``delay_ms`` as attempt ``attempt``. With an empty
        ``record`` nothing is written to the history: a task held back by a limit."""
        base = self._base(task, _RETRY, record, now)
        member: dict[str, Any] = {
            "workflow_id": task.workflow_id,
            "workflow": task.workflow,
            "step": task.step,
            "task": str(task.task),
            "attempt": str(attempt),
            "input": task.input.decode(),
            # a unique member even when two retries of one task are due at once
            "nonce": uuid.uuid4().hex[:8],
        }
        for name in ("request_id", "frame", "parent", "wait", "trace"):
            value = getattr(task, name)
            if value:
                member[name] = value
        if task.state:
            member["state"] = task.state.decode()
        keys = [self.keys.delayed(task.partition, task.queue)]
        return self._make(task, _RETRY, base, keys, [delay_ms, codec.dumps(member)])

    def dead(
        self, task: Task, record: bytes, now: int, *, error: dict[str, Any], reason: str,
        frame_queues: tuple[str, str] | None,
    ) -> Transition:  # fmt: skip
        """The task failed for good: dead-letter it and fail the workflow (or, in a branch of
        a collecting fan-out, put the error in the branch's slot)."""
        # the state the task carried goes on to a collecting join (the failed step's own
        # changes are discarded: commit.lua does not store state for a dead task)
        base = self._base(task, _DEAD, record, now, task.state or b"")
        keys = [self.keys.dead(task.partition), *self._frame_streams(task, frame_queues)]
        fields: list[Any] = [
            "workflow_id", task.workflow_id,
            "workflow", task.workflow,
            "step", task.step,
            "task", task.task,
            "attempt", task.attempt,
            "queue", task.queue,
            "input", task.input,
            "reason", reason,
            "error", codec.dumps(error),
            "failed_at", now,
        ]  # fmt: skip
        for name in ("request_id", "frame", "parent", "trace"):
            value = getattr(task, name)
            if value:
                fields += [name, value]
        if task.state:
            fields += ["state", task.state]
        return self._make(task, _DEAD, base, keys, [codec.dumps(error), *fields])

    def ack(self, task: Task) -> Transition:
        """Drop an entry whose task is no longer active (cancelled, or a stale timer)."""
        base = self._base(task, _ACK, b"", 0)
        return self._make(task, _ACK, base, [], [])

    def poison(
        self, stream: str, partition: int, queue: str, entry_id: bytes,
        fields: dict[bytes, bytes], reason: str, now: int,
    ) -> Transition:  # fmt: skip
        """Dead-letter an entry that cannot even be decoded (it names no valid task)."""
        raw = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
        dead: list[Any] = ["queue", queue, "reason", reason, "failed_at", now]
        dead += ["raw", codec.dumps(raw)]
        dead_stream = self.keys.dead(partition)
        # the workflow slots are unused: they repeat keys of the same partition (hash slot)
        keys = [stream, *[dead_stream] * 3, stream, *[dead_stream] * 3]
        argv = [_POISON, entry_id, "", b"", now, "", "", "", b"", "", "", "", "", *dead]
        return Transition(partition, keys, argv, _POISON)


def child_workflow_id(parent_id: str, task: int) -> str:
    """A child's id: its parent's id, '~', and the parent task that started it. Keys hash
    only the part before the first '~', so a workflow tree shares one partition."""
    return f"{parent_id}~{task}"
