"""Control of running workflows: read one workflow, cancel it, signal it, resolve its wait
timers (claim), and follow the workflows that stopped early (the stopped sets and their
channels, which the worker mirrors)."""

from __future__ import annotations

from typing import Any

from .. import codec
from ..errors import ScriptCode, SignalError, WorkflowNotFoundError
from ..status import RunStatus
from .base import Backend, Role, now_ms
from .frames import parent_target, parse_step_ref
from .records import Task, WorkflowStatus, workflow_status


class Subscription:
    """A pub/sub connection to some channels; messages come back decoded. Fire-and-forget
    like Redis pub/sub itself: a reconnect can drop a message, so users re-read state."""

    def __init__(self, redis: Any) -> None:
        self._pubsub: Any = redis.pubsub()

    async def subscribe(self, *channels: str) -> None:
        await self._pubsub.subscribe(*channels)

    async def message(self, timeout: float) -> str | None:
        """The next message's data, or None when none came within ``timeout`` seconds."""
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is None:
            return None
        data = message.get("data")
        return data.decode() if isinstance(data, bytes) else str(data)

    async def close(self) -> None:
        await self._pubsub.aclose()


class Control(Role):
    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self._signal_queues: dict[str, str] = {}  # signal name -> queue its waiter was on

    def subscription(self) -> Subscription:
        """A new pub/sub connection (subscribe it to channels of Keys: finished, stopped)."""
        return Subscription(self.redis)

    async def get(self, workflow_id: str) -> WorkflowStatus:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.workflow(workflow_id))
        pipe.lrange(self.keys.history(workflow_id), 0, -1)
        fields, history = await pipe.execute()
        if not fields:
            raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}")
        return workflow_status(workflow_id, fields, history)

    async def get_status(self, workflow_id: str) -> RunStatus | None:
        raw = await self.redis.hget(self.keys.workflow(workflow_id), "status")
        return RunStatus(raw.decode()) if raw else None

    async def cancel(self, workflow_id: str, reason: str = "cancelled") -> RunStatus:
        """Cancel a workflow and, in turn, its running child workflows; returns the status it
        ends in ('cancelled', or the status it had already finished with)."""
        partition = self.keys.partition(workflow_id)
        key = self.keys.workflow(workflow_id, partition)
        parent, on_cancel = await self.redis.hmget(key, "parent", "on_cancel")
        cancel_stream = parent_key = parent_stream = key
        if on_cancel:
            cancel_stream = self.keys.stream(partition, parse_step_ref(on_cancel.decode())[1])
        if parent:
            parent_id, parent_queue = parent_target(parent.decode())
            parent_key = self.keys.workflow(parent_id, partition)
            parent_stream = self.keys.stream(partition, parent_queue)
        keys = [
            key,
            self.keys.history(workflow_id, partition),
            cancel_stream,
            parent_key,
            parent_stream,
            self.keys.stopped(partition),
            self.keys.events(workflow_id, partition),
        ]
        argv = [
            now_ms(),
            self._retention,
            self.keys.finished_channel(partition),
            workflow_id,
            reason,
        ]
        code, status, *children = await self.scripts.call(
            self.redis, "cancel", keys, argv, self.confirm
        )
        if code == ScriptCode.NOT_FOUND:
            raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}")
        for child in children:
            await self.cancel(child.decode(), f"parent {workflow_id} cancelled")
        return RunStatus(status.decode() if isinstance(status, bytes) else status)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> str:
        """Send signal ``name`` to a workflow: resume its wait, or buffer the payload for a
        later wait. Returns 'delivered' or 'buffered'."""
        partition = self.keys.partition(workflow_id)
        key = self.keys.workflow(workflow_id, partition)
        buffer = self.keys.signals(workflow_id, name, partition)
        body = codec.dumps(payload)
        # the queue of the waiting step: guessed from the last signal of this name (usually
        # right: one round trip), else the script says which (CHANGED) and we call again
        queue = self._signal_queues.get(name, "")
        for _ in range(10):
            stream = self.keys.stream(partition, queue) if queue else key
            argv = [name, body, now_ms(), queue, self._retention, workflow_id]
            code, detail = await self.scripts.call(
                self.redis, "signal", [key, buffer, stream], argv, self.confirm
            )
            detail = detail.decode() if isinstance(detail, bytes) else str(detail)
            if code == ScriptCode.NOT_FOUND:
                raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}")
            if code == ScriptCode.FINISHED:
                raise SignalError(
                    f"workflow {workflow_id} has already finished ({detail}); signal "
                    f"{name!r} not delivered"
                )
            if code == ScriptCode.OK:
                if queue:
                    if len(self._signal_queues) > 1000:  # many distinct names: stay small
                        self._signal_queues.clear()
                    self._signal_queues[name] = queue
                return detail
            queue = detail
        raise SignalError(f"signal {name!r} to {workflow_id}: the wait kept changing; retry")

    async def stopped_since(self, since_ms: int) -> dict[str, int]:
        """Workflows that stopped early (cancelled or failed) since ``since_ms``: id -> when."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.settings.partitions):
            pipe.zrangebyscore(self.keys.stopped(p), since_ms, "+inf", withscores=True)
        out: dict[str, int] = {}
        for members in await pipe.execute():
            out.update((m.decode(), int(score)) for m, score in members)
        return out

    async def claim_timers(self, tasks: list[Task]) -> list[bool]:
        """For wait timers that fired: whether each still resolves its wait (see claim.lua)."""
        calls = [
            self.scripts.args(
                "claim",
                [self.keys.workflow(t.workflow_id, t.partition)],
                [t.wait or "", t.task],
            )
            for t in tasks
        ]
        out = []
        for result in await self.scripts.call_many(self.redis, calls):
            if isinstance(result, Exception):
                raise result
            out.append(bool(result))
        return out
