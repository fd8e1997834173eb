"""The app of the fault-injection suite (tests/chaos), run by `conveyor worker
tests.apps.chaos:app` and `conveyor api tests.apps.chaos:app` subprocesses.

Every step attempt appends one line to ``$CONVEYOR_CHAOS_LOG/attempts-<pid>.log`` as it
starts: ``<unix ms> <pid> <worker> <workflow id> <task> <step> <attempt>``. One unbuffered
``os.write`` per line (O_APPEND), so a SIGKILL loses nothing already written, and the log
lives outside Redis, so it survives whatever a scenario does to Redis. The checker reads it
for re-runs, stolen leases and recovery times (tests/chaos/checker.py: AttemptLog).

Workflows:
- ``pipeline``: fetch -> enrich -> store, input ``n``; each step sleeps ``$CHAOS_STEP_MS``
  (default 0); the result is ``expected(n)``.
- ``long``: one step sleeping ``$CHAOS_LONG_SECONDS`` (its lease must be renewed all along),
  returns its input.
- ``raises``, ``exits``, ``hangs``, ``blocks``: poison, input ``n``. ``raises`` always
  raises (2 retries); ``exits`` ends its worker process with ``os._exit(EXIT_CODE)``;
  ``hangs`` (async) waits for ever and ``blocks`` (sync) holds its thread for
  ``BLOCK_SECONDS``, both with a ``HANG_TIMEOUT`` timeout and 1 retry.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from conveyor import App, StepContext, Workflow

#: the exit code the ``exits`` poison step ends its worker process with
EXIT_CODE = 77
#: the timeout of the ``hangs`` and ``blocks`` steps, seconds
HANG_TIMEOUT = 1.0
#: how long a ``blocks`` step holds its thread (past any drain of the suite)
BLOCK_SECONDS = 60.0
_log_fd: dict[int, int] = {}  # pid -> fd: a spawned or forked child opens its own file
_lock = threading.Lock()


def expected(n: int) -> dict[str, int]:
    """The result of ``pipeline`` for input ``n``."""
    return {"value": (n + 1) * 2}


def record_attempt(ctx: StepContext) -> None:
    """Append this attempt's start to the attempts log (nothing without CONVEYOR_CHAOS_LOG)."""
    directory = os.environ.get("CONVEYOR_CHAOS_LOG")
    if not directory:
        return
    pid = os.getpid()
    fd = _log_fd.get(pid)
    if fd is None:
        with _lock:
            fd = _log_fd.get(pid)
            if fd is None:
                path = Path(directory) / f"attempts-{pid}.log"
                fd = _log_fd[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = (
        f"{int(time.time() * 1000)} {pid} {ctx.worker} {ctx.workflow_id} {ctx.task} "
        f"{ctx.step} {ctx.attempt}\n"
    )
    os.write(fd, line.encode())  # one write per line: whole lines, whatever the threads do


async def _pause(variable: str, default: float, scale: float) -> None:
    seconds = float(os.environ.get(variable, default)) * scale
    if seconds > 0:
        await asyncio.sleep(seconds)


async def fetch(ctx: StepContext, n: int) -> int:
    record_attempt(ctx)
    await _pause("CHAOS_STEP_MS", 0, 0.001)
    return n + 1


async def enrich(ctx: StepContext, n: int) -> int:
    record_attempt(ctx)
    await _pause("CHAOS_STEP_MS", 0, 0.001)
    return n * 2


async def store(ctx: StepContext, n: int) -> dict[str, int]:
    record_attempt(ctx)
    await _pause("CHAOS_STEP_MS", 0, 0.001)
    return {"value": n}


pipeline = Workflow.pipeline("pipeline", [fetch, enrich, store])

long = Workflow("long")


@long.step(start=True)
async def think(ctx: StepContext, n: int) -> int:
    record_attempt(ctx)
    await _pause("CHAOS_LONG_SECONDS", 5, 1)
    return n


raises = Workflow("raises")


@raises.step(start=True, retries=2, backoff=0.05)
async def explode(ctx: StepContext, n: int) -> int:
    record_attempt(ctx)
    raise RuntimeError(f"poison {n} raised")


exits = Workflow("exits")


@exits.step(start=True)
async def crash(ctx: StepContext, n: int) -> int:
    record_attempt(ctx)
    os._exit(EXIT_CODE)


hangs = Workflow("hangs")


@hangs.step(start=True, retries=1, backoff=0.05, timeout=HANG_TIMEOUT)
async def hang(ctx: StepContext, n: int) -> int:
    record_attempt(ctx)
    await asyncio.Event().wait()  # never set
    return n


blocks = Workflow("blocks")


@blocks.step(start=True, retries=1, backoff=0.05, timeout=HANG_TIMEOUT)
def block(ctx: StepContext, n: int) -> int:
    """A sync step: it runs in a thread that its timeout cannot stop."""
    record_attempt(ctx)
    time.sleep(BLOCK_SECONDS)
    return n


app = App(workflows=[pipeline, long, raises, exits, hangs, blocks])
