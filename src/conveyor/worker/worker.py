"""The worker process: wires the reader, step runner, committer, lease keeper, reclaimer and
promoter together, and owns the lifecycle (start, drain on stop)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

from ..app import App
from ..errors import DELIVERY_LIMIT_EXCEEDED, ConfigurationError
from ..observability.metrics import WorkerMetrics, declare_series
from ..observability.tracing import TRACING
from ..storage.connection import UNAVAILABLE, RedisClient, connect
from ..storage.frames import CANCEL_FRAME
from ..storage.records import Task
from ..storage.store import Store, now_ms
from ..workflow import OutcomeKind, Step
from .admission import Admission
from .batcher import Batcher
from .cancels import StoppedWorkflows
from .committer import Committer
from .emitter import Emitter
from .inflight import Capacity, InFlight
from .lease import LeaseKeeper
from .listeners import (
    Listeners,
    LoggingListener,
    PrometheusListener,
    Stats,
    StatsListener,
    TracingListener,
    WorkerListener,
)
from .promoter import Promoter
from .reader import RawEntry, Reader
from .reclaimer import Reclaimer
from .resilience import Backoff, every
from .runner import Outcome, StepRunner

log = logging.getLogger("conveyor.worker")

HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats (`conveyor top` refreshes each second)


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs the steps of ``app`` from Redis until stopped.

    Use as ``async with Worker(app) as w: await w.run()``, or ``await Worker(app).run()``.
    ``run(until_idle=True)`` returns once every queue of the app is empty (for tests).

    Args:
        concurrency: steps running at once in this process.
        queues: queues to serve (default: every queue the app's steps use).
        threads: size of the thread pool for sync steps (default: ``concurrency``).
        batch_size: most entries read per XREADGROUP call.
        drain_timeout: seconds a stopping worker lets running steps finish; the rest are
            handed back to other workers.
        listeners: your own :class:`~conveyor.WorkerListener` objects, told of this worker's
            events after its own (stats, metrics, tracing, log context).
    """

    def __init__(
        self,
        app: App,
        *,
        concurrency: int = 64,
        queues: list[str] | None = None,
        name: str | None = None,
        threads: int | None = None,
        batch_size: int = 256,
        block_ms: int = 500,
        drain_timeout: float = 30.0,
        promote_interval: float = 0.1,
        trim_interval: float = 1.0,
        reclaim_interval: float | None = None,
        redis: RedisClient | None = None,
        listeners: list[WorkerListener] | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.name = name or default_worker_name()
        self.queues = list(queues or app.queues)
        unknown = set(self.queues) - set(app.queues)
        if unknown:
            raise ConfigurationError(
                f"no step of this app runs on queue(s) {sorted(unknown)}; "
                f"its queues are {app.queues}"
            )
        # the client is made here, then used only through the store
        self.store = Store(redis or connect(self.settings.redis_url), self.settings)
        self._owns_redis = redis is None
        self.streams = [s for q in self.queues for s in self.store.keys.streams(q)]
        self.stats = Stats()
        self.metrics = WorkerMetrics()
        declare_series(self.app.workflows.values(), worker=True)
        self._user_listeners = list(listeners or ())
        # shared by the runner, committer and lease keeper; rebuilt once as the worker starts
        # (tracing is known then)
        self.listeners = Listeners(self._listeners())
        self.capacity = Capacity(concurrency)
        self.inflight = InFlight()
        self.stopped = StoppedWorkflows(self.store)
        self.emitter = Emitter(self.store)
        # one thread per slot: a sync step never waits for a thread (its timeout would count it)
        self.runner = StepRunner(
            app, self.store, self.name, threads or concurrency, self.stopped, self.emitter,
            self.listeners,
        )  # fmt: skip
        self.committer = Committer(self.store, self._committed, self._retried, self.listeners)
        self.reader = Reader(
            self.store,
            self.name,
            self.streams,
            self.queues,
            self.capacity,
            self._dispatch,
            batch_size,
            block_ms,
            self._setup,
        )
        self.reclaimer = Reclaimer(
            self.store, self.name, self.streams, self.capacity, self._dispatch, self.inflight
        )
        self.promoter = Promoter(self.store, self.queues, promote_interval)
        self.lease = LeaseKeeper(
            self.store, self.name, self.inflight, self.queues, self.capacity.limit, self.listeners
        )
        self.limiter = self.store.limiter
        self.admission = Admission(
            self.store, self.runner, self.limiter, self.settings.visibility_timeout, self.stopped
        )
        # steps whose tasks go through admission (a round trip) before they run
        self._admitted = {
            (s.workflow_name, s.name)
            for wf in app.workflows.values()
            for s in wf.steps.values()
            if s.cache_ttl or s.rate_limit or s.max_concurrency
        }
        self.batchers: dict[tuple[str, str], Batcher] = {}
        self._to_admit: list[Task] = []
        for wf in app.workflows.values():
            for step in wf.steps.values():
                if step.batch_size:
                    self.batchers[(wf.name, step.name)] = Batcher(step, self._launch_batch)
        self.drain_timeout = drain_timeout
        self.promote_interval = promote_interval
        self.trim_interval = trim_interval
        vt = self.settings.visibility_timeout
        self.reclaim_interval = reclaim_interval or max(0.5, vt / 4)
        self.stopping = asyncio.Event()  # stop reading and taking over
        self.closed = asyncio.Event()  # everything committed or handed back: stop leases
        self._running: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._started = False
        self._start_lock = asyncio.Lock()
        self._stopped = False

    def __repr__(self) -> str:
        return f"<Worker {self.name} queues={self.queues}>"

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _setup(self) -> None:
        await self.store.check_partitions()
        await self.stopped.start()  # before the first read: a stopped workflow's tasks drop
        await self.store.load_scripts()
        await self.store.ensure_groups(self.queues)
        await self.store.register(
            {
                name: {
                    "start": wf.start_step.name,
                    "queue": wf.start_step.queue,
                    "steps": {s.name: s.queue for s in wf.steps.values()},
                    "max_steps": wf.max_steps,
                    "on_cancel": [c.name, c.queue] if (c := wf.on_cancel_step) else None,
                }
                for name, wf in self.app.workflows.items()
            }
        )

    async def start(self) -> None:
        """Connect (waiting out a Redis outage), prepare the streams, start the loops. Safe to
        call more than once, also concurrently (``run`` calls it too)."""
        async with self._start_lock:
            await self._start()

    async def _start(self) -> None:
        if self._started:
            return
        self.emitter.bind(asyncio.get_running_loop())
        TRACING.refresh()  # a TracerProvider the application installed before starting us
        self.listeners.build(self._listeners())
        backoff = Backoff(cap=2.0)
        while not self.stopping.is_set():
            try:
                await self._setup()
                break
            except UNAVAILABLE as exc:
                await backoff.wait(f"worker {self.name} starting", exc)
        self._started = True
        log.info(
            "worker %s serving queues %s (%d partitions, concurrency %d)",
            self.name, self.queues, self.settings.partitions, self.capacity.limit,
        )  # fmt: skip
        stop = self.stopping
        vt = self.settings.visibility_timeout
        self._reader_task = asyncio.create_task(self.reader.run(stop), name="conveyor-reader")
        self._committer_task = asyncio.create_task(self.committer.run(), name="conveyor-committer")
        # leases and cancellation flags serve running steps until the very end: a draining
        # step must neither be taken over nor miss its cancellation
        self._lease_task = asyncio.create_task(
            every(max(0.5, vt / 3), "renewing leases", self._renew, self.closed)
        )
        self._cancel_task = asyncio.create_task(self.stopped.run(self.closed))
        self._heartbeat_task = asyncio.create_task(
            every(HEARTBEAT_INTERVAL, "publishing the heartbeat", self.lease.publish, self.closed)
        )
        self._loops = [
            asyncio.create_task(self.promoter.run(stop), name="conveyor-promoter"),
            asyncio.create_task(self.reclaimer.run(self.reclaim_interval, stop)),
            asyncio.create_task(every(self.trim_interval, "trimming streams", self._trim, stop)),
        ]

    def request_stop(self) -> None:
        """Ask the worker to stop reading and drain (safe to call from a signal handler)."""
        self.stopping.set()

    async def run(self, *, until_idle: bool = False) -> Stats:
        """Run until :meth:`request_stop` (or, with ``until_idle``, until nothing is left)."""
        await self.start()
        try:
            if until_idle:
                await self._wait_idle()
            else:
                await self.stopping.wait()
        finally:
            await self.stop()
        return self.stats

    async def _wait_idle(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(0.05)
            if self.inflight or self.committer or self.reader.idle_reads == 0:
                continue
            try:
                await self.store.trim(self.queues)  # acknowledged entries still count in XLEN
                backlog = await self.store.backlog(self.queues)
            except UNAVAILABLE:
                continue
            if all(v["stream"] == 0 and v["delayed"] == 0 for v in backlog.values()):
                return
        return

    async def stop(self) -> None:
        """Stop reading, let running steps finish within ``drain_timeout``, commit their
        results, and hand whatever is left back to other workers. Loses nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        started = self._started
        for task in [self._reader_task, *self._loops] if started else []:
            try:
                await asyncio.wait_for(task, timeout=self.reader.block_ms / 1000 + 2)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("worker loop ended with an error")
        await self._drain()
        if started:
            try:
                await asyncio.wait_for(self.committer.drain(), timeout=self.drain_timeout)
            except TimeoutError:
                log.warning("could not commit %d results: Redis unavailable", len(self.committer))
            self._committer_task.cancel()
        # stop renewing before handing back: a renewal after it would undo the hand-back
        self.closed.set()
        if started:
            await asyncio.wait(
                [self._lease_task, self._cancel_task, self._heartbeat_task], timeout=2
            )
        await self._hand_back()
        for f in self.listeners.stopped:
            f()
        self.runner.close()
        if self._owns_redis:
            await self.store.close()
        log.info("worker %s stopped", self.name)

    async def _drain(self) -> None:
        """Let running steps finish within ``drain_timeout`` (admissions still under way may
        start more: wait for those too), then cancel what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        if self._running:
            log.info(
                "draining %d running steps (up to %.0fs)", len(self._running), self.drain_timeout
            )
        while True:
            for batcher in self.batchers.values():
                batcher.flush()  # do not leave collected tasks waiting for their timer
            left = deadline - loop.time()
            if not self._running or left <= 0:
                break
            await asyncio.wait(list(self._running), timeout=left)
        still = list(self._running)
        for t in still:
            t.cancel()
        if still:
            await asyncio.wait(still, timeout=1.0)

    async def _hand_back(self) -> None:
        leftovers = self.inflight.by_stream()
        try:
            if leftovers:
                await self.store.hand_back(self.name, leftovers)
                log.info("handed back %d unfinished entries", sum(map(len, leftovers.values())))
            await self.lease.forget()
        except UNAVAILABLE as exc:
            log.warning("could not hand back entries (%s); they will be reclaimed later", exc)

    def _retried(self) -> None:
        self.promoter.wake.set()  # a retry is waiting: poll the delayed sets at full rate

    async def _trim(self) -> int:
        return await self.store.trim(self.queues)

    async def _renew(self) -> None:
        await self.lease.renew()
        await self.admission.renew()

    # -- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, entry: RawEntry, deliveries: int) -> None:
        stream, entry_id, fields = entry
        try:
            task = self.store.parse_entry(stream, entry_id, fields)
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            reason = f"undecodable task entry ({type(exc).__name__}: {exc})"
            log.error("dead-lettering entry %s of %s: %s", entry_id, stream, reason)
            partition, queue = self.store.stream_info(stream)
            call = self.store.transitions.poison(
                stream, partition, queue, entry_id, fields, reason, now_ms()
            )
            self.committer.submit(call, None, OutcomeKind.POISON)
            return
        if task.ref in self.inflight.tasks:
            return  # our own entry, reclaimed after a missed lease renewal: already running
        task.deliveries = deliveries
        task.attempt += deliveries - 1  # a crashed delivery counts as an attempt
        self.inflight.add(task)
        if deliveries > 1:
            for f in self.listeners.reclaimed:
                f(task.queue)
        limit = self.settings.max_deliveries
        if deliveries > limit:
            reason = f"delivered {deliveries} times (limit {limit}); it may crash workers"
            call = self.runner.dead_letter(task, reason, DELIVERY_LIMIT_EXCEEDED)
            self.committer.submit(call, task, OutcomeKind.DEAD_UNRUN)
            return
        self.capacity.take()
        # a task of a workflow that stopped (cancelled or failed) goes through admission,
        # which drops it unrun unless the workflow was replayed meanwhile
        suspect = task.workflow_id in self.stopped and task.frame != CANCEL_FRAME
        if not suspect and not task.wait and (task.workflow, task.step) not in self._admitted:
            self._run(task)
            return
        # admit the tasks of one read together (one round trip), once the read is dispatched
        if not self._to_admit:
            asyncio.get_running_loop().call_soon(self._admit_soon)
        self._to_admit.append(task)

    def _spawn(self, coro: Any) -> None:
        running = asyncio.create_task(coro)
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    def _admit_soon(self) -> None:
        tasks, self._to_admit = self._to_admit, []
        if tasks:
            self._spawn(self._admit(tasks))

    async def _admit(self, tasks: list[Task]) -> None:
        try:
            admitted = await self.admission.admit(tasks)
        except Exception as exc:
            # leave them pending without a lease: they are redelivered after the visibility
            # timeout (to this worker or another), as after a crash; nothing is lost
            log.warning("admitting %d tasks failed (%s); they will be redelivered", len(tasks), exc)
            for task in tasks:
                self.inflight.discard(task)
                self.capacity.release()
            return
        for task, outcome in admitted.settled:
            self.capacity.release()
            self._settle(task, outcome)
        for task in admitted.run:
            self._run(task)

    def _run(self, task: Task) -> None:
        """Run an admitted task: alone, or with others in its step's next batch."""
        key = (task.workflow, task.step)
        batcher = self.batchers.get(key)
        if batcher is not None:
            batcher.add(task)
        else:
            self._spawn(self._execute(task))

    def _settle(self, task: Task, outcome: Outcome) -> None:
        self.committer.submit(outcome.call, task, outcome.kind)
        if self.admission.needs_after(task, outcome):
            self._spawn(self.admission.after(task, outcome))

    async def _execute(self, task: Task) -> None:
        listeners = self.listeners
        if listeners.steps_started:
            for f in listeners.steps_started:
                f((task,))
        began = time.perf_counter()
        try:
            outcome = await self.runner.run(task)
        finally:
            self.capacity.release()
        self._ran(task, outcome, time.perf_counter() - began)
        self._settle(task, outcome)

    def _ran(self, task: Task, outcome: Outcome, seconds: float) -> None:
        listeners = self.listeners
        for f in listeners.step_ran:
            f(task, seconds)
        if outcome.cache is not None:  # a cached step had no result yet: it ran to store one
            for g in listeners.cache_missed:
                g(task)

    def _launch_batch(self, step: Step, tasks: list[Task]) -> None:
        self._spawn(self._execute_batch(step, tasks))

    async def _execute_batch(self, step: Step, tasks: list[Task]) -> None:
        for f in self.listeners.steps_started:
            f(tasks)
        began = time.perf_counter()
        try:
            outcomes = await self.runner.run_batch(step, tasks)
        finally:
            for _ in tasks:
                self.capacity.release()
        seconds = time.perf_counter() - began
        for task, outcome in zip(tasks, outcomes, strict=True):
            self._ran(task, outcome, seconds)
            self._settle(task, outcome)

    def _listeners(self) -> list[WorkerListener]:
        """The worker's own listeners, then the user's."""
        found: list[WorkerListener] = [StatsListener(self.stats), PrometheusListener(self.metrics)]
        if TRACING.enabled:
            found.append(TracingListener(self.settings.group))
        found.append(LoggingListener())
        return [*found, *self._user_listeners]

    def _committed(self, task: Task | None) -> None:
        if task is not None:
            self.inflight.discard(task)
