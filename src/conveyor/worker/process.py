"""Running workers as processes: one in this process, or several under a supervisor that
forwards SIGTERM/SIGINT, restarts a child that dies and, with ``--autoscale``, grows and
shrinks their number on the backlog."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..app import App
from ..observability import metrics
from ..observability.tracing import setup_tracing, shutdown_tracing
from ..scaling.local import AutoscaleOptions, BacklogSignal, LocalAutoscaler
from . import health
from .health import HealthBoard
from .worker import Worker

log = logging.getLogger("conveyor.worker")


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 64
    queues: list[str] | None = None
    threads: int | None = None
    drain_timeout: float = 30.0
    settings: dict[str, Any] = field(default_factory=dict)
    # serve /metrics (of every process), /healthz, /readyz and /drain on this port
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    autoscale: AutoscaleOptions | None = None  # grow and shrink the processes on backlog


async def serve(
    app: App,
    options: WorkerOptions,
    ready: Callable[[], None] | None = None,
    board: HealthBoard | None = None,
    slot: int = 0,
) -> None:
    """Run one worker until SIGTERM or SIGINT, then drain and return. ``ready`` is called
    once the worker has registered its workflows and reads its queues; ``board`` gets this
    process's liveness and readiness in ``slot`` each second."""
    worker = Worker(
        app,
        concurrency=options.concurrency,
        queues=options.queues,
        threads=options.threads,
        drain_timeout=options.drain_timeout,
    )
    loop = asyncio.get_running_loop()
    log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)

    def stop() -> None:
        if board is not None:
            board.draining = True
        worker.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    reporting = asyncio.create_task(report_health(worker, board, slot)) if board else None
    try:
        await worker.start()
        if ready is not None:
            ready()
        await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if reporting is not None:
            reporting.cancel()


async def report_health(worker: Worker, board: HealthBoard, slot: int) -> None:
    """Each second, from the worker's own event loop: it ticks, and when its heartbeat last
    reached Redis (a stuck loop stops ticking; an unreachable Redis stops the beats)."""
    while True:
        board.tick(slot, worker.lease.published_at)
        await asyncio.sleep(1.0)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (``pip install 'conveyor[fast]'``): about 15% more
    transitions per second per worker process (docs/benchmarks.md); else asyncio's own."""
    from ..settings import RuntimeSettings

    if RuntimeSettings().event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main)


def run_in_this_process(
    app: App, options: WorkerOptions, board: HealthBoard | None = None, slot: int = 0
) -> None:
    setup_tracing("conveyor-worker")
    try:
        run_async(serve(app, options, board=board, slot=slot))
    finally:
        shutdown_tracing()  # flush the spans still buffered
    exit_past_stuck_steps()


def exit_past_stuck_steps() -> None:
    """Exit at once when sync steps still run in threads after the drain (their entries
    were handed back); the thread pool would otherwise block interpreter exit."""
    stuck = [t for t in threading.enumerate() if t.name.startswith("conveyor-step")]
    for thread in stuck:
        thread.join(timeout=0.2)  # idle pool threads finish shutting down by themselves
    stuck = [t for t in stuck if t.is_alive()]
    if stuck:
        # A sync step still runs in a thread past the drain timeout; its entry has been
        # handed back, so exit without waiting for it (the thread pool would block exit).
        log.warning("exiting with %d sync steps still running; they were handed back", len(stuck))
        logging.shutdown()
        os._exit(0)


def _child(
    app_ref: str, options: WorkerOptions, log_level: str, board: HealthBoard, slot: int
) -> None:
    from ..loader import load_app
    from ..logs import setup_logging

    setup_logging(log_level)  # the format travels in CONVEYOR_LOG_FORMAT
    app = load_app(app_ref)
    if options.settings:
        app.settings = app.settings.replace(**options.settings)
    run_in_this_process(app, options, board, slot)


class Supervisor:
    """Keeps worker processes running until told to stop: ``processes`` of them, or, with an
    autoscaler, as many as it asks for. A child that dies is restarted (backing off if it
    keeps dying); one the autoscaler lets go gets SIGTERM, drains, and is not replaced."""

    def __init__(
        self,
        app_ref: str,
        processes: int,
        options: WorkerOptions,
        log_level: str,
        board: HealthBoard,
        autoscaler: LocalAutoscaler | None = None,
    ):
        self.app_ref = app_ref
        self.options = options
        self.log_level = log_level
        self.board = board
        self.autoscaler = autoscaler
        self.desired = processes
        self.ctx = multiprocessing.get_context("spawn")
        self.children: dict[int, Any] = {}  # slot -> process, the ones meant to run
        self.retiring: dict[int, Any] = {}  # slot -> process, draining after a scale-down
        self.started: dict[int, float] = {}
        self.delays: dict[int, float] = {}
        self.stopping = False

    def active(self) -> list[int]:
        """The slots of the processes meant to run (what the health probes check)."""
        return list(self.children)

    def _free_slot(self) -> int:
        taken = self.children.keys() | self.retiring.keys()
        return next(slot for slot in range(self.board.slots) if slot not in taken)

    def _spawn(self, slot: int) -> None:
        self.board.starting(slot)
        proc = self.ctx.Process(
            target=_child,
            args=(self.app_ref, self.options, self.log_level, self.board, slot),
            name=f"conveyor-worker-{slot}",
        )
        self.children[slot] = proc  # counted (as starting) by the probes from now on
        self.started[slot] = time.monotonic()
        proc.start()
        self.delays.setdefault(slot, 1.0)

    def _stop(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.board.draining = True
        log.info(
            "received %s: stopping %d workers", signal.Signals(signum).name, len(self.children)
        )
        for proc in self.children.values():
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for _ in range(self.desired):
            self._spawn(self._free_slot())
        while not self.stopping:
            time.sleep(0.2)
            self._reap_retired()
            self._restart_dead()
            if self.autoscaler is not None and not self.stopping:
                desired = self.autoscaler.poll(self.desired)
                if desired is not None:
                    self._resize(desired)
        deadline = time.monotonic() + self.options.drain_timeout + 10
        for proc in [*self.children.values(), *self.retiring.values()]:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker process %s did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join()
        return 0

    def _restart_dead(self) -> None:
        for slot, proc in list(self.children.items()):
            if proc.is_alive() or self.stopping:
                continue
            if proc.pid:
                metrics.process_died(proc.pid)
            # A child died on its own (crash, OOM kill): restart it, backing off if it
            # keeps dying, so a broken deployment does not spin.
            if time.monotonic() - self.started[slot] > 60:
                self.delays[slot] = 1.0
            log.error(
                "worker process %s exited with code %s; restarting in %.0fs",
                proc.pid, proc.exitcode, self.delays[slot],
            )  # fmt: skip
            time.sleep(self.delays[slot])
            self.delays[slot] = min(30.0, self.delays[slot] * 2)
            if not self.stopping:
                self._spawn(slot)

    def _reap_retired(self) -> None:
        for slot, proc in list(self.retiring.items()):
            if not proc.is_alive():
                del self.retiring[slot]
                if proc.pid:
                    metrics.process_died(proc.pid)
                log.info("worker process %s drained and exited (%s)", proc.pid, proc.exitcode)

    def _resize(self, desired: int) -> None:
        """Start processes, or let the newest ones go: SIGTERM makes a worker stop reading,
        finish its running steps and hand back the rest, so nothing is lost."""
        self.desired = desired
        while len(self.children) < desired:
            self._spawn(self._free_slot())
        surplus = len(self.children) - desired
        if surplus > 0:
            newest = sorted(self.children, key=self.started.__getitem__)[-surplus:]
            for slot in newest:
                proc = self.retiring[slot] = self.children.pop(slot)
                if proc.is_alive() and proc.pid:
                    os.kill(proc.pid, signal.SIGTERM)


def run_workers(
    app_ref: str, app: App, processes: int, options: WorkerOptions, log_level: str
) -> int:
    """Run the workers of ``conveyor worker``: in this process when one is asked for, else
    under a :class:`Supervisor` (``--processes N`` or ``--autoscale MIN:MAX``)."""
    scale = options.autoscale
    if processes <= 1 and scale is None:
        board = HealthBoard(1)
        if options.metrics_port is not None:
            health.serve(options.metrics_port, options.metrics_host, board, lambda: [0])
            log.info("metrics at http://%s:%d/metrics", options.metrics_host, options.metrics_port)
        run_in_this_process(app, options, board)
        return 0
    sys.stdout.flush()
    # slots for the processes, and for as many again draining after a scale-down
    board = HealthBoard(2 * (scale.max if scale else processes), shared=True)
    autoscaler = signal_source = None
    if scale is not None:
        signal_source = BacklogSignal(app.settings, options.queues or app.queues)
        autoscaler = LocalAutoscaler(scale, signal_source.read)
        processes = scale.min
        log.info(
            "autoscaling %d to %d processes on the backlog of %s (target %g per process, "
            "sync every %gs, scale-down window %gs)",
            scale.min, scale.max, options.queues or app.queues, scale.target, scale.interval,
            scale.down_window,
        )  # fmt: skip
    # the children write their metrics to files in a shared directory (prometheus-client's
    # multiprocess mode); this process serves them merged, so one scrape sees them all
    directory, created = metrics.prepare_multiprocess()
    try:
        supervisor = Supervisor(app_ref, processes, options, log_level, board, autoscaler)
        if options.metrics_port is not None:
            health.serve(options.metrics_port, options.metrics_host, board, supervisor.active)
            log.info(
                "metrics of the worker processes at http://%s:%d/metrics",
                options.metrics_host, options.metrics_port,
            )  # fmt: skip
        return supervisor.run()
    finally:
        if signal_source is not None:
            signal_source.close()
        if created:
            metrics.remove_multiprocess(directory)
