"""Admission: what happens to a delivered task of a cached or limited step (or a wait timer,
or a task of a stopped workflow) before it runs, a round trip or two per read batch. Other
tasks skip it.

- A task of a cancelled or failed workflow (the worker's mirror of the stopped sets says so,
  see cancels.py) is dropped without running, unless its task is active after all (the
  workflow was replayed and the mirror has not heard yet): one HEXISTS for such tasks only.
- A wait timer that lost to its signal is dropped without running.
- A step with ``cache_ttl`` whose result is memoised completes from the cache.
- A step with a rate or concurrency limit runs only when the limit grants it; otherwise the
  task goes back to the delayed set as the same attempt (neither lost nor a failure).

After a step ran, :meth:`Admission.after` releases its concurrency slot, settles what it
really used of its rate limit, pushes the limit back on ``RateLimited`` and stores its
result in the cache.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from .. import codec
from ..limits import Limit
from ..storage.frames import CANCEL_FRAME
from ..storage.limits import Limiter
from ..storage.records import Task
from ..storage.store import Store, now_ms
from ..workflow.outcomes import OutcomeKind
from .cancels import StoppedWorkflows
from .runner import Outcome, StepRunner, cache_digest

log = logging.getLogger("conveyor.worker")

#: Longest a refused task waits before it asks its limit again, seconds.
MAX_LIMIT_WAIT = 5.0
#: A task refused a concurrency slot asks again after about this long (a slot frees when a
#: step ends, which no lease expiry predicts); jittered so waiters do not come back in step.
CONCURRENCY_RETRY = 0.1


@dataclass(slots=True)
class Admitted:
    run: list[Task] = field(default_factory=list)
    settled: list[tuple[Task, Outcome]] = field(default_factory=list)  # dropped, cached, limited


class Admission:
    def __init__(
        self,
        store: Store,
        runner: StepRunner,
        limiter: Limiter,
        lease: float,
        stopped: StoppedWorkflows,
    ) -> None:
        self.stopped = stopped
        self.store = store
        self.runner = runner
        self.limiter = limiter
        self.lease = lease
        self.held: dict[tuple[str, bytes], tuple[str, str, str]] = {}  # concurrency slots
        self.estimates: dict[tuple[str, bytes], tuple[Limit, float]] = {}  # rate charged

    async def admit(self, tasks: list[Task]) -> Admitted:
        out = Admitted()
        active = await self._check(tasks, out)
        limited = [t for t in active if self._limits(t)]
        out.run = [t for t in active if not self._limits(t)]
        if limited:
            out.run += await self._acquire(limited, out)
        return out

    def _limits(self, task: Task) -> bool:
        step = self.runner.app.step(task.workflow, task.step)
        limited = step is not None and (step.rate_limit or step.max_concurrency)
        return bool(limited)

    async def _check(self, tasks: list[Task], out: Admitted) -> list[Task]:
        """Drop tasks of stopped workflows and wait timers that lost to their signal;
        complete tasks whose result is cached."""
        tasks = await self._drop_stopped(tasks, out)
        timers = [t for t in tasks if t.wait]
        won = dict(zip(map(id, timers), await self.store.claim_timers(timers), strict=True))
        cached: dict[int, bytes | None] = {}
        lookups = [t for t in tasks if not t.wait and self._cached_step(t)]
        if lookups:
            hits = await self.store.workers.cached([cache_digest(t) for t in lookups])
            cached = dict(zip(map(id, lookups), hits, strict=True))
        keep = []
        for t in tasks:
            hit = cached.get(id(t))
            if t.wait and not won[id(t)]:
                out.settled.append((t, Outcome(self.store.transitions.ack(t), OutcomeKind.DROPPED)))
            elif hit is not None:
                out.settled.append((t, self.runner.from_cache(t, hit)))
            else:
                keep.append(t)
        return keep

    async def _drop_stopped(self, tasks: list[Task], out: Admitted) -> list[Task]:
        """Tasks of workflows the worker's mirror says stopped: dropped unrun, unless the task
        is active after all (the workflow was replayed, and the mirror has not heard yet)."""
        suspects = [t for t in tasks if t.workflow_id in self.stopped and t.frame != CANCEL_FRAME]
        if not suspects:
            return tasks
        dropped = set()
        for t, active in zip(suspects, await self.store.workers.active(suspects), strict=True):
            if active:
                self.stopped.resumed(t.workflow_id)
            else:
                dropped.add(id(t))
                out.settled.append((t, Outcome(self.store.transitions.ack(t), OutcomeKind.DROPPED)))
        return [t for t in tasks if id(t) not in dropped]

    def _cached_step(self, task: Task) -> bool:
        step = self.runner.app.step(task.workflow, task.step)
        return step is not None and bool(step.cache_ttl)

    async def _acquire(self, tasks: list[Task], out: Admitted) -> list[Task]:
        """Ask every limit of ``tasks`` at once; a task runs only if all its limits agree."""
        conc: list[tuple[int, tuple[str, str, int, str, float]]] = []
        rate: list[tuple[int, tuple[Limit, float]]] = []
        for i, t in enumerate(tasks):
            step = self.runner.step_of(t)
            try:
                value: Any = codec.loads(t.input)
                if step.concurrency_key is not None and step.max_concurrency is not None:
                    key = str(step.concurrency_key(value))
                    holder = f"{t.workflow_id}:{t.task}"
                    conc.append((i, (step.qualified_name, key, step.max_concurrency, holder,
                                     self.lease)))  # fmt: skip
                if step.rate_limit is not None:
                    rate.append((i, (step.rate_limit, step.rate_limit.cost_of(value))))
            except Exception as exc:  # a bad key or cost function: the step's own failure
                out.settled.append((t, self.runner.failure(t, step, exc, now_ms())))
        failed = {id(t) for t, _ in out.settled}
        conc = [(i, c) for i, c in conc if id(tasks[i]) not in failed]
        rate = [(i, r) for i, r in rate if id(tasks[i]) not in failed]
        waits: dict[int, float] = {}
        conc_waits = await self.limiter.enter([c for _, c in conc]) if conc else []
        granted_conc = {}
        for (i, c), wait in zip(conc, conc_waits, strict=True):
            if wait > 0:
                retry = min(wait, CONCURRENCY_RETRY) * (1 + random.random())
                waits[i] = max(waits.get(i, 0.0), retry)
            else:
                granted_conc[i] = c
        rate = [(i, r) for i, r in rate if i not in waits]  # do not spend tokens in vain
        rate_waits = await self.limiter.take([r for _, r in rate]) if rate else []
        granted_rate = {}
        for (i, r), wait in zip(rate, rate_waits, strict=True):
            if wait > 0:
                waits[i] = max(waits.get(i, 0.0), wait)
            else:
                granted_rate[i] = r
        # a task refused by one limit gives back what another granted
        give_back = [granted_conc.pop(i) for i in list(granted_conc) if i in waits]
        if give_back:
            await self.limiter.leave([(name, key, holder) for name, key, _, holder, _ in give_back])
        run = []
        for i, t in enumerate(tasks):
            if id(t) in failed:
                continue
            if i in waits:
                delay = min(MAX_LIMIT_WAIT, waits[i])
                out.settled.append((t, Outcome(self.runner.limited(t, delay), OutcomeKind.LIMITED)))
                continue
            if i in granted_conc:
                name, key, _, holder, _ = granted_conc[i]
                self.held[t.ref] = (name, key, holder)
            if i in granted_rate:
                self.estimates[t.ref] = granted_rate[i]
            run.append(t)
        return run

    # -- after a step ----------------------------------------------------------------------

    def needs_after(self, task: Task, outcome: Outcome) -> bool:
        return (
            task.ref in self.held
            or task.ref in self.estimates
            or outcome.cache is not None
            or outcome.push_back is not None
        )

    async def after(self, task: Task, outcome: Outcome) -> None:
        """Settle a step's limits and cache once it ran (best effort: a failure here only
        makes a limit or the cache less exact, never loses or repeats a task)."""
        slot = self.held.pop(task.ref, None)
        estimate = self.estimates.pop(task.ref, None)
        try:
            if slot is not None:
                await self.limiter.leave([slot])
            step = self.runner.app.step(task.workflow, task.step)
            limit = step.rate_limit if step is not None else None
            if estimate is not None and outcome.charged is not None:
                # take() caps a cost at the burst: only that much was charged up front
                extra = outcome.charged - min(estimate[1], estimate[0].capacity)
                if extra:
                    await self.limiter.charge([(estimate[0], extra)])
            if outcome.push_back is not None and limit is not None:
                await self.limiter.push_back(limit, outcome.push_back)
            if outcome.cache is not None:
                key, entry, ttl = outcome.cache
                await self.store.workers.cache(key, entry, ttl)
        except Exception as exc:
            log.warning("settling limits/cache of %s.%s failed: %s", task.workflow, task.step, exc)

    async def renew(self) -> None:
        """Keep the concurrency slots of long steps (called with the lease renewals)."""
        if self.held:
            await self.limiter.renew(
                [(name, key, holder, self.lease) for name, key, holder in self.held.values()]
            )
