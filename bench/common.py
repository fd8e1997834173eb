"""What the benchmark scripts share: a private Redis and the JSON switch (``run_main``),
namespaces, percentiles, CPU and Redis-side meters, machine and source descriptions, and the
cProfile report. The scripts run as ``python bench/<name>.py``, so they import it as
``common``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from conveyor.embedded import EmbeddedRedis

WRK_MISSING = "wrk is not installed: apt-get install -y wrk"

# -- running --------------------------------------------------------------------------------


def run_main(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, str, str], Coroutine[Any, Any, dict[str, Any]]],
    expected: tuple[type[Exception], ...] = (),
    report: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run a benchmark's ``run(args, redis_url, version)`` against ``--redis-url`` or a
    private Redis (no AOF, no RDB), then print the result as JSON (``--json``) or through
    ``report``; ``expected`` errors become one line and exit code 1."""
    if getattr(args, "uvloop", False):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    server: EmbeddedRedis | None = None
    try:
        if getattr(args, "redis_url", None):
            url, version = args.redis_url, "external"
        else:
            server = EmbeddedRedis(appendonly=False).start()
            url, version = server.url, server.version
        result = asyncio.run(run(args, url, version))
    except expected as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.close()
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    elif report is not None:
        report(result)
    return 0


def new_namespace(label: str) -> str:
    return f"bench-{label}-{uuid.uuid4().hex[:8]}"


async def delete_namespace(redis: Any, namespace: str) -> None:
    """Remove every key of ``namespace`` (on a shared Redis; a private one just stops)."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{namespace}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await redis.unlink(*batch)
            batch.clear()
    if batch:
        await redis.unlink(*batch)


async def wait_for_count(stats: Any, expected: int, poll_s: float = 0.001) -> None:
    """Until a worker's counters add up to ``expected`` finished tasks."""
    # The worker offers no "n transitions done" event; polling its counters every ms costs
    # ~1,000 cheap wake-ups a second, negligible next to the work measured.
    while stats.completed + stats.duplicates + stats.errors + stats.dead < expected:  # noqa: ASYNC110
        await asyncio.sleep(poll_s)


def wrk_version() -> str | None:
    """The installed wrk's version line, or None."""
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split("[")[0].strip() or "wrk"


# -- measuring ------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values_ms: list[float]) -> dict[str, float]:
    """Count, mean, p50, p90, p99 and max of a list of milliseconds."""
    values = sorted(values_ms)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1],
    }


def process_cpu() -> float:
    """CPU seconds this process used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def command_stats(info: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(calls, usec) per command from INFO commandstats; commands run inside Lua scripts
    count too, and a script's EVALSHA usec includes them."""
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }


def command_diff(
    before: dict[str, tuple[int, int]],
    after: dict[str, tuple[int, int]],
    skip: tuple[str, ...] = ("info",),
) -> dict[str, dict[str, int]]:
    """Calls and usec of each command between two ``command_stats`` (the meter's own
    commands in ``skip`` left out)."""
    out = {}
    for name, (calls, usec) in after.items():
        calls0, usec0 = before.get(name, (0, 0))
        if calls - calls0 > 0 and name not in skip:
            out[name] = {"calls": calls - calls0, "usec": usec - usec0}
    return out


class RedisMeter:
    """Redis-side cost of an interval: INFO commandstats and used CPU, diffed (read only)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.before: tuple[dict[str, tuple[int, int]], float] = ({}, 0.0)

    async def _snapshot(self) -> tuple[dict[str, tuple[int, int]], float]:
        commands = command_stats(await self.redis.info("commandstats"))
        cpu = await self.redis.info("cpu")
        return commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    async def start(self) -> None:
        self.before = await self._snapshot()

    async def stop(self) -> dict[str, Any]:
        commands, cpu = await self._snapshot()
        return {"cpu_s": cpu - self.before[1], "commands": command_diff(self.before[0], commands)}


# -- describing the run ---------------------------------------------------------------------


def machine_info(redis_version: str) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "redis": redis_version,
        "loop": type(asyncio.get_event_loop_policy()).__module__,
        "loadavg_at_start": os.getloadavg(),
    }


def source_info() -> dict[str, Any]:
    """Which conveyor is measured: its path, and the commit when it is a git checkout."""
    import conveyor

    where = os.path.dirname(conveyor.__file__)
    info: dict[str, Any] = {"path": where, "commit": None}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "-C", where, "describe", "--always", "--dirty", "--exclude", "*"],
            capture_output=True,
            text=True,
            check=True,
        )
        info["commit"] = out.stdout.strip() or None
    return info


def describe(machine: dict[str, Any], source: dict[str, Any], extra: str = "") -> str:
    """Two lines saying what ran where."""
    loads = " ".join(f"{x:.2f}" for x in machine["loadavg_at_start"])
    return (
        f"python {machine['python']}, redis {machine['redis']}, {machine['cpus']} CPUs "
        f"({machine['cpu']}), loop {machine['loop']}{extra}, load average {loads}\n"
        f"conveyor from {source['path']} (commit {source['commit']})"
    )


# -- profiling ------------------------------------------------------------------------------

_GROUPS = (
    ("conveyor", "conveyor (engine Python)"),
    ("redis/", "redis-py (commands, pipelines, connections)"),
    ("asyncio/", "asyncio (event loop, tasks, futures)"),
    ("selectors", "asyncio (event loop, tasks, futures)"),
    ("_asyncio", "asyncio (event loop, tasks, futures)"),
    ("hiredis", "hiredis (C: reply parsing; packing if patched)"),
    ("orjson", "orjson (C)"),
    ("_socket", "socket and epoll syscalls"),
    ("select.epoll", "socket and epoll syscalls"),
    ("bench/", "benchmark harness (and experiment patches)"),
)


def _own_group(key: tuple[str, int, str]) -> str | None:
    filename, _, func = key
    where = f"{filename} {func}"
    for needle, name in _GROUPS:
        if needle in where:
            return name
    return None


def _group(key: tuple[str, int, str]) -> str:
    named = _own_group(key)
    if named is not None:
        return named
    if key[0] == "~":
        return "other builtins"
    return "other Python (" + os.path.basename(key[0]) + ")"


def _group_times(raw: dict[Any, Any]) -> dict[str, float]:
    """Own time per package. Generic builtins (isinstance, bytes.join, str.encode, len...)
    are charged to the package of their caller, so redis-py's packing loop counts as
    redis-py, not as "builtins"; C extensions with a group of their own keep it."""
    groups: dict[str, float] = defaultdict(float)
    for key, (_, _, tt, _, callers) in raw.items():
        if key[0] == "~" and _own_group(key) is None and callers:
            for caller, caller_stats in callers.items():
                groups[_group(caller)] += caller_stats[2]
        else:
            groups[_group(key)] += tt
    return groups


def profile_report(profiler: cProfile.Profile, top: int = 25) -> dict[str, Any]:
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    cumulative = buf.getvalue()
    buf.truncate(0)
    buf.seek(0)
    stats.sort_stats("tottime").print_stats(top)
    total = buf.getvalue()
    # group own time by package (from the unstripped stats)
    groups = _group_times(pstats.Stats(profiler).stats)  # type: ignore[attr-defined]
    all_time = sum(groups.values()) or 1.0
    by_group = sorted(groups.items(), key=lambda kv: -kv[1])
    return {
        "cumulative": cumulative,
        "tottime": total,
        "groups": [(name, t, t / all_time) for name, t in by_group],
    }


def print_profile(title: str, report: dict[str, Any], count: float, unit: str) -> None:
    """A ``profile_report``: own time by package (also per ``unit``), then the top
    functions by own and by cumulative time."""
    print(f"\n{title}")
    print("\nown time by package:")
    per_unit = 1e6 / count
    for name, t, share in report["groups"]:
        if share >= 0.005:
            print(f"  {name:<48} {t:>7.3f}s {share:>6.1%}  {t * per_unit:>6.1f} us/{unit}")
    print("\ntop functions by own (total) time:")
    print(report["tottime"])
    print("top functions by cumulative time:")
    print(report["cumulative"])
