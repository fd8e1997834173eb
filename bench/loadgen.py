"""A small HTTP/1.1 load generator: N keep-alive connections, each sending one request after
another for a fixed time (closed loop), in one process.

``bench/api.py`` uses wrk for request rates and latencies, and this only for the batch route
(few connections, large bodies, exact counts): unlike wrk it lets every request in flight
finish after the time is up, so the number of 2xx responses is exactly what the server
accepted. It is written in Python, so at high request rates it would be the bottleneck
itself: it reports its own CPU time (``cpu_s / seconds`` near 1 means it was the limit).

Examples::

  python bench/loadgen.py http://127.0.0.1:8080/v1/workflows/demo --body '"ada"'
  python bench/loadgen.py http://127.0.0.1:8080/v1/workflows/demo/batch \\
      --body-file batch.json --connections 4 --seconds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from array import array
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from common import percentile, process_cpu


def build_request(url: str, method: str, body: bytes, content_type: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: conveyor-loadgen\r\n"
        f"Accept: */*\r\n"
    )
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return host, port, (head + "\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool, int]:
    """One response: (status, keep the connection open?, body bytes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
    keep_alive = version == "HTTP/1.1"
    if "connection" in headers:
        keep_alive = headers["connection"] == "keep-alive" or (
            keep_alive and headers["connection"] != "close"
        )
    size = 0
    if "content-length" in headers:
        size = int(headers["content-length"])
        await reader.readexactly(size)
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            chunk = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(chunk + 2)
            size += chunk
            if chunk == 0:
                break
    else:  # body until the server closes the connection
        size = len(await reader.read())
        keep_alive = False
    return int(status), keep_alive, size


async def connection(
    host: str, port: int, request: bytes, deadline: float, grace: float, out: dict[str, Any]
) -> None:
    latencies: array[float] = out["latencies"]
    statuses: Counter[int] = out["statuses"]
    errors: Counter[str] = out["errors"]
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.perf_counter() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
            except OSError:
                errors["connect"] += 1
                await asyncio.sleep(0.01)
                continue
        assert reader is not None
        started = time.perf_counter()
        try:
            writer.write(request)
            # a request sent before the deadline is always waited for (up to ``grace``)
            status, keep_alive, size = await asyncio.wait_for(read_response(reader), grace)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            errors["read"] += 1
            keep_alive = False
        except TimeoutError:
            errors["timeout"] += 1
            keep_alive = False
        else:
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1
            out["bytes"] += size
            out["last"] = max(out["last"], time.perf_counter())
        if not keep_alive:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            writer = reader = None
    if writer is not None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def run_load(
    url: str, request: bytes, connections: int, seconds: float, grace: float
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    out: dict[str, Any] = {
        "latencies": array("d"),
        "statuses": Counter(),
        "errors": Counter(),
        "bytes": 0,
        "last": 0.0,
    }
    begin = time.perf_counter()
    deadline = begin + seconds
    await asyncio.gather(
        *(connection(host, port, request, deadline, grace, out) for _ in range(connections))
    )
    out["elapsed"] = max(out["last"], deadline) - begin
    return out


def run(
    url: str,
    body: bytes,
    *,
    method: str = "POST",
    content_type: str = "application/json",
    seconds: float = 10.0,
    connections: int = 64,
    grace: float = 30.0,
) -> dict[str, Any]:
    """Run the load and return its summary (latencies in ms)."""
    _, _, request = build_request(url, method, body, content_type)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    res = asyncio.run(run_load(url, request, connections, seconds, grace))
    latencies = sorted(res["latencies"])
    statuses: Counter[int] = res["statuses"]
    elapsed = res["elapsed"]
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    responses = sum(statuses.values())
    return {
        "tool": "bench/loadgen.py (asyncio)",
        "seconds": elapsed,
        "connections": connections,
        "responses": responses,
        "ok": ok,
        "non_2xx": responses - ok,
        "socket_errors": sum(res["errors"].values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(res["errors"]),
        "rps": responses / elapsed if elapsed else 0.0,
        "bytes": res["bytes"],
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1e3,
        "cpu_s": process_cpu(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body", default="", help="request body (text)")
    parser.add_argument("--body-file", help="request body from a file")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", "-c", type=int, default=64)
    parser.add_argument("--grace", type=float, default=30.0, help="timeout of one request (s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    else:
        body = args.body.encode()
    res = run(
        args.url,
        body,
        method=args.method,
        content_type=args.content_type,
        seconds=args.seconds,
        connections=args.connections,
        grace=args.grace,
    )
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
        return
    print(
        f"{res['responses']} responses in {res['seconds']:.2f} s = {res['rps']:,.0f}/s, "
        f"2xx {res['ok']}, non-2xx {res['non_2xx']}, socket errors {res['socket_errors']}; "
        f"latency p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms; "
        f"loadgen CPU {res['cpu_s']:.2f} s ({res['cpu_s'] / res['seconds']:.2f} cores)"
    )


if __name__ == "__main__":
    main()
