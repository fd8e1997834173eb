"""Render a preview of the Grafana dashboard (deploy/grafana/conveyor.json) from real data.

    scripts/render-dashboard                       # docs/img/dashboard.png, 60 s of load
    scripts/render-dashboard --seconds 60 --out /tmp/dashboard.png

It starts, as child processes on free loopback ports: a redis-server, a worker with
``--metrics-port`` (two processes), the HTTP API, the queue exporter (``conveyor exporter``)
and a ``prometheus`` server that scrapes them every second and evaluates
deploy/prometheus/rules.yml (data and logs in a temporary directory). It pushes workflows of
the app below through the API for ``--seconds`` (a ramp, a burst that builds a backlog,
failures and retries, cache hits), then asks Prometheus for every panel's queries over the run
and draws the dashboard's grid with matplotlib.

Needs `prometheus` on PATH and matplotlib (the `bench` extra). Everything it starts is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from conveyor import App, StepContext, Workflow, goto
from conveyor.embedded import EmbeddedRedis, find_redis_servers, free_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "conveyor.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
APP = "bench.render_dashboard:app"

# -- the app the load runs: fetch -> score (queue llm, slow, fails sometimes) -> lookup (cached)


enrich = Workflow("enrich")


@enrich.step(start=True)
async def fetch(ctx: StepContext, n: int) -> Any:
    await asyncio.sleep(random.uniform(0.002, 0.02))
    return goto(score, n)


@enrich.step(queue="llm", retries=2, backoff=0.2)
async def score(ctx: StepContext, n: int) -> Any:
    await asyncio.sleep(random.uniform(0.05, 0.3))
    if n % 50 == 0 or random.random() < 0.05:  # every 50th always fails: it runs out of retries
        raise RuntimeError("model timed out")
    return goto(lookup, n % 40)


@enrich.step(cache_ttl=600)
async def lookup(ctx: StepContext, key: int) -> Any:
    await asyncio.sleep(0.01)
    return {"key": key}


async def outline(ctx: StepContext, topic: str) -> Any:
    await asyncio.sleep(random.uniform(0.01, 0.05))
    return topic


def publish(ctx: StepContext, text: str) -> Any:
    time.sleep(random.uniform(0.001, 0.01))
    return {"url": f"/reports/{text}"}


report = Workflow.pipeline("report", [outline, publish])
app = App(workflows=[enrich, report])


# -- processes -------------------------------------------------------------------------------


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"{log.stem} did not serve {url}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[dict[str, str]]:
    """Redis, worker, API, exporter and Prometheus (logs in ``workdir``); yields their URLs."""
    processes: list[subprocess.Popen[bytes]] = []
    ports = {name: free_port() for name in ("worker", "api", "exporter", "prometheus")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

    def start(name: str, args: list[str], env: dict[str, str], ready: str) -> None:
        log = workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=out)
        processes.append(process)
        wait_http(urls[name] + ready, process, log)

    with EmbeddedRedis(binary=find_redis_servers()[0], appendonly=False) as redis:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "REDIS_URL": redis.url,
            "CONVEYOR_NAMESPACE": "dashboard",
            "CONVEYOR_PARTITIONS": "8",
        }
        conveyor = [sys.executable, "-m", "conveyor"]
        quiet = ["--log-level", "WARNING"]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": f"conveyor-{name}",
                 "static_configs": [{"targets": [f"127.0.0.1:{ports[name]}"]}]}
                for name in ("worker", "api", "exporter")
            ],
        }  # fmt: skip
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        try:
            # 2 processes of 8 steps at once: the load's burst outruns them (a backlog)
            start("worker", [*conveyor, "worker", APP, "--processes", "2", "--concurrency", "8",
                             "--metrics-port", str(ports["worker"]), *quiet],
                  env, "/metrics")  # fmt: skip
            start("api", [*conveyor, "api", APP, "--port", str(ports["api"]), "--no-auth", *quiet],
                  env, "/healthz")  # fmt: skip
            start("exporter", [*conveyor, "exporter", "--port", str(ports["exporter"])], env,
                  "/metrics")  # fmt: skip
            start("prometheus", [
                "prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn",
            ], env, "/-/ready")  # fmt: skip
            yield urls
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in reversed(processes):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# -- load ------------------------------------------------------------------------------------


def rate_at(t: float, seconds: float) -> float:
    """Workflows per second: a ramp, a burst past the llm queue's capacity, a calmer tail."""
    if 0.45 * seconds <= t < 0.6 * seconds:
        return 220.0
    return 25 + 35 * math.sin(math.pi * min(t / seconds, 1.0))


async def push_load(api: str, seconds: float) -> int:
    sent = 0
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        start = time.monotonic()
        pending: set[asyncio.Task[Any]] = set()
        while (now := time.monotonic() - start) < seconds:
            sent += 1
            if sent % 3:
                request = http.post("/v1/workflows/enrich", json=sent)
            else:
                request = http.post("/v1/workflows/report", json=f"r{sent}")
            pending.add(asyncio.ensure_future(request))
            if sent % 40 == 0:  # a few bad requests, for the HTTP error panel
                pending.add(asyncio.ensure_future(http.post("/v1/workflows/nope", json=1)))
                pending.add(asyncio.ensure_future(http.get("/v1/workflows/unknown-id-0")))
            pending = {task for task in pending if not task.done()}
            await asyncio.sleep(1 / rate_at(now, seconds))
        await asyncio.gather(*pending, return_exceptions=True)
    return sent


# -- queries ---------------------------------------------------------------------------------


def substitute(expr: str, rate_interval: str) -> str:
    """Grafana's variables as "All" sends them, its intervals as a duration."""

    def value(match: re.Match[str]) -> str:
        name = (match.group(1) or match.group(2)).split(":")[0]
        return rate_interval if name in ("__rate_interval", "__interval", "__range") else ".*"

    return re.sub(r"\$\{([^}]+)\}|\$(\w+)", value, expr)


def query_range(prom: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{prom}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": 1},
        timeout=30,
    )
    body = response.json()
    if body.get("status") != "success":
        raise SystemExit(f"Prometheus refused {expr!r}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


# -- drawing ---------------------------------------------------------------------------------

BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "blue": "#5794f2"}
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#705da0", "#37872d", "#fade2a"]  # fmt: skip


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        if value and abs(value) < 1:
            return f"{value * 1000:.0f} ms"
        return f"{value:.1f} s"
    suffix = {"ops": " /s", "reqps": " req/s"}.get(unit, "")
    for size, letter in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{letter}{suffix}"
    return f"{value:.3g}{suffix}" if value % 1 else f"{value:.0f}{suffix}"


def threshold_color(value: float, defaults: dict[str, Any]) -> str:
    color = "green"
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    for mapping in defaults.get("mappings", []):
        hit = mapping.get("options", {}).get(f"{value:g}")
        if hit:
            color = hit.get("color", color)
    return COLORS.get(color, color)


def draw(panels: list[dict[str, Any]], data: dict[int, list[tuple[str, list[Any]]]],
         start: float, out: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter

    width_in, unit_h_in = 20.0, 0.33  # 24 columns; one grid row ~ 30 px of 1920
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height_in = rows * unit_h_in + 0.6
    fig = plt.figure(figsize=(width_in, height_in), facecolor=BACKGROUND)
    fig.text(0.005, 1 - 0.3 / height_in, "Conveyor", color=TEXT, fontsize=15, va="center",
             weight="bold")  # fmt: skip
    top = 0.6 / height_in

    def outer(g: dict[str, int]) -> tuple[float, float, float, float]:
        """A panel's box in figure fractions: left, bottom, width, height."""
        gap_x, gap_y = 0.002, 0.05 / height_in
        left = g["x"] / 24 + gap_x
        bottom = 1 - top - (g["y"] + g["h"]) * unit_h_in / height_in + gap_y
        return left, bottom, g["w"] / 24 - 2 * gap_x, g["h"] * unit_h_in / height_in - 2 * gap_y

    for p in panels:
        g = p["gridPos"]
        left, bottom, w, h = outer(g)
        if p["type"] == "row":
            fig.text(left, bottom + h / 2, p["title"], color=TEXT, fontsize=12, weight="bold",
                     va="center")  # fmt: skip
            continue
        background = Rectangle((left, bottom), w, h, transform=fig.transFigure, zorder=-1,
                               facecolor=PANEL, edgecolor=GRID, linewidth=0.6)  # fmt: skip
        fig.patches.append(background)
        title_y = bottom + h - 0.17 / height_in
        fig.text(left + 0.004, title_y, p["title"], color=TEXT, fontsize=9, va="center")
        defaults = p["fieldConfig"]["defaults"]
        unit = defaults.get("unit", "short")
        series = data.get(p["id"], [])
        if p["type"] == "stat":
            values = [v for _, points in series for _, v in points[-1:]]
            value = values[0] if values else float("nan")
            text = fmt(value, unit)
            for mapping in defaults.get("mappings", []):
                hit = mapping.get("options", {}).get(f"{value:g}") if values else None
                text = hit["text"] if hit else text
            fig.text(left + w / 2, bottom + h * 0.4, text, color=threshold_color(value, defaults),
                     fontsize=22, ha="center", va="center", weight="bold")  # fmt: skip
            continue
        inner_left, inner_right = 0.034, 0.006  # room for the y tick labels
        ax = fig.add_axes((
            left + inner_left, bottom + 0.24 / height_in,
            w - inner_left - inner_right, h - 0.58 / height_in,
        ))  # fmt: skip
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(colors=TEXT, labelsize=6.5, length=0)
        ax.grid(color=GRID, linewidth=0.5)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, u=unit: fmt(v, u)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}s"))
        shown = series[:10]
        colors = [PALETTE[i % len(PALETTE)] for i in range(len(shown))]
        stacked = defaults["custom"]["stacking"]["mode"] == "normal"
        times = {tuple(t for t, _ in points) for _, points in shown}
        if stacked and len(times) == 1:
            xs = [t - start for t in next(iter(times))]
            ys = [[v for _, v in points] for _, points in shown]
            labels = [name for name, _ in shown]
            ax.stackplot(xs, ys, labels=labels, colors=colors, alpha=0.35, edgecolor=colors)
        else:
            for color, (name, points) in zip(colors, shown, strict=True):
                xs = [t - start for t, _ in points]
                ax.plot(xs, [v for _, v in points], color=color, linewidth=1.1, label=name)
        if defaults.get("min") == 0:
            ax.set_ylim(bottom=0)
        if "max" in defaults:
            ax.set_ylim(top=defaults["max"] * 1.05)
        # threshold lines, as Grafana draws them: they do not stretch the axis
        limits = ax.get_ylim()
        if defaults["custom"]["thresholdsStyle"]["mode"] == "line":
            for step in defaults.get("thresholds", {}).get("steps", []):
                if step["value"] is not None:
                    ax.axhline(step["value"], color=COLORS["red"], linestyle="--", linewidth=0.8)
        ax.set_ylim(limits)
        if not series:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "No data", color=TEXT, alpha=0.6, ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
        else:
            ax.legend(loc="upper left", fontsize=6, frameon=False, labelcolor=TEXT,
                      ncol=2 if len(series) > 4 else 1)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=96, facecolor=BACKGROUND)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("needs matplotlib, which Conveyor does not depend on: "
              ".venv/bin/pip install matplotlib", file=sys.stderr)  # fmt: skip
        return 2
    if shutil.which("prometheus") is None:
        print(
            "needs the `prometheus` server binary on PATH (apt install prometheus)", file=sys.stderr
        )
        return 2

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    tmp = tempfile.TemporaryDirectory(prefix="conveyor-dashboard-")
    with tmp, stack(Path(tmp.name)) as urls:
        start = time.time()
        print(f"pushing workflows through the API for {args.seconds:.0f} s", file=sys.stderr)
        sent = asyncio.run(push_load(urls["api"], args.seconds))
        time.sleep(5)  # let the last scrapes and rule evaluations land
        end = time.time()
        data: dict[int, list[tuple[str, list[Any]]]] = {}
        empty: list[str] = []
        for p in panels:
            if p["type"] == "row":
                continue
            data[p["id"]] = []
            for target in p["targets"]:
                expr = substitute(target["expr"], "10s")
                for result in query_range(urls["prometheus"], expr, start, end):
                    points = [(float(t), float(v)) for t, v in result["values"]]
                    name = legend(target.get("legendFormat", ""), result["metric"])
                    data[p["id"]].append((name or expr, points))
            if not data[p["id"]]:
                empty.append(p["title"])
        draw(panels, data, start, args.out)
    print(f"{sent} workflows started; wrote {args.out}", file=sys.stderr)
    if empty:
        print(f"panels without data in this run: {', '.join(empty)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
