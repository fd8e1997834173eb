"""Real `conveyor` commands as child processes for tests: start one, wait until it serves
HTTP, stop it (SIGTERM, then SIGKILL) and return what it printed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m conveyor ARGS`` from the repository root, stdout and stderr together."""
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", *args], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """Stop ``process`` as an orchestrator would and return its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        out = process.communicate()[0]
    return out.decode(errors="replace")


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until ``url`` answers 200; fail with the process's output if it exits or
    never does (the process is then stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered:\n{stop(process)}")
        time.sleep(0.05)
