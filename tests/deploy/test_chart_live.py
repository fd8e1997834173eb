"""The Helm chart (deploy/helm/conveyor) against real things. What the objects name is real:
probe and ingress paths are routes of the API, of a live worker and of a live exporter; the
autoscaling metric is one a live exporter serves for the queue it selects. The autoscaling
behavior is conveyor.scaling.hpa.DEFAULT_BEHAVIOR, and the target per worker defaults as the
local autoscaler computes it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from typing import NamedTuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import conveyor
import conveyor.demo
from conveyor import App, AsyncClient
from conveyor.api.app import create_app
from conveyor.api.settings import ApiSettings
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.scaling.hpa import DEFAULT_BEHAVIOR, ScalingRules, default_target
from tests.conftest import drain
from tests.processes import ROOT, spawn, stop, wait_http

from . import metric_names
from .chart_cases import CASES, SUPERVISOR_KILL_AFTER, Case, each_case, objects_of, values_of
from .helm import NAMESPACE, Obj, arg, chart, environment, find, pod, render

# -- the API's paths -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_routes() -> dict[str, set[str]]:
    """Path -> methods of the real API app (the demo's): every route it declares."""
    api = create_app(
        App(workflows=list(conveyor.demo.app.workflows.values())), ApiSettings(auth=False)
    )
    routes: dict[str, set[str]] = {}
    for path, operations in api.openapi()["paths"].items():
        routes.setdefault(path, set()).update(m.upper() for m in operations)
    for route in api.routes:  # the docs pages, outside the OpenAPI document
        if hasattr(route, "path") and getattr(route, "methods", None):
            routes.setdefault(route.path, set()).update(route.methods)
    return routes


def http_get_paths(container: Obj, handlers: tuple[str, ...]) -> set[str]:
    paths = set()
    for name in handlers:
        handler = container.get(name) or container.get("lifecycle", {}).get(name) or {}
        if "httpGet" in handler:
            paths.add(handler["httpGet"]["path"])
    return paths


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


@each_case
def test_dispatcher_probe_paths_are_api_routes(case: Case, api_routes: dict[str, set[str]]) -> None:
    container = pod(objects_of(case), "dispatcher").container
    paths = http_get_paths(container, PROBES)
    assert paths == {"/healthz", "/readyz"}
    for path in paths:
        assert "GET" in api_routes[path]
    assert "GET" in api_routes["/metrics"]  # what the ServiceMonitor scrapes


def ingress_matches(rule: Obj, path: str) -> bool:
    """Whether an Ingress path rule matches a request path (Exact, or Prefix by segments)."""
    if rule["pathType"] == "Exact":
        return path == rule["path"]
    prefix = [s for s in rule["path"].split("/") if s]
    return [s for s in path.split("/") if s][: len(prefix)] == prefix


def route_examples(routes: dict[str, set[str]]) -> list[str]:
    return [re.sub(r"\{[^}]+\}", "x", path) for path in routes]


def test_ingress_routes_the_api_and_only_the_api(api_routes: dict[str, set[str]]) -> None:
    objects = render("production")
    ingress = find(objects, "Ingress")
    values = values_of(CASES["production"])["ingress"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == values["host"]
    assert ingress["spec"]["tls"] == [
        {"hosts": [values["host"]], "secretName": values["tls"]["secretName"]}
    ]
    service = find(objects, "Service", "conveyor-dispatcher")
    examples = route_examples(api_routes)
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
        # every routed path reaches a real route
        assert any(ingress_matches(path, example) for example in examples), path
    # the reference's POST /start and the /v1 API are published; metrics and probes are not
    published = [e for e in examples if any(ingress_matches(p, e) for p in rule["http"]["paths"])]
    assert "/start" in published and "/v1/workflows/x" in published
    for private in ("/metrics", "/metrics/queues", "/healthz", "/readyz"):
        assert private not in published


# -- live processes: the exporter and a worker -----------------------------------------------


class Live(NamedTuple):
    exporter: str  # base URL
    metrics: str  # the exporter's /metrics text


def _process_env(
    objects: list[Obj], container: Obj, redis: EmbeddedRedis, namespace: str
) -> dict[str, str]:
    """The container's environment as rendered, pointed at the test's Redis and namespace."""
    secrets = {("conveyor-redis", "redis-password"): "", ("conveyor-api-keys", "api-keys"): ""}
    env = environment(objects, container, secrets)
    env.update(REDIS_URL=redis.url, CONVEYOR_NAMESPACE=namespace)
    del env["REDIS_PASSWORD"]  # the test's Redis has none
    return {**os.environ, "PYTHONPATH": str(ROOT), **env}


def _replace(args: list[str], option: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(option) + 1] = value
    return args


async def _register_and_run(redis: EmbeddedRedis, namespace: str, partitions: int) -> None:
    """The demo's workflows registered (as a worker does) and one run to its end."""
    app = App(
        workflows=list(conveyor.demo.app.workflows.values()),
        redis_url=redis.url,
        namespace=namespace,
        partitions=partitions,
    )
    async with AsyncClient(app=app) as client:
        workflow_id = await client.start("demo", "chart")
        await drain(app)
        assert (await client.result(workflow_id, timeout=10)) == {"message": "HELLO, CHART!!!"}


@pytest.fixture(scope="module")
def live(redis7: EmbeddedRedis) -> Iterator[Live]:
    """The exporter exactly as the chart runs it (its args and environment), but on a free
    loopback port, against a real Redis where the demo's queue exists."""
    objects = render(None)
    container = pod(objects, "exporter").container
    namespace = f"chart{os.getpid()}"
    env = _process_env(objects, container, redis7, namespace)
    asyncio.run(_register_and_run(redis7, namespace, int(env["CONVEYOR_PARTITIONS"])))
    port = str(free_port())
    args = _replace(_replace(container["args"], "--port", port), "--host", "127.0.0.1")
    process = spawn(args, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", process)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        yield Live(url, metrics)
    finally:
        stop(process, timeout=15)


def served(metrics: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets, from a /metrics text."""
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


@each_case
def test_exporter_probe_paths_answer_on_a_live_exporter(case: Case, live: Live) -> None:
    container = pod(objects_of(case), "exporter").container
    paths = http_get_paths(container, PROBES)
    assert paths == {"/healthz"}
    for path in [*paths, "/metrics"]:
        assert httpx.get(live.exporter + path, timeout=10).status_code == 200, path


def test_hpa_targets_the_reference_metric_served_by_the_exporter(live: Live) -> None:
    objects = render("production")
    hpa = find(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": pod(objects, "worker").name,
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 30)
    (metric,) = hpa["metrics"]
    assert metric["type"] == "External"
    external = metric["external"]
    # 80% of a pod's 1 process x 64 slots, as `conveyor worker --autoscale` defaults to
    assert external["target"] == {"type": "AverageValue", "averageValue": "51"}
    name = external["metric"]["name"]
    selector = external["metric"]["selector"]["matchLabels"]
    assert (name, selector) == ("conveyor_queue_backlog", {"queue": "default"})
    # a live exporter serves that series for the selected queue
    assert any(selector.items() <= labels.items() for labels in served(live.metrics)[name])


def test_keda_query_reads_a_metric_served_by_the_exporter(live: Live) -> None:
    objects = render("production", {"autoscaling": {"mode": "keda"}})
    spec = find(objects, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["name"] == pod(objects, "worker").name
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (3, 30)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert set(metadata) == {"serverAddress", "query", "threshold"}
    assert metadata["threshold"] == "51"
    assert re.fullmatch(r"https?://\S+", metadata["serverAddress"])
    query = metadata["query"]
    assert query == f'max(conveyor_queue_backlog{{namespace="{NAMESPACE}",queue="default"}})'
    samples = served(live.metrics)
    for name in metric_names(query):
        assert any(labels.get("queue") == "default" for labels in samples[name]), name


def _k8s_rules(rules: ScalingRules) -> Obj:
    return {
        "stabilizationWindowSeconds": int(rules.stabilization_window),
        "selectPolicy": rules.select,
        "policies": [
            {"type": p.type, "value": p.value, "periodSeconds": int(p.period)}
            for p in rules.policies
        ],
    }


def test_autoscaling_behavior_is_conveyors_default_behavior() -> None:
    """The HPA's and KEDA's behavior are conveyor.scaling.hpa.DEFAULT_BEHAVIOR, which
    `conveyor worker --autoscale` and `conveyor autoscale-sim` use."""
    expected = {
        "scaleUp": _k8s_rules(DEFAULT_BEHAVIOR.scale_up),
        "scaleDown": _k8s_rules(DEFAULT_BEHAVIOR.scale_down),
    }
    hpa = find(render("production"), "HorizontalPodAutoscaler")["spec"]
    assert hpa["behavior"] == expected
    keda = find(render("production", {"autoscaling": {"mode": "keda"}}), "ScaledObject")["spec"]
    assert keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == expected
    assert chart().values["autoscaling"]["behavior"] == expected


@pytest.fixture(scope="module")
def live_worker(redis7: EmbeddedRedis) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A worker exactly as the chart runs it, on a free loopback metrics port."""
    objects = render(None)
    container = pod(objects, "worker").container
    env = _process_env(objects, container, redis7, f"chartw{os.getpid()}")
    port = str(free_port())
    args = [*_replace(container["args"], "--metrics-port", port), "--metrics-host", "127.0.0.1"]
    process = spawn(args, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", process)
        yield url, process
    finally:
        stop(process, timeout=45)


def test_worker_probe_and_drain_paths_answer_on_a_live_worker(
    live_worker: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, process = live_worker
    container = pod(render(None), "worker").container
    assert http_get_paths(container, PROBES) == {"/healthz", "/readyz"}
    for path in [*http_get_paths(container, PROBES), "/metrics"]:
        assert httpx.get(url + path, timeout=10).status_code == 200, path
    # the preStop hook: answered at once, then the worker drains and exits
    (hook,) = http_get_paths(container, ("preStop",))
    assert httpx.get(url + hook, timeout=10).is_success  # what the kubelet needs of a hook
    drain_timeout = float(arg(container["args"], "--drain-timeout"))
    assert process.wait(timeout=drain_timeout + SUPERVISOR_KILL_AFTER) == 0


# -- the autoscaling target ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker", "target", "expected"),
    [
        ({"processes": 1, "concurrency": 64}, None, default_target(64)),
        ({"processes": 3, "concurrency": 10}, None, default_target(30)),
        ({"processes": 1, "concurrency": 1}, None, default_target(1)),
        ({"processes": 2, "concurrency": 64}, 40, 40),
    ],
)
def test_the_target_per_worker_defaults_as_the_local_autoscaler(
    worker: dict[str, int], target: int | None, expected: int
) -> None:
    """Unset, the target is 80% of a pod's slots, computed as conveyor.scaling.hpa does."""
    overrides = {"worker": worker, "autoscaling": {"targetPerWorker": target}}
    hpa = find(render("production", overrides), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"] == str(expected)
    keda = {**overrides, "autoscaling": {"targetPerWorker": target, "mode": "keda"}}
    trigger = find(render("production", keda), "ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["threshold"] == str(expected)
