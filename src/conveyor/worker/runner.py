"""Runs a task's step (or a batch of tasks of a batched step) and turns what happened into
the transition to commit.

The runner never talks to Redis: it returns a transition that the committer sends in a batch
with others, plus the side calls (cache, rate-limit charges) the worker makes after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import traceback
from collections.abc import Container
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any

import orjson

from .. import codec
from ..app import App
from ..errors import (
    BatchResultError,
    DefinitionError,
    NonRetryableError,
    RateLimited,
    ResultEncodingError,
    Retry,
    StepInputError,
    StepTimeoutError,
    UnknownStepError,
)
from ..logs import step_fields
from ..storage.records import Task
from ..storage.store import Store, Transition, now_ms
from ..workflow import Done, Goto, Step, StepContext, compute_backoff
from ..workflow.context import BatchContext
from ..workflow.outcomes import FanOut, OutcomeKind, Sleep, StartChild, Wait
from .advance import Advancer, cacheable, encode, from_cache
from .emitter import Emitter
from .listeners import Listeners

log = logging.getLogger("conveyor.worker")


# Errors that retrying cannot fix: the step fails at once.
NOT_RETRYABLE = (
    NonRetryableError,
    StepInputError,
    DefinitionError,
    UnknownStepError,
    ResultEncodingError,
    BatchResultError,
)

# module-level names: an enum member's attribute lookup costs more than a global's, and
# every task gets one
_COMPLETED, _CACHED = OutcomeKind.COMPLETED, OutcomeKind.CACHED
_RETRIED, _DEAD, _LIMITED = OutcomeKind.RETRIED, OutcomeKind.DEAD, OutcomeKind.LIMITED
_CANCELLED = OutcomeKind.CANCELLED


@dataclass(slots=True)
class Outcome:
    """The transition to commit for a task, what kind it is (for stats and logs), and the
    side calls the worker makes once it is committed."""

    call: Transition
    kind: OutcomeKind
    cache: tuple[str, bytes, float] | None = None  # (key, entry, ttl) to store
    charged: float | None = None  # units the step reported with ctx.charge()
    push_back: float | None = None  # seconds the step's shared rate limit is pushed back
    error: BaseException | None = None  # what the step raised (recorded on its span)


class StepRunner:
    def __init__(
        self,
        app: App,
        store: Store,
        worker_name: str,
        threads: int,
        stopped: Container[str] | None = None,
        emitter: Emitter | None = None,
        listeners: Listeners | None = None,
    ) -> None:
        self.listeners = listeners or Listeners()  # the worker's, built as it starts
        self.app = app
        self.stopped = stopped  # workflows that stopped early (ctx.cancelled)
        self.emitter = emitter
        self.store = store
        self.t = store.transitions
        self.advance = Advancer(app, store.transitions)
        self.worker_name = worker_name
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="conveyor-step")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def context(self, task: Task, step: Step) -> StepContext:
        return StepContext(
            workflow_id=task.workflow_id,
            workflow=task.workflow,
            step=task.step,
            task=task.task,
            attempt=task.attempt,
            state=codec.loads(task.state) or {},
            deadline=time.time() + step.timeout if step.timeout else None,
            worker=self.worker_name,
            request_id=task.request_id,
            stopped_workflows=self.stopped,
            emitter=self.emitter,
        )

    def step_of(self, task: Task) -> Step:
        step = self.app.step(task.workflow, task.step)
        if step is None:
            raise UnknownStepError(f"this worker's app defines no step {task.workflow}.{task.step}")
        return step

    async def run(self, task: Task) -> Outcome:
        """Run ``task``'s step inside the listeners' ``enter_step``/``exit_step`` (its span
        when tracing, its log context)."""
        wraps = self.listeners.steps
        if not wraps:
            return (await self._run(task))[0]
        error: BaseException | None = None
        kind = _CANCELLED
        if len(wraps) == 1:  # the usual case (log context only): no list of tokens
            enter, exit_ = wraps[0]
            token = enter(task, True)
            try:
                outcome, error = await self._run(task)
                kind = outcome.kind
                return outcome
            finally:
                exit_(token, kind, error)
        tokens = [enter(task, True) for enter, _ in wraps]
        try:
            outcome, error = await self._run(task)
            kind = outcome.kind
            return outcome
        finally:
            for (_, exit_), token in zip(reversed(wraps), reversed(tokens), strict=True):
                exit_(token, kind, error)

    async def _run(self, task: Task) -> tuple[Outcome, BaseException | None]:
        started = now_ms()
        step: Step | None = None
        ctx: StepContext | None = None
        try:
            step = self.step_of(task)
            ctx = self.context(task, step)
            args: tuple[Any, ...] = (ctx,)
            if step.takes_input:
                args = (ctx, step.convert_input(codec.loads(task.input)))
            value = await self._call(step, args)
            await self._flush_emits(ctx)
            return self.success(task, step, ctx, value, started), None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._flush_emits(ctx)
            return self.failure(task, step, exc, started), exc

    async def _flush_emits(self, *contexts: StepContext | None) -> None:
        """A step's emits go onto the event stream before the record of its end."""
        if self.emitter is not None and any(c is not None and c.emitted for c in contexts):
            await self.emitter.drain()

    async def run_batch(self, step: Step, tasks: list[Task]) -> list[Outcome]:
        """Run a batched step once for ``tasks`` (one input each); one outcome per task,
        and one ``enter_step``/``exit_step`` per task and listener (their span when tracing:
        the call they share is in each)."""
        wraps = self.listeners.steps
        tokens = [[enter(t, False) for t in tasks] for enter, _ in wraps] if wraps else []
        outcomes: list[Outcome] = []
        try:
            outcomes = await self._run_batch(step, tasks)
            return outcomes
        finally:
            for (_, exit_), each in zip(reversed(wraps), reversed(tokens), strict=True):
                for i, token in enumerate(each):
                    if outcomes:
                        exit_(token, outcomes[i].kind, outcomes[i].error)
                    else:
                        exit_(token, _CANCELLED, None)

    async def _run_batch(self, step: Step, tasks: list[Task]) -> list[Outcome]:
        started = now_ms()
        contexts = [self.context(t, step) for t in tasks]
        try:
            inputs = [step.convert_input(codec.loads(t.input)) for t in tasks]
            batch = BatchContext(
                contexts, step.name, step.workflow_name, self.worker_name,
                contexts[0].deadline,
            )  # fmt: skip
            values = await self._call(step, (batch, inputs))
            if not isinstance(values, list | tuple) or len(values) != len(tasks):
                got = (
                    f"{len(values)} results"
                    if isinstance(values, list | tuple)
                    else (type(values).__name__)
                )
                raise BatchResultError(
                    f"batched step {step.qualified_name} must return a list of "
                    f"{len(tasks)} results (one per input), not {got}"
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._flush_emits(*contexts)
            return [self.failure(t, step, exc, started) for t in tasks]
        await self._flush_emits(*contexts)
        out = []
        for task, ctx, value in zip(tasks, contexts, values, strict=True):
            try:
                out.append(self.success(task, step, ctx, value, started))
            except Exception as exc:
                out.append(self.failure(task, step, exc, started))
        return out

    async def _call(self, step: Step, args: tuple[Any, ...]) -> Any:
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

    def success(
        self,
        task: Task,
        step: Step,
        ctx: StepContext,
        value: Any,
        started: int,
        *,
        cached: bool = False,
    ) -> Outcome:
        """The transition for a step that returned ``value`` (raises if it cannot be built)."""
        # b"" = nothing to store; "{}" when the step emptied a state it was given
        state = codec.dumps(ctx.state) if ctx.state or task.state else b""
        shown = value.value if isinstance(value, Done) else value
        shown = shown.input if isinstance(shown, Goto) else shown
        result = encode(step, shown) if not isinstance(shown, ACTIONS) else b"null"
        now = now_ms()
        record = self._record(task, "completed", started, now, result=result, cached=cached)
        call = self.advance.success(task, step, value, record, state, now)
        cache = None
        if step.cache_ttl and not cached:
            entry = cacheable(value)
            if entry is not None:
                key = self.store.keys.cache(cache_digest(task))
                cache = (key, encode(step, entry), step.cache_ttl)
        return Outcome(call, _COMPLETED, cache=cache, charged=ctx.charged)

    def from_cache(self, task: Task, raw: bytes) -> Outcome:
        """Complete ``task`` with a memoised result instead of running it."""
        now = now_ms()
        try:
            step = self.step_of(task)
            ctx = self.context(task, step)
            outcome = self.success(task, step, ctx, from_cache(codec.loads(raw)), now, cached=True)
            outcome.kind = _CACHED
            return outcome
        except Exception as exc:
            return self.failure(task, self.app.step(task.workflow, task.step), exc, now)

    # -- failure ----------------------------------------------------------------------------

    def failure(self, task: Task, step: Step | None, exc: BaseException, started: int) -> Outcome:
        outcome = self._failure(task, step, exc, started)
        outcome.error = exc
        return outcome

    def _failure(self, task: Task, step: Step | None, exc: BaseException, started: int) -> Outcome:
        now = now_ms()
        if isinstance(exc, RateLimited):
            record = self._record(task, "limited", started, now, error=self._error(task, exc))
            call = self.t.retry(task, record, now, int(exc.retry_after * 1000), task.attempt)
            return Outcome(call, _LIMITED, push_back=exc.retry_after)
        error = self._error(task, exc)
        attempt = task.attempt
        delay = self._retry_delay(step, exc, attempt)
        record = self._record(task, "failed", started, now, error=error)
        if delay is not None:
            call = self.t.retry(task, record, now, int(delay * 1000), attempt + 1)
            return Outcome(call, _RETRIED)
        log.warning(
            "step %s.%s of workflow %s failed for good (attempt %d): %s: %s",
            task.workflow, task.step, task.workflow_id, attempt, error["type"], exc,
            # the step's fields also where none are bound (a batched step's tasks)
            extra=step_fields(task),
        )  # fmt: skip
        call = self.t.dead(
            task, record, now, error=error, reason="step failed",
            frame_queues=self._frame_queues(task),
        )  # fmt: skip
        return Outcome(call, _DEAD)

    def _frame_queues(self, task: Task) -> tuple[str, str] | None:
        try:
            return self.advance.frame_queues(task)
        except UnknownStepError:
            return None

    @staticmethod
    def _error(task: Task, exc: BaseException) -> dict[str, Any]:
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "step": task.step,
        }

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
        status: str,
        started: int,
        finished: int,
        *,
        result: bytes | None = None,
        error: dict[str, Any] | None = None,
        cached: bool = False,
    ) -> bytes:
        record: dict[str, Any] = {
            "step": task.step,
            "task": task.task,
            "attempt": task.attempt,
            "status": status,
            "started_at": started,
            "finished_at": finished,
            "worker": self.worker_name,
            "error": error,
        }
        if cached:
            record["cached"] = True
        encoded = codec.dumps(record)
        if result is None:
            return encoded
        # splice the already-encoded result in rather than encoding it a second time
        return encoded[:-1] + b',"result":' + result + b"}"

    def dead_letter(self, task: Task, reason: str, error_type: str) -> Transition:
        """Dead-letter a task without running it (delivered too many times)."""
        now = now_ms()
        error = {"type": error_type, "message": reason, "traceback": None, "step": task.step}
        record = self._record(task, "failed", now, now, error=error)
        return self.t.dead(
            task, record, now, error=error, reason=reason, frame_queues=self._frame_queues(task)
        )

    def limited(self, task: Task, delay: float) -> Transition:
        """Put a task held back by a rate or concurrency limit back, as the same attempt."""
        delay_ms = max(1, int(delay * 1000))
        return self.t.retry(task, b"", now_ms(), delay_ms, task.attempt)


ACTIONS = (FanOut, Wait, Sleep, StartChild)


def cache_digest(task: Task) -> str:
    """Digest of (workflow, step, input), with the input's keys sorted so equal inputs share
    an entry whatever order their keys came in."""
    canonical = orjson.dumps(codec.loads(task.input), option=orjson.OPT_SORT_KEYS)
    raw = b"\0".join((task.workflow.encode(), task.step.encode(), canonical))
    return hashlib.sha256(raw).hexdigest()
