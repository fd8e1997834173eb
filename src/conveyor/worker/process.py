"""Running workers as processes: one in this process, or several under a supervisor that
forwards SIGTERM/SIGINT and restarts a child that dies."""

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
from .worker import Worker

log = logging.getLogger("conveyor.worker")


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 64
    queues: list[str] | None = None
    threads: int | None = None
    drain_timeout: float = 30.0
    settings: dict[str, Any] = field(default_factory=dict)
    metrics_port: int | None = None  # serve /metrics (of every process) on this port
    metrics_host: str = "0.0.0.0"


async def serve(app: App, options: WorkerOptions, ready: Callable[[], None] | None = None) -> None:
    """Run one worker until SIGTERM or SIGINT, then drain and return. ``ready`` is called
    once the worker has registered its workflows and reads its queues."""
    worker = Worker(
        app,
        concurrency=options.concurrency,
        queues=options.queues,
        threads=options.threads,
        drain_timeout=options.drain_timeout,
    )
    loop = asyncio.get_running_loop()
    log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.start()
        if ready is not None:
            ready()
        await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (``pip install 'conveyor[fast]'``): about 15% more
    transitions per second per worker process (docs/benchmarks.md); else asyncio's own."""
    if os.environ.get("CONVEYOR_EVENT_LOOP", "auto") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main)


def run_in_this_process(app: App, options: WorkerOptions) -> None:
    setup_tracing("conveyor-worker")
    try:
        run_async(serve(app, options))
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


def _child(app_ref: str, options: WorkerOptions, log_level: str) -> None:
    from ..loader import load_app
    from ..logs import setup_logging

    setup_logging(log_level)  # the format travels in CONVEYOR_LOG_FORMAT
    app = load_app(app_ref)
    if options.settings:
        app.settings = app.settings.replace(**options.settings)
    run_in_this_process(app, options)


class Supervisor:
    """Keeps ``processes`` worker processes running until told to stop."""

    def __init__(self, app_ref: str, processes: int, options: WorkerOptions, log_level: str):
        self.app_ref = app_ref
        self.processes = processes
        self.options = options
        self.log_level = log_level
        self.ctx = multiprocessing.get_context("spawn")
        self.children: dict[int, Any] = {}
        self.stopping = False

    def _spawn(self, slot: int) -> None:
        proc = self.ctx.Process(
            target=_child,
            args=(self.app_ref, self.options, self.log_level),
            name=f"conveyor-worker-{slot}",
        )
        proc.start()
        self.children[slot] = proc

    def _stop(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info(
            "received %s: stopping %d workers", signal.Signals(signum).name, len(self.children)
        )
        for proc in self.children.values():
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(self.processes):
            self._spawn(slot)
        delays = dict.fromkeys(range(self.processes), 1.0)
        started = dict.fromkeys(range(self.processes), time.monotonic())
        while not self.stopping:
            time.sleep(0.2)
            for slot, proc in list(self.children.items()):
                if proc.is_alive() or self.stopping:
                    continue
                if proc.pid:
                    metrics.process_died(proc.pid)
                # A child died on its own (crash, OOM kill): restart it, backing off if it
                # keeps dying, so a broken deployment does not spin.
                if time.monotonic() - started[slot] > 60:
                    delays[slot] = 1.0
                log.error(
                    "worker process %s exited with code %s; restarting in %.0fs",
                    proc.pid, proc.exitcode, delays[slot],
                )  # fmt: skip
                time.sleep(delays[slot])
                delays[slot] = min(30.0, delays[slot] * 2)
                if not self.stopping:
                    self._spawn(slot)
                    started[slot] = time.monotonic()
        deadline = time.monotonic() + self.options.drain_timeout + 10
        for proc in self.children.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker process %s did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join()
        return 0


def run_workers(
    app_ref: str, app: App, processes: int, options: WorkerOptions, log_level: str
) -> int:
    if processes <= 1:
        if options.metrics_port is not None:
            metrics.serve(options.metrics_port, options.metrics_host)
            log.info("metrics at http://%s:%d/metrics", options.metrics_host, options.metrics_port)
        run_in_this_process(app, options)
        return 0
    sys.stdout.flush()
    # the children write their metrics to files in a shared directory (prometheus-client's
    # multiprocess mode); this process serves them merged, so one scrape sees them all
    directory, created = metrics.prepare_multiprocess()
    try:
        if options.metrics_port is not None:
            metrics.serve(options.metrics_port, options.metrics_host)
            log.info(
                "metrics of %d processes at http://%s:%d/metrics",
                processes, options.metrics_host, options.metrics_port,
            )  # fmt: skip
        return Supervisor(app_ref, processes, options, log_level).run()
    finally:
        if created:
            metrics.remove_multiprocess(directory)
