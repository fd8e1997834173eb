"""Real processes and the faults done to them, for the fault-injection scenarios.

- :class:`RedisProcess`: one ``redis-server`` we own entirely: start (also on a port no
  server listened on yet), SIGKILL, graceful stop, SIGSTOP/SIGCONT, a slow load (LOADING).
- :class:`Fleet`: ``conveyor worker`` subprocesses: spawn, wait until they serve, SIGKILL,
  SIGTERM, SIGSTOP; it tells our own signals apart from exits nobody asked for.
- :class:`ApiProcess`: one ``conveyor api`` subprocess.
- :func:`sized`, :class:`Report`: the size of a run (``CONVEYOR_CHAOS_SIZE=ci|full``) and
  the JSON report each scenario writes (``CONVEYOR_CHAOS_REPORT``).

Everything takes a Redis URL, never a server object, so the same fleet and API run against
Sentinel or Cluster URLs once the connection factory takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from conveyor.embedded import find_redis_server, free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.chaos:app"
T = TypeVar("T")

SIZE = os.environ.get("CONVEYOR_CHAOS_SIZE", "ci")
if SIZE not in ("ci", "full"):
    raise RuntimeError(f"CONVEYOR_CHAOS_SIZE must be 'ci' or 'full', not {SIZE!r}")


def die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the test process dies (Linux), so a killed
    pytest leaves no worker, API or Redis behind."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def sized(ci: T, full: T) -> T:
    """The CI value, or the full-size one under CONVEYOR_CHAOS_SIZE=full."""
    return full if SIZE == "full" else ci


def now() -> float:
    return time.time()


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, every: float = 0.05
) -> float:
    """Poll ``predicate`` until it holds; returns the seconds it took, fails after ``timeout``."""
    began = time.monotonic()
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(every)


# -- Redis ----------------------------------------------------------------------------------


class RedisProcess:
    """A ``redis-server`` on a fixed loopback port, started and stopped on demand.

    Unlike EmbeddedRedis it can be created before anything listens on its port (clients
    that start first see a closed port), started without waiting for the end of loading,
    and frozen with SIGSTOP.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        appendonly: bool = False,
        fsync: str = "everysec",
        maxmemory: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.fsync = fsync
        self.maxmemory = maxmemory
        self.extra = list(extra or [])
        self.process: subprocess.Popen[bytes] | None = None
        self.up_at: float | None = None  # when it last answered PING

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "redis-server is not running"
        return self.process.pid

    def args(self, extra: list[str]) -> list[str]:
        args = [
            str(find_redis_server()),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.fsync, "--maxmemory-policy", "noeviction",
            "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        return args + self.extra + extra

    def launch(self, *extra: str) -> None:
        """Start the server and return at once (it may still be loading its data)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(
            self.args(list(extra)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip

    def answers(self) -> bool:
        """Whether it answers PING with PONG now (not while loading)."""
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    async def start(self, *extra: str, timeout: float = 60) -> float:
        """Start and wait until it answers; returns the seconds that took (loading included)."""
        self.launch(*extra)
        began = time.monotonic()
        while not self.answers():
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"redis-server exited at start:\n{log}")
            if time.monotonic() - began > timeout:
                raise AssertionError(f"redis-server did not answer within {timeout:g}s")
            await asyncio.sleep(0.01)
        self.up_at = now()
        return time.monotonic() - began

    def kill(self) -> float:
        """SIGKILL: no AOF flush beyond what fsync policy already wrote. Returns when."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        return now()

    def stop(self) -> None:
        """SIGTERM: Redis writes and fsyncs its AOF, then exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen server cannot exit
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def pause(self) -> float:
        os.kill(self.pid, signal.SIGSTOP)
        return now()

    def resume(self) -> float:
        os.kill(self.pid, signal.SIGCONT)
        return now()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()


# -- workers --------------------------------------------------------------------------------

_SERVING = re.compile(r"worker (\S+) serving queues")
_HANDED_BACK = re.compile(r"handed back (\d+) unfinished entries")


@dataclass
class WorkerProcess:
    """One ``conveyor worker`` subprocess and what happened to it."""

    popen: subprocess.Popen[bytes]
    log: Path
    started_at: float
    signalled: list[tuple[str, float]] = field(default_factory=list)  # (signal, when)
    exited_at: float | None = None
    names: list[str] = field(default_factory=list)  # consumer names (several: --processes)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def serving(self, count: int = 1) -> bool:
        """Whether it logged ``count`` 'serving' lines (one per worker process)."""
        self.names = _SERVING.findall(self.output())
        return len(self.names) >= count

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None and self.exited_at is None:
            self.exited_at = now()
        return code

    @property
    def alive(self) -> bool:
        return self.poll() is None

    def handed_back(self) -> int:
        return sum(int(n) for n in _HANDED_BACK.findall(self.output()))


class Fleet:
    """``conveyor worker`` subprocesses sharing one environment (one namespace)."""

    def __init__(self, env: dict[str, str], logs: Path, *args: str, app: str = APP) -> None:
        self.env = env
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.app = app
        self.processes: list[WorkerProcess] = []

    def spawn(self, *args: str) -> WorkerProcess:
        log = self.logs / f"worker-{len(self.processes)}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", self.app, *self.args, *args],
                env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        process = WorkerProcess(popen, log, now())
        self.processes.append(process)
        return process

    async def ready(self, processes: list[WorkerProcess], timeout: float = 60) -> None:
        def all_serving() -> bool:
            for p in processes:
                if not p.alive:
                    raise AssertionError(f"worker {p.pid} exited at start:\n{p.output()[-3000:]}")
            return all(p.serving() for p in processes)

        await wait_until(all_serving, timeout, "workers to serve")

    async def start(self, count: int, *args: str, timeout: float = 60) -> list[WorkerProcess]:
        started = [self.spawn(*args) for _ in range(count)]
        await self.ready(started, timeout)
        return started

    def live(self) -> list[WorkerProcess]:
        return [p for p in self.processes if p.alive]

    def serving(self) -> list[WorkerProcess]:
        return [p for p in self.live() if p.serving() and not p.signalled]

    def signal(self, process: WorkerProcess, sig: signal.Signals) -> float:
        at = now()
        process.signalled.append((sig.name, at))
        os.kill(process.pid, sig)
        return at

    async def keep(self, stop: asyncio.Event, delay: float = 1.0) -> int:
        """Replace every process that exits on its own (as a supervisor or an orchestrator
        would), ``delay`` seconds later, until ``stop`` is set. Returns how many it replaced."""
        replaced: set[int] = set()
        while not stop.is_set():
            for p in list(self.processes):
                if p.pid in replaced or p.alive or p.signalled:
                    continue
                replaced.add(p.pid)
                await asyncio.sleep(delay)
                self.spawn()
            await asyncio.sleep(0.05)
        return len(replaced)

    async def exited(self, process: WorkerProcess, timeout: float) -> float:
        """Wait until ``process`` exits (polled every 20 ms); returns when it did."""
        await wait_until(lambda: not process.alive, timeout, f"worker {process.pid} to exit", 0.02)
        assert process.exited_at is not None
        return process.exited_at

    def unexpected_exits(self, allowed_codes: tuple[int, ...] = ()) -> list[WorkerProcess]:
        """Processes that exited although we sent them no SIGKILL or SIGTERM, except with
        one of ``allowed_codes``."""
        out = []
        for p in self.processes:
            code = p.poll()
            if code is None or code in allowed_codes:
                continue
            if not any(name in ("SIGKILL", "SIGTERM", "SIGINT") for name, _ in p.signalled):
                out.append(p)
        return out

    async def stop(self, timeout: float = 60) -> dict[int, int | None]:
        """SIGTERM every live process and wait for them. Returns pid -> exit code of those
        that were serving (one still starting up may die of the signal: it held nothing)."""
        live = self.live()
        serving = {p.pid for p in live if p.serving()}
        for p in live:
            with _gone():
                p.popen.send_signal(signal.SIGCONT)
                self.signal(p, signal.SIGTERM)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: not any(p.alive for p in live), timeout, "workers to stop")
        for p in live:
            if p.alive:
                p.popen.kill()
                p.popen.wait()
        return {p.pid: p.poll() for p in live if p.pid in serving}

    def close(self) -> None:
        for p in self.processes:
            if p.popen.poll() is None:
                with _gone():
                    p.popen.send_signal(signal.SIGCONT)
                p.popen.kill()
                p.popen.wait()


class _gone:
    """Ignore a process that is already gone (ProcessLookupError)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


# -- the HTTP API ---------------------------------------------------------------------------


class ApiProcess:
    """One ``conveyor api`` subprocess (without keys) on a free port."""

    def __init__(self, env: dict[str, str], logs: Path, *args: str, app: str = APP) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logs / f"api-{self.port}.log"
        logs.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "api", app, "--port", str(self.port),
                 "--no-auth", "--log-level", "WARNING", *args],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, timeout: float = 60) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=1) as http:

            async def up() -> bool:
                if self.popen.poll() is not None:
                    raise AssertionError(f"the API exited at start:\n{self.output()[-3000:]}")
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_until(up, timeout, "the API to answer")

    async def slower_than(self, seconds: float) -> tuple[int, float]:
        """From the API's own metrics (so the test machine's load plays no part): how many
        requests took longer than the smallest histogram bound >= ``seconds``, and that
        bound."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            text = (await http.get("/metrics")).text
        counts: dict[float, float] = {}
        total = 0.0
        for line in text.splitlines():
            if not line.startswith("conveyor_http_request_duration_seconds_"):
                continue
            name, _, value = line.rpartition(" ")
            if name.startswith("conveyor_http_request_duration_seconds_count"):
                total += float(value)
            elif 'le="' in name and "+Inf" not in name:
                bound = float(name.split('le="')[1].split('"')[0])
                counts[bound] = counts.get(bound, 0.0) + float(value)
        bound = min((b for b in counts if b >= seconds), default=float("inf"))
        within = counts.get(bound, total)
        return int(total - within), bound

    def close(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


# -- environment and report -----------------------------------------------------------------


def worker_env(
    redis_url: str, namespace: str, attempts: Path, extra: dict[str, str], partitions: int = 4
) -> dict[str, str]:
    """The environment of the scenario's subprocesses (workers and API)."""
    attempts.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_PARTITIONS": str(partitions),
        "CONVEYOR_VISIBILITY_TIMEOUT": "2",
        "CONVEYOR_MAX_DELIVERIES": "3",
        "CONVEYOR_CHAOS_LOG": str(attempts),
        "CONVEYOR_LOG_FORMAT": "console",
        "CONVEYOR_EVENT_LOOP": "auto",
        **extra,
    }


@dataclass
class Requirement:
    figure: str
    value: Any
    bound: str
    ok: bool
    known: str | None = None  # a known engine bug that keeps it from being met


class Report:
    """The figures of one scenario, written as JSON to ``<directory>/<scenario>.json``
    (CONVEYOR_CHAOS_REPORT, else a folder of the pytest temporary directory)."""

    def __init__(self, scenario: str, directory: Path) -> None:
        self.scenario = scenario
        self.directory = directory
        self.figures: dict[str, Any] = {}
        self.requirements: list[Requirement] = []
        self.written = False

    def add(self, **figures: Any) -> None:
        self.figures.update(figures)

    def require(
        self, figure: str, value: Any, bound: str, ok: bool, *, known: str | None = None
    ) -> None:
        """A figure the scenario must reach (checked by :meth:`assert_met`). ``known`` names
        a known engine bug that keeps it from being met: then it is reported, not asserted,
        until the bug is fixed (and the flag removed)."""
        self.requirements.append(Requirement(figure, value, bound, bool(ok), known))

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.scenario}.json"
        body = {
            "scenario": self.scenario,
            "size": SIZE,
            "figures": self.figures,
            "requirements": [r.__dict__ for r in self.requirements],
            "passed": all(r.ok or r.known for r in self.requirements),
        }
        path.write_text(json.dumps(body, indent=2, default=str))
        self.written = True
        return path

    def assert_met(self) -> None:
        """Write the report, then fail on every requirement not met."""
        path = self.write()
        failed = [r for r in self.requirements if not r.ok and not r.known]
        assert not failed, f"{self.scenario}: requirements not met (report {path}):\n" + "\n".join(
            f"  {r.figure} = {r.value!r}, required {r.bound}" for r in failed
        )


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Scene:
    """What a scenario needs around it: its folders, namespace and report."""

    tmp: Path
    namespace: str
    report: Report

    @property
    def attempts(self) -> Path:
        return self.tmp / "attempts"

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"


def iter_chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
