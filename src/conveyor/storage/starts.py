"""Starting workflows: choose the id, prepare the start script's keys and arguments, and run
many starts in one pipeline (one script call per partition for a batch of them)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import OutOfMemoryError, ResponseError

from .. import codec
from ..errors import BackPressureError, ScriptCode
from .base import Role, now_ms
from .frames import step_ref

#: Most starts sent in one call of the start script.
START_BATCH = 128


@dataclass(slots=True)
class StartRequest:
    """A prepared start (see Starts.start_request), run by Starts.start_many."""

    workflow_id: str
    partition: int
    queue: str
    keys: list[str]
    argv: list[Any]


def new_workflow_id() -> str:
    """32 random hex digits (as uuid4().hex, at a fifth of its cost: starts make many)."""
    return os.urandom(16).hex()


def idempotent_workflow_id(workflow: str, idempotency_key: str) -> str:
    """The same (workflow, key) always maps to the same id, so a repeated start is a no-op."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"conveyor:{workflow}:{idempotency_key}").hex


class Starts(Role):
    def start_request(
        self,
        workflow: str,
        step: str,
        queue: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        max_steps: int = 0,
        delay: float | None = None,
        on_cancel: tuple[str, str] | None = None,
        now: int | None = None,
        trace: str | None = None,
    ) -> StartRequest:
        """Prepare a start: choose the workflow id (deterministic with an idempotency key).
        ``delay`` seconds before the first step (a durable timer); ``max_steps`` bounds the
        tasks it may create (0: unbounded); ``on_cancel`` is (step, queue) of its cancel
        handler. ``now`` is the start time in ms (default: now) and ``trace`` the workflow's
        trace carrier (see carriers.py; default: the start time alone, no trace)."""
        if idempotency_key is not None:
            workflow_id = idempotent_workflow_id(workflow, idempotency_key)
        else:
            workflow_id = new_workflow_id()
        if delay is not None and delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, not {delay}")
        partition = self.keys.partition(workflow_id)
        if now is None:
            now = now_ms()
        keys = [
            self.keys.workflow(workflow_id, partition),
            self.keys.stream(partition, queue),
            self.keys.delayed(partition, queue),
            self.keys.recent(partition),
        ]
        argv = [
            workflow_id,
            workflow,
            step,
            codec.dumps(input),
            self.settings.backlog_per_partition,
            now,
            request_id or "",
            max_steps,
            int((delay or 0) * 1000),
            step_ref(*on_cancel) if on_cancel else "",
            self._retention,
            trace if trace is not None else str(now),
        ]
        return StartRequest(workflow_id, partition, queue, keys, argv)

    async def start(self, *args: Any, **kwargs: Any) -> tuple[str, bool]:
        """Create a workflow and enqueue its first task. Returns (id, created).
        Arguments as for :meth:`start_request`."""
        [outcome] = await self.start_many([self.start_request(*args, **kwargs)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def start_many(self, requests: list[StartRequest]) -> list[tuple[str, bool] | Exception]:
        """Run starts in one pipeline: one script call per partition for up to START_BATCH
        of them. Each result is (id, created), the BackPressureError of that start (its
        queue is full, or Redis is out of memory), or the error of its script call: a call
        that failed does not fail the starts of other partitions, which were written."""
        by_partition: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            by_partition.setdefault(request.partition, []).append(i)
        calls: list[list[Any]] = []
        owners: list[list[int]] = []
        for members in by_partition.values():
            for start in range(0, len(members), START_BATCH):
                chunk = members[start : start + START_BATCH]
                keys = [k for i in chunk for k in requests[i].keys]
                argv = [a for i in chunk for a in requests[i].argv]
                calls.append(self.scripts.args("start", keys, argv))
                owners.append(chunk)
        out: list[tuple[str, bool] | Exception | None] = [None] * len(requests)
        for chunk, reply in zip(
            owners, await self.scripts.call_many(self.redis, calls, self.confirm), strict=True
        ):
            # redis-py raises OutOfMemoryError (without the "OOM" prefix) for "-OOM ..."
            if isinstance(reply, OutOfMemoryError) or (
                isinstance(reply, ResponseError) and str(reply).startswith("OOM")
            ):
                for i in chunk:
                    out[i] = BackPressureError(
                        "Redis is out of memory (maxmemory reached): start refused; retry later",
                        retry_after=5.0,
                    )
                continue
            if isinstance(reply, Exception):
                for i in chunk:
                    out[i] = reply
                continue
            for i, (code, detail) in zip(chunk, reply, strict=True):
                request = requests[i]
                if code == ScriptCode.BACKPRESSURE:
                    out[i] = BackPressureError(
                        f"queue {request.queue!r} is full: partition {request.partition} holds "
                        f"{int(detail)} tasks (bound {self.settings.backlog_per_partition}); "
                        "retry later"
                    )
                else:
                    out[i] = (request.workflow_id, code == ScriptCode.OK)
        return [x for x in out if x is not None]
