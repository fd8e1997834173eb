"""Turns what a step returned (a value, goto, done, fan_out, wait, sleep, start_child) into
the transition that moves its workflow on. Pure: no I/O, so it is shared by fresh runs,
cache hits and batched steps alike."""

from __future__ import annotations

from typing import Any

from .. import codec
from ..app import App
from ..errors import DefinitionError, ResultEncodingError, UnknownStepError
from ..storage.frames import CANCEL_FRAME, branch_steps, step_ref
from ..storage.records import Task
from ..storage.transitions import Transition, Transitions
from ..workflow import Step
from ..workflow.outcomes import (
    TIMEOUT_KEY,
    Done,
    FanOut,
    Goto,
    Sleep,
    StartChild,
    Wait,
)


def encode(step: Step, value: Any) -> bytes:
    try:
        return codec.dumps(value)
    except TypeError as exc:
        raise ResultEncodingError(
            f"step {step.qualified_name} returned a value that is not JSON: {exc}"
        ) from exc


class Advancer:
    def __init__(self, app: App, transitions: Transitions) -> None:
        self.app = app
        self.t = transitions

    # -- lookups ----------------------------------------------------------------------------

    def target(self, step: Step, name: str, workflow: str | None, what: str) -> Step:
        """A step of ``step``'s own workflow named by an outcome, or a DefinitionError."""
        wf = self.app.workflows[step.workflow_name]
        if workflow is not None and workflow != wf.name:
            raise DefinitionError(
                f"step {step.qualified_name}: {what}({workflow}.{name}) targets a step of "
                "another workflow"
            )
        found = wf.get(name)
        if found is None:
            raise DefinitionError(
                f"step {step.qualified_name}: {what}({name!r}) names no step of workflow "
                f"{wf.name!r}"
            )
        return found

    def frame_queues(self, task: Task) -> tuple[str, str] | None:
        """(join queue, branch queue) of the fan-out branch ``task`` runs in, if any."""
        if not task.frame:
            return None
        try:
            steps = branch_steps(task.frame)
        except ValueError as exc:
            raise UnknownStepError(f"task {task.workflow}.{task.step}: {exc}") from None
        if steps is None:
            return None
        wf = self.app.workflows.get(task.workflow)
        branch = wf.get(steps[0]) if wf else None
        join = wf.get(steps[1]) if wf else None
        if branch is None or join is None:
            raise UnknownStepError(f"task {task.workflow}.{task.step} has a bad frame")
        return join.queue, branch.queue

    # -- success ----------------------------------------------------------------------------

    def success(
        self, task: Task, step: Step, value: Any, record: bytes, state: bytes, now: int
    ) -> Transition:
        t = self.t
        if task.frame == CANCEL_FRAME:  # the on_cancel step: its outcome is only recorded
            inner = value.value if isinstance(value, Done) else value
            inner = None if isinstance(inner, Goto | FanOut | Wait | Sleep | StartChild) else inner
            return t.returned(task, record, now, state, encode(step, inner), None)
        if isinstance(value, Goto):
            nxt = self.target(step, value.step, value.workflow, "goto")
            payload = encode(step, value.input)
            return t.next(task, record, now, state, nxt.name, nxt.queue, payload)
        if isinstance(value, FanOut):
            return self._fan_out(task, step, value, record, state, now)
        if isinstance(value, Wait):
            return self._wait(task, step, value, record, state, now)
        if isinstance(value, Sleep):
            nxt = self.target(step, value.then, value.workflow, "sleep")
            payload = encode(step, value.input)
            delay = int(value.seconds * 1000)
            return t.sleep(task, record, now, state, nxt.name, nxt.queue, payload, delay)
        if isinstance(value, StartChild):
            return self._child(task, step, value, record, state, now)
        if isinstance(value, Done):
            value = value.value
        elif step.then:
            nxt = self.app.workflows[step.workflow_name].steps[step.then]
            return t.next(task, record, now, state, nxt.name, nxt.queue, encode(step, value))
        payload = encode(step, value)
        return t.returned(task, record, now, state, payload, self.frame_queues(task))

    def _fan_out(
        self, task: Task, step: Step, o: FanOut, record: bytes, state: bytes, now: int
    ) -> Transition:
        branch = self.target(step, o.step, o.workflows[0], "fan_out")
        join = self.target(step, o.then, o.workflows[1], "fan_out(then=...)")
        items = [encode(step, item) for item in o.items]
        return self.t.fan_out(
            task, record, now, state,
            step=branch.name, queue=branch.queue, join=join.name, join_queue=join.queue,
            max_parallel=o.max_parallel or 0, collect=o.on_error == "collect", items=items,
        )  # fmt: skip

    def _wait(
        self, task: Task, step: Step, o: Wait, record: bytes, state: bytes, now: int
    ) -> Transition:
        then = self.target(step, o.then, o.workflows[0], "wait(then=...)")
        timer = then
        if o.on_timeout is not None:
            timer = self.target(step, o.on_timeout, o.workflows[1], "wait(on_timeout=...)")
        marker = codec.dumps({TIMEOUT_KEY: {"signal": o.signal, "timeout": o.timeout}})
        return self.t.wait(
            task, record, now, state,
            signal=o.signal, step=then.name, queue=then.queue,
            timeout_ms=None if o.timeout is None else int(o.timeout * 1000),
            timer_step=timer.name, timer_queue=timer.queue, marker=marker,
        )  # fmt: skip

    def _child(
        self, task: Task, step: Step, o: StartChild, record: bytes, state: bytes, now: int
    ) -> Transition:
        then = self.target(step, o.then, o.workflow, "start_child(then=...)")
        child = self.app.workflows.get(o.child)
        if child is None:
            raise DefinitionError(
                f"step {step.qualified_name}: start_child({o.child!r}): this app defines no "
                f"such workflow (it has {', '.join(self.app.workflows)})"
            )
        first = child.start_step
        cancel = child.on_cancel_step
        return self.t.child(
            task, record, now, state,
            child_workflow=child.name, first_step=first.name, first_queue=first.queue,
            payload=encode(step, o.input), step=then.name, queue=then.queue,
            max_steps=o.max_steps or child.max_steps,
            on_cancel=step_ref(cancel.name, cancel.queue) if cancel else "",
        )  # fmt: skip


def cacheable(value: Any) -> dict[str, Any] | None:
    """What a cache entry stores for a step's outcome: plain values, goto and done only (a
    fan-out, wait, sleep or child start is an action, not a result to memoise)."""
    if isinstance(value, Goto):
        return {"k": "goto", "s": value.step, "v": value.input}
    if isinstance(value, Done):
        return {"k": "done", "v": value.value}
    if isinstance(value, FanOut | Wait | Sleep | StartChild):
        return None
    return {"k": "value", "v": value}


def from_cache(entry: dict[str, Any]) -> Any:
    if entry["k"] == "goto":
        return Goto(entry["s"], entry["v"])
    if entry["k"] == "done":
        return Done(entry["v"])
    return entry["v"]
