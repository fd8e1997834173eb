"""Liveness and readiness of a worker's processes, and the HTTP port that serves them with
the metrics: ``/metrics``, ``/healthz``, ``/readyz`` and ``/drain`` (what Kubernetes' probes
and preStop hook call).

Each worker process's event loop writes two times into its slot of a :class:`HealthBoard`
once a second: that it ticked, and when its heartbeat last reached Redis. The board is
shared memory, so a supervisor's HTTP thread reads its children's slots without asking
them; a stuck event loop (a step that blocks it) cannot answer for itself, which is what a
liveness probe must notice.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from ..observability import metrics

log = logging.getLogger("conveyor.worker")

#: Liveness fails when a process's event loop has not ticked for this long.
STALL_AFTER = 60.0
#: Readiness needs a heartbeat that reached Redis this recently.
BEAT_WITHIN = 10.0

_TICK, _BEAT, _FIELDS = 0, 1, 2


class HealthBoard:
    """Per process slot: the last event-loop tick and the last heartbeat that reached
    Redis (``time.time()``; 0 for never). ``shared=True`` puts it in shared memory, to be
    handed to child processes as they are spawned."""

    def __init__(self, slots: int, *, shared: bool = False) -> None:
        self.slots = slots
        size = slots * _FIELDS
        if shared:
            from multiprocessing.sharedctypes import RawArray

            self._values: Any = RawArray("d", size)
        else:
            self._values = [0.0] * size
        self.draining = False

    def starting(self, slot: int) -> None:
        """A process is being started in ``slot``: alive for now, not ready yet."""
        self._values[slot * _FIELDS + _TICK] = time.time()
        self._values[slot * _FIELDS + _BEAT] = 0.0

    def tick(self, slot: int, beat: float | None) -> None:
        """Called by the process's own event loop: it runs, and its heartbeat last reached
        Redis at ``beat``."""
        self._values[slot * _FIELDS + _TICK] = time.time()
        self._values[slot * _FIELDS + _BEAT] = beat or 0.0

    def problems(
        self, active: Iterable[int], *, ready: bool, now: float | None = None
    ) -> list[str]:
        """Why the ``active`` slots are not alive (or, with ``ready``, not ready) at ``now``
        (default: now): empty when all are."""
        now = time.time() if now is None else now
        slots = list(active)
        found = [] if slots else ["no worker process running"]
        for slot in slots:
            tick = self._values[slot * _FIELDS + _TICK]
            beat = self._values[slot * _FIELDS + _BEAT]
            if now - tick > STALL_AFTER:
                found.append(f"process {slot}: event loop stalled for {now - tick:.0f}s")
            elif ready and now - beat > BEAT_WITHIN:
                found.append(
                    f"process {slot}: starting" if beat == 0
                    else f"process {slot}: no heartbeat reached Redis for {now - beat:.0f}s"
                )  # fmt: skip
        if ready and self.draining:
            found.append("draining")
        return found


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per probe and scrape says nothing


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def health_app(board: HealthBoard, active: Callable[[], Iterable[int]]) -> WsgiApp:
    """The WSGI app of the worker's port. ``active`` names the slots that should be
    running now (a supervisor's live children; one process: ``[0]``)."""
    serve_metrics = make_wsgi_app(metrics.registry())

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            problems = board.problems(active(), ready=path == "/readyz")
            status = "503 Service Unavailable" if problems else "200 OK"
            body = ("\n".join(problems) or "ok").encode() + b"\n"
        elif path == "/drain":
            # what a preStop hook calls: the same as SIGTERM (stop reading, finish running
            # steps within the drain timeout, hand back the rest, exit)
            if not board.draining:
                board.draining = True
                log.info("drain requested over HTTP")
                os.kill(os.getpid(), signal.SIGTERM)
            status, body = "202 Accepted", b"draining\n"
        else:
            yield from serve_metrics(environ, start_response)
            return
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        yield body

    return app


def serve(
    port: int, host: str, board: HealthBoard, active: Callable[[], Iterable[int]]
) -> WSGIServer:
    """Serve the worker's port from a background thread; returns the server."""
    server_class = _Server6 if ":" in host else _Server
    httpd = make_server(
        host, port, health_app(board, active), server_class, handler_class=_QuietHandler
    )
    threading.Thread(target=httpd.serve_forever, name="conveyor-http", daemon=True).start()
    return httpd
