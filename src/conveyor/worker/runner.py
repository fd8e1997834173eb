"""Runs one task's step and turns what happened into the transition to commit.

The runner never talks to Redis: it returns a store call (complete or fail) that the
committer sends in a batch with others.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any

from .. import codec
from ..app import App
from ..errors import DefinitionError, NonRetryableError, Retry, StepInputError
from ..storage.records import Task
from ..storage.store import Store, Transition, now_ms
from ..workflow import Done, Goto, Step, StepContext, compute_backoff

log = logging.getLogger("conveyor.worker")


class StepTimeoutError(Exception):
    """The step ran past its ``timeout``."""


class UnknownStepError(Exception):
    """The task names a workflow or step this worker's app does not define."""


class ResultEncodingError(Exception):
    """The step returned something that cannot be encoded as JSON."""


# Errors that retrying cannot fix: the step fails at once.
NOT_RETRYABLE = (
    NonRetryableError,
    StepInputError,
    DefinitionError,
    UnknownStepError,
    ResultEncodingError,
)


@dataclass(slots=True)
class Outcome:
    """The transition to commit for a task, and what kind it is (for stats and logs)."""

    call: Transition
    kind: str  # completed | retried | dead


class StepRunner:
    def __init__(self, app: App, store: Store, worker_name: str, threads: int) -> None:
        self.app = app
        self.store = store
        self.worker_name = worker_name
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="conveyor-step")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, task: Task) -> Outcome:
        started = now_ms()
        attempt = task.attempt
        step = self.app.step(task.workflow, task.step)
        try:
            if step is None:
                raise UnknownStepError(
                    f"this worker's app defines no step {task.workflow}.{task.step}"
                )
            state = codec.loads(task.state) or {}
            ctx = StepContext(
                workflow_id=task.workflow_id,
                workflow=task.workflow,
                step=task.step,
                task=task.task,
                attempt=attempt,
                state=state,
                deadline=time.time() + step.timeout if step.timeout else None,
                worker=self.worker_name,
                request_id=task.request_id,
            )
            value = await self._call(step, ctx, task.input)
            return self._success(task, step, ctx, value, started, attempt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failure(task, step, exc, started, attempt)

    async def _call(self, step: Step, ctx: StepContext, raw_input: bytes) -> Any:
        args: tuple[Any, ...] = (ctx,)
        if step.takes_input:
            args = (ctx, step.convert_input(codec.loads(raw_input)))
        if step.is_async:
            coro = step.fn(*args)
        else:
            loop = asyncio.get_running_loop()
            context = copy_context()
            coro = loop.run_in_executor(self.pool, context.run, step.fn, *args)
        if step.timeout is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, step.timeout)
        except TimeoutError:
            raise StepTimeoutError(
                f"step {step.qualified_name} ran past its timeout of {step.timeout:g}s"
            ) from None

    # -- success ----------------------------------------------------------------------------

    def _success(
        self, task: Task, step: Step, ctx: StepContext, value: Any, started: int, attempt: int
    ) -> Outcome:
        next_step: Step | None
        if isinstance(value, Goto):
            next_step = self._goto_target(step, value)
            value = value.input
        elif isinstance(value, Done):
            next_step, value = None, value.value
        else:
            wf = self.app.workflows[task.workflow]
            next_step = wf.steps[step.then] if step.then else None
        try:
            payload = codec.dumps(value)
            # b"" = nothing to store; "{}" when the step emptied a state it was given
            state = codec.dumps(ctx.state) if ctx.state or task.state else b""
        except TypeError as exc:
            raise ResultEncodingError(
                f"step {step.qualified_name} returned a value that is not JSON: {exc}"
            ) from exc
        now = now_ms()
        record = self._record(task, attempt, "completed", started, now, result=payload)
        call = self.store.complete_call(
            task,
            record,
            next_step=next_step.name if next_step else None,
            next_queue=next_step.queue if next_step else None,
            payload=payload,
            state=state,
            now=now,
        )
        return Outcome(call, "completed")

    def _goto_target(self, step: Step, target: Goto) -> Step:
        wf = self.app.workflows[step.workflow_name]
        if target.workflow is not None and target.workflow != wf.name:
            raise DefinitionError(
                f"step {step.qualified_name}: goto({target.workflow}.{target.step}) targets a "
                f"step of another workflow"
            )
        next_step = wf.get(target.step)
        if next_step is None:
            raise DefinitionError(
                f"step {step.qualified_name}: goto({target.step!r}) names no step of "
                f"workflow {wf.name!r}"
            )
        return next_step

    # -- failure ----------------------------------------------------------------------------

    def _failure(
        self, task: Task, step: Step | None, exc: BaseException, started: int, attempt: int
    ) -> Outcome:
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "step": task.step,
        }
        now = now_ms()
        delay = self._retry_delay(step, exc, attempt)
        record = self._record(task, attempt, "failed", started, now, error=error)
        if delay is None:
            log.warning(
                "step %s.%s of workflow %s failed for good (attempt %d): %s: %s",
                task.workflow, task.step, task.workflow_id, attempt, error["type"], exc,
            )  # fmt: skip
        call = self.store.fail_call(
            task, record, retry_delay=delay, error=error, reason="step failed", now=now
        )
        return Outcome(call, "dead" if delay is None else "retried")

    @staticmethod
    def _retry_delay(step: Step | None, exc: BaseException, attempt: int) -> float | None:
        """Seconds until the next attempt, or None when the step has failed for good."""
        if step is None or isinstance(exc, NOT_RETRYABLE):
            return None
        if attempt >= step.policy.max_attempts:
            return None
        if isinstance(exc, Retry) and exc.delay is not None:
            return max(0.0, exc.delay)
        return compute_backoff(step.policy, attempt)

    def _record(
        self,
        task: Task,
        attempt: int,
        status: str,
        started: int,
        finished: int,
        *,
        result: bytes | None = None,
        error: dict[str, Any] | None = None,
    ) -> bytes:
        record = {
            "step": task.step,
            "task": task.task,
            "attempt": attempt,
            "status": status,
            "started_at": started,
            "finished_at": finished,
            "worker": self.worker_name,
            "error": error,
        }
        encoded = codec.dumps(record)
        if result is None:
            return encoded
        # splice the already-encoded result in rather than encoding it a second time
        return encoded[:-1] + b',"result":' + result + b"}"

    def dead_letter(self, task: Task, reason: str, error_type: str) -> Transition:
        """Dead-letter a task without running it (delivered too many times)."""
        now = now_ms()
        error = {"type": error_type, "message": reason, "traceback": None, "step": task.step}
        record = self._record(task, task.attempt, "failed", now, now, error=error)
        return self.store.fail_call(
            task, record, retry_delay=None, error=error, reason=reason, now=now
        )
