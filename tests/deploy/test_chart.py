"""The Helm chart (deploy/helm/conveyor), rendered and linted by Helm's own engine, offline:
for the default values, values-dev.yaml, values-production.yaml and production with KEDA.

Every built-in object validates against Kubernetes 1.30's OpenAPI schema; the Prometheus
Operator and KEDA objects are checked for what they must hold (and the rules with promtool).
Policies hold over every pod (restricted Pod Security Standard, requests and limits, probes,
pinned images, a worker that outlives its drain). What the objects name is real: probe and
ingress paths are routes of the API, of a live worker and of a live exporter; the autoscaling
metric is one a live exporter serves for the queue it selects; NetworkPolicy and monitor
selectors select exactly the pods they are about. Wrong values are refused by the schema."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import helm_python
import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import conveyor
import conveyor.demo
from conveyor import App, AsyncClient
from conveyor.api.app import create_app
from conveyor.api.settings import ApiSettings
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.scaling.hpa import DEFAULT_BEHAVIOR, ScalingRules, default_target
from conveyor.workflow.definition import _NAME as QUEUE_NAME
from tests.conftest import drain
from tests.processes import ROOT, spawn, stop, wait_http

from . import PROMTOOL, RULES, metric_names, promtool
from .helm import (
    CHART,
    NAMESPACE,
    RELEASE,
    Obj,
    Pod,
    arg,
    by_kind,
    chart,
    container_port,
    environment,
    expand,
    find,
    lint,
    manifests,
    pod,
    pod_templates,
    render,
    selects,
    user_values,
)

helm_python.disable_logging()


class Case(NamedTuple):
    profile: str | None
    overrides: dict[str, Any] | None = None


CASES = {
    "default": Case(None),
    "dev": Case("dev"),
    "production": Case("production"),
    "production-keda": Case("production", {"autoscaling": {"mode": "keda"}}),
}
each_case = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))

# what each case renders, by kind and name (release "conveyor")
_COMMON = {
    ("ConfigMap", "conveyor-config"),
    ("ServiceAccount", "conveyor"),
    ("Deployment", "conveyor-dispatcher"),
    ("Service", "conveyor-dispatcher"),
    ("PodDisruptionBudget", "conveyor-dispatcher"),
    ("Deployment", "conveyor-worker"),
    ("PodDisruptionBudget", "conveyor-worker"),
    ("Deployment", "conveyor-exporter"),
    ("Service", "conveyor-exporter"),
    ("NetworkPolicy", "conveyor-dispatcher"),
    ("NetworkPolicy", "conveyor-worker"),
    ("NetworkPolicy", "conveyor-exporter"),
}
_PRODUCTION = _COMMON | {
    ("Ingress", "conveyor-dispatcher"),
    ("NetworkPolicy", "conveyor-external-redis"),
    ("ServiceMonitor", "conveyor"),
    ("PodMonitor", "conveyor-worker"),
    ("PrometheusRule", "conveyor"),
}
EXPECTED_OBJECTS = {
    "default": _COMMON,
    "dev": _COMMON
    | {
        ("StatefulSet", "conveyor-redis"),
        ("Service", "conveyor-redis"),
        ("NetworkPolicy", "conveyor-redis"),
    },
    "production": _PRODUCTION | {("HorizontalPodAutoscaler", "conveyor-worker")},
    "production-keda": _PRODUCTION | {("ScaledObject", "conveyor-worker")},
}

# custom resources: not in Kubernetes' OpenAPI schema, checked here by what they must hold
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}
SELECTOR_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}
CONVEYOR_COMPONENTS = {"dispatcher", "worker", "exporter"}
# the volume types the restricted Pod Security Standard allows (no hostPath)
RESTRICTED_VOLUMES = {"emptyDir", "configMap", "secret", "projected", "persistentVolumeClaim",
                      "downwardAPI", "ephemeral", "csi"}  # fmt: skip
# the supervisor kills a worker process this long after the drain timeout
SUPERVISOR_KILL_AFTER = 10
DEMO = "conveyor.demo:app"


def objects_of(case: Case) -> list[Obj]:
    return render(case.profile, case.overrides)


def case_name(case: Case) -> str:
    return next(name for name, c in CASES.items() if c == case)


def values_of(case: Case) -> Obj:
    """The values the case's release runs with: the chart's defaults, the profile, the
    overrides (Helm's own merge)."""
    return chart().merge_values(user_values(case.profile, case.overrides))


def conveyor_pods(objects: list[Obj]) -> list[Pod]:
    return [p for p in pod_templates(objects) if p.component in CONVEYOR_COMPONENTS]


def args_of(objects: list[Obj], component: str) -> list[str]:
    return list(pod(objects, component).container["args"])


# -- Helm's checks ---------------------------------------------------------------------------


@each_case
def test_lint_strict_finds_nothing(case: Case) -> None:
    report = lint(case.profile, case.overrides)
    assert report["messages"] == []
    assert report["errors"] == []
    assert report["total_charts_linted"] == 1


@each_case
def test_the_profile_passes_the_schema(case: Case) -> None:
    chart().validate_schema(user_values(case.profile, case.overrides))


@each_case
def test_renders_the_expected_objects(case: Case) -> None:
    objects = objects_of(case)
    rendered = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(rendered) == len(set(rendered)), rendered
    assert set(rendered) == EXPECTED_OBJECTS[case_name(case)]
    # nothing holds a secret value: Secrets are only referenced
    assert by_kind(objects, "Secret") == []


def test_chart_version_and_app_version() -> None:
    metadata = chart().metadata
    assert metadata["appVersion"] == conveyor.__version__
    assert metadata["apiVersion"] == "v2"
    tag = pod(render(None), "worker").container["image"].rsplit(":", 1)[1]
    assert tag == conveyor.__version__


# -- Kubernetes' schema ----------------------------------------------------------------------


@each_case
def test_builtin_objects_validate_against_kubernetes_1_30(case: Case) -> None:
    custom = set()
    for obj in objects_of(case):
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            custom.add(obj["kind"])
            continue
        # raises ValidationError (or SchemaNotFoundError for a kind 1.30 does not have)
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    expected = {kind for kind, _ in EXPECTED_OBJECTS[case_name(case)]} & {k for _, k in CRDS}
    assert custom == expected


# what a custom resource's spec must hold (the CRDs' required fields, and what makes it do
# anything at all)
CRD_REQUIRED = {
    "ServiceMonitor": {"selector", "endpoints"},
    "PodMonitor": {"selector", "podMetricsEndpoints"},
    "PrometheusRule": {"groups"},
    "ScaledObject": {"scaleTargetRef", "triggers"},
}


@each_case
def test_custom_resources_hold_their_required_fields(case: Case) -> None:
    for obj in objects_of(case):
        if (obj["apiVersion"], obj["kind"]) not in CRDS:
            continue
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        spec = obj["spec"]
        for field in CRD_REQUIRED[obj["kind"]]:
            assert spec[field], (obj["kind"], field)
        if obj["kind"] == "ScaledObject":
            assert spec["scaleTargetRef"]["name"] == pod(objects_of(case), "worker").name
            for trigger in spec["triggers"]:
                assert {"type", "metadata"} <= set(trigger)


def test_validation_can_fail() -> None:
    """The strict validation above notices a misspelt field."""
    deployment = find(render(None), "Deployment", "conveyor-worker")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


# -- policies over every pod -----------------------------------------------------------------


@each_case
def test_every_pod_meets_the_restricted_pod_security_standard(case: Case) -> None:
    for p in pod_templates(objects_of(case)):
        spec = p.spec
        pod_security = spec["securityContext"]
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, p.name
        assert spec["automountServiceAccountToken"] is False, p.name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (p.name, key)
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            security = c["securityContext"]
            non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
            uid = security.get("runAsUser", pod_security.get("runAsUser"))
            assert non_root is True, (p.name, c["name"])
            assert uid is not None and uid > 0, (p.name, c["name"])
            assert security["readOnlyRootFilesystem"] is True, (p.name, c["name"])
            assert security["allowPrivilegeEscalation"] is False, (p.name, c["name"])
            assert security["capabilities"] == {"drop": ["ALL"]}, (p.name, c["name"])
            assert "privileged" not in security, (p.name, c["name"])


@each_case
def test_every_container_has_requests_limits_and_probes(case: Case) -> None:
    for p in pod_templates(objects_of(case)):
        for c in p.containers:
            resources = c["resources"]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) >= {"cpu", "memory"}, (p.name, kind)
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in c, (p.name, probe)


@each_case
def test_images_are_pinned(case: Case) -> None:
    for p in pod_templates(objects_of(case)):
        for c in p.containers:
            image = c["image"].split("@", 1)[0]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag, c["image"]  # a tag, not a registry's port
            assert tag and tag.lower() != "latest", c["image"]
            assert c["imagePullPolicy"] in ("IfNotPresent", "Always", "Never")
    if case.profile == "dev":
        redis = pod(objects_of(case), "redis").container["image"]
        assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", redis), redis


def test_image_digest_pins_the_image() -> None:
    digest = "sha256:" + "ab" * 32
    objects = render(
        None,
        {"image": {"repository": "registry.example.com/shop", "tag": "1.2.3", "digest": digest}},
    )
    for p in conveyor_pods(objects):
        assert p.container["image"] == f"registry.example.com/shop:1.2.3@{digest}"


@each_case
def test_probe_and_hook_ports_are_container_ports(case: Case) -> None:
    objects = objects_of(case)
    for p in pod_templates(objects):
        c = p.container
        declared = {port["containerPort"] for port in c.get("ports", [])}
        handlers = [
            c[probe] for probe in ("startupProbe", "livenessProbe", "readinessProbe") if probe in c
        ]
        handlers += list(c.get("lifecycle", {}).values())
        for handler in handlers:
            if "httpGet" in handler:
                assert container_port(c, handler["httpGet"]["port"]) in declared, p.name
    # and the ports are the ones the commands listen on
    assert {int(arg(args_of(objects, "dispatcher"), "--port"))} == {
        port["containerPort"] for port in pod(objects, "dispatcher").container["ports"]
    }
    assert {int(arg(args_of(objects, "worker"), "--metrics-port"))} == {
        port["containerPort"] for port in pod(objects, "worker").container["ports"]
    }
    assert {int(arg(args_of(objects, "exporter"), "--port"))} == {
        port["containerPort"] for port in pod(objects, "exporter").container["ports"]
    }


@each_case
def test_the_worker_outlives_its_drain(case: Case) -> None:
    objects = objects_of(case)
    worker = pod(objects, "worker")
    drain_timeout = float(arg(worker.container["args"], "--drain-timeout"))
    grace = worker.spec["terminationGracePeriodSeconds"]
    assert grace > drain_timeout + SUPERVISOR_KILL_AFTER
    values = values_of(case)["worker"]
    assert grace == values["drainTimeoutSeconds"] + values["terminationGraceMarginSeconds"]
    # the preStop hook starts the drain on the metrics port
    hook = worker.container["lifecycle"]["preStop"]["httpGet"]
    assert hook["path"] == "/drain"
    port = container_port(worker.container, hook["port"])
    assert port == int(arg(worker.container["args"], "--metrics-port"))


@each_case
def test_pod_disruption_budgets_never_block_a_node_drain(case: Case) -> None:
    objects = objects_of(case)
    pods = pod_templates(objects)
    for budget in by_kind(objects, "PodDisruptionBudget"):
        spec = budget["spec"]
        (target,) = [p for p in pods if selects(spec["selector"], p.labels)]
        assert target.component in ("dispatcher", "worker")
        assert "minAvailable" not in spec
        assert isinstance(spec["maxUnavailable"], int) and spec["maxUnavailable"] >= 1


# -- what the pods run -----------------------------------------------------------------------


def test_commands_are_the_interfaces() -> None:
    """The arguments each component runs with, exactly (the image's entrypoint is
    `conveyor`)."""
    objects = render(None)
    assert args_of(objects, "dispatcher") == [
        "api", DEMO, "--host", "0.0.0.0", "--port", "8080", "--workers", "1",
    ]  # fmt: skip
    assert args_of(objects, "worker") == [
        "worker", DEMO, "--processes", "1", "--concurrency", "64", "--drain-timeout", "30",
        "--metrics-port", "9100",
    ]  # fmt: skip
    assert args_of(objects, "exporter") == ["exporter", "--host", "0.0.0.0", "--port", "9709"]
    for p in conveyor_pods(objects):
        assert "command" not in p.container  # the image's entrypoint
    # the options that change them
    objects = render(
        None,
        {
            "app": "shop.workflows:app",
            "dispatcher": {"workers": 4, "auth": {"enabled": False}},
            "worker": {
                "processes": 2,
                "concurrency": 16,
                "queues": ["default", "llm"],
                "drainTimeoutSeconds": 45,
                "metricsPort": 9200,
            },
            "exporter": {"port": 9800, "queues": ["default", "llm"]},
        },
    )
    assert args_of(objects, "dispatcher") == [
        "api", "shop.workflows:app", "--host", "0.0.0.0", "--port", "8080", "--workers", "4",
        "--no-auth",
    ]  # fmt: skip
    assert args_of(objects, "worker") == [
        "worker", "shop.workflows:app", "--processes", "2", "--concurrency", "16",
        "--drain-timeout", "45", "--metrics-port", "9200", "--queues", "default,llm",
    ]  # fmt: skip
    assert args_of(objects, "exporter") == [
        "exporter", "--host", "0.0.0.0", "--port", "9800", "--queue", "default", "--queue", "llm",
    ]  # fmt: skip
    assert pod(objects, "worker").spec["terminationGracePeriodSeconds"] == 65


@each_case
def test_configuration_comes_from_the_configmap_and_secrets(case: Case) -> None:
    objects = objects_of(case)
    values = values_of(case)
    config = find(objects, "ConfigMap")
    data = config["data"]
    redis_url = data["REDIS_URL"]
    assert urlsplit(redis_url).password is None  # the password comes from a Secret
    assert data["CONVEYOR_NAMESPACE"] == values["config"]["namespace"]
    assert data["CONVEYOR_PARTITIONS"] == str(values["config"]["partitions"])
    assert data["CONVEYOR_LOG_FORMAT"] == values["config"]["logFormat"]
    assert data["CONVEYOR_LOG_LEVEL"] == values["config"]["logLevel"]
    auth = values["redis"]["auth"]
    password = (auth["existingSecret"], auth["existingSecretPasswordKey"])
    keys = (
        values["dispatcher"]["auth"]["existingSecret"],
        values["dispatcher"]["auth"]["existingSecretKey"],
    )
    secrets = {password: "s3cret", keys: "billing:" + "0" * 64 + ":submit"}
    for p in conveyor_pods(objects):
        c = p.container
        assert c["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
        env = environment(objects, c, secrets)
        assert env["REDIS_PASSWORD"] == "s3cret"
        assert env["REDIS_URL"] == redis_url
        if p.component == "dispatcher" and values["dispatcher"]["auth"]["enabled"]:
            assert env["CONVEYOR_API_KEYS"] == secrets[keys]
            assert "--no-auth" not in c["args"]
        else:
            assert "CONVEYOR_API_KEYS" not in env
        if p.component == "dispatcher" and not values["dispatcher"]["auth"]["enabled"]:
            assert "--no-auth" in c["args"]
        # a change of the configuration rolls the pods
        digest = p.annotations["checksum/config"]
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
    if case.profile == "dev":
        assert redis_url == "redis://conveyor-redis:6379/0"
    else:
        assert redis_url == values["redis"]["url"] == "redis://conveyor-redis-master:6379/0"


def test_a_config_change_changes_the_checksum() -> None:
    before = pod(render(None), "worker").annotations["checksum/config"]
    after = pod(render(None, {"config": {"logLevel": "WARNING"}}), "worker").annotations
    assert after["checksum/config"] != before
    text = manifests(None)["conveyor/templates/configmap.yaml"]
    assert before == hashlib.sha256(text.encode()).hexdigest()


def test_extra_env_and_settings_reach_every_conveyor_container() -> None:
    objects = render(
        None,
        {
            "config": {"extra": {"CONVEYOR_MAX_BACKLOG": "5000"}},
            "extraEnv": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://tempo:4318"}],
        },
    )
    for p in conveyor_pods(objects):
        env = environment(
            objects,
            p.container,
            {("conveyor-redis", "redis-password"): "x", ("conveyor-api-keys", "api-keys"): "y"},
        )
        assert env["CONVEYOR_MAX_BACKLOG"] == "5000"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://tempo:4318"


def test_without_redis_auth_no_password_is_read() -> None:
    objects = render("dev", {"redis": {"auth": {"enabled": False}}})
    for p in pod_templates(objects):
        assert all(
            v["name"] not in ("REDIS_PASSWORD", "REDISCLI_AUTH") for v in p.container.get("env", [])
        ), p.name
    assert "--requirepass" not in pod(objects, "redis").container["args"]


def test_dev_redis_keeps_its_data_and_needs_the_password() -> None:
    objects = render("dev")
    redis = pod(objects, "redis")
    c = redis.container
    env = environment(objects, c, {("conveyor-redis", "redis-password"): "pw"})
    args = [expand(a, env) for a in c["args"]]
    assert args[0] == "redis-server"
    assert arg(args, "--appendonly") == "yes"
    assert arg(args, "--appendfsync") == "always"  # values-dev.yaml
    assert arg(args, "--dir") == "/data"
    assert arg(args, "--maxmemory-policy") == "noeviction"
    assert arg(args, "--requirepass") == "pw"
    assert env["REDISCLI_AUTH"] == "pw"
    (claim,) = redis.workload["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in c["volumeMounts"]
    assert redis.workload["spec"]["replicas"] == 1
    # the official image's redis user
    assert redis.spec["securityContext"]["runAsUser"] == 999
    assert redis.spec["securityContext"]["fsGroup"] == 999
    for probe in ("livenessProbe", "readinessProbe"):
        assert "redis-cli" in " ".join(c[probe]["exec"]["command"])
    # its Service is the one REDIS_URL names, and selects it
    service = find(objects, "Service", "conveyor-redis")
    assert selects(service["spec"]["selector"], redis.labels)
    assert redis.workload["spec"]["serviceName"] == "conveyor-redis"
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    assert find(objects, "ConfigMap")["data"]["REDIS_URL"] == "redis://conveyor-redis:6379/0"


@each_case
def test_replicas(case: Case) -> None:
    objects = objects_of(case)
    values = values_of(case)
    for component in ("dispatcher", "exporter"):
        assert pod(objects, component).workload["spec"]["replicas"] == values[component]["replicas"]
    worker = pod(objects, "worker").workload["spec"]
    if values["autoscaling"]["enabled"]:
        assert "replicas" not in worker  # the autoscaler owns it
    else:
        assert worker["replicas"] == values["worker"]["replicas"]
    if case.profile == "dev":
        assert {p.workload["spec"]["replicas"] for p in pod_templates(objects)} == {1}
    if case.profile is None:  # the reference architecture's sizes
        assert pod(objects, "dispatcher").workload["spec"]["replicas"] == 2
        assert worker["replicas"] == 3


def test_reference_architecture_resources() -> None:
    objects = render(None)
    assert pod(objects, "dispatcher").container["resources"] == {
        "requests": {"cpu": "200m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert pod(objects, "worker").container["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert pod(objects, "dispatcher").container["ports"][0]["containerPort"] == 8080


def test_service_account_created_or_named() -> None:
    objects = render(None)
    account = find(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for p in pod_templates(render("dev")):
        assert p.spec["serviceAccountName"] == account["metadata"]["name"]
    shared = render(None, {"serviceAccount": {"create": False, "name": "shared"}})
    assert by_kind(shared, "ServiceAccount") == []
    assert {p.spec["serviceAccountName"] for p in pod_templates(shared)} == {"shared"}


def test_spread_constraints_select_their_own_pods() -> None:
    objects = render("production")
    for component in ("dispatcher", "worker"):
        p = pod(objects, component)
        (constraint,) = p.spec["topologySpreadConstraints"]
        matched = [
            q.component
            for q in pod_templates(objects)
            if selects(constraint["labelSelector"], q.labels)
        ]
        assert matched == [component]


# -- labels and selectors --------------------------------------------------------------------


@each_case
def test_standard_labels_and_stable_selectors(case: Case) -> None:
    objects = objects_of(case)
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert set(labels) >= STANDARD_LABELS, obj["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    pods = pod_templates(objects)
    for p in pods:
        assert set(p.labels) >= STANDARD_LABELS
        selector = p.workload["spec"]["selector"]
        assert set(selector) == {"matchLabels"}
        assert set(selector["matchLabels"]) == SELECTOR_LABELS
        assert selects(selector, p.labels)
    # each Service sends to exactly the pods of its component
    for service in by_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        assert set(selector) == SELECTOR_LABELS
        matched = [p for p in pods if selects(selector, p.labels)]
        assert [p.name for p in matched] == [service["metadata"]["name"]]
        names = {port["name"] for port in matched[0].container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names


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


# -- network policies ------------------------------------------------------------------------


class Allowed(NamedTuple):
    """Who a policy's ingress rule admits: components of this release, outside peers."""

    components: frozenset[str]
    outside: tuple[str, ...]  # the peers' selectors, as JSON
    ports: frozenset[int]


def admitted(policy: Obj, pods: list[Pod]) -> list[Allowed]:
    allowed = []
    for rule in policy["spec"]["ingress"]:
        components: set[str] = set()
        outside = []
        for peer in rule["from"]:
            if set(peer) == {"podSelector"}:  # pods of this namespace
                components.update(
                    p.component for p in pods if selects(peer["podSelector"], p.labels)
                )
            else:
                outside.append(json.dumps(peer, sort_keys=True))
        ports = frozenset(int(p["port"]) for p in rule["ports"])
        allowed.append(Allowed(frozenset(components), tuple(outside), ports))
    return allowed


@each_case
def test_network_policies_select_what_they_mean(case: Case) -> None:
    objects = objects_of(case)
    values = values_of(case)["networkPolicy"]
    pods = pod_templates(objects)
    policies = by_kind(objects, "NetworkPolicy")
    ingress_controller = json.dumps(
        {
            "namespaceSelector": values["ingressController"]["namespaceSelector"],
            "podSelector": values["ingressController"]["podSelector"],
        },
        sort_keys=True,
    )
    prometheus = json.dumps(
        {"namespaceSelector": values["prometheus"]["namespaceSelector"]}, sort_keys=True
    )

    def port_of(component: str) -> int:
        (port,) = pod(objects, component).container["ports"]
        return int(port["containerPort"])

    # who may connect to each pod of the release
    expected = {
        "dispatcher": {
            Allowed(frozenset(), (ingress_controller,), frozenset({port_of("dispatcher")})),
            Allowed(frozenset(), (prometheus,), frozenset({port_of("dispatcher")})),
        },
        "worker": {Allowed(frozenset(), (prometheus,), frozenset({port_of("worker")}))},
        "exporter": {Allowed(frozenset(), (prometheus,), frozenset({port_of("exporter")}))},
        "redis": {Allowed(frozenset(CONVEYOR_COMPONENTS), (), frozenset({6379}))},
    }
    for p in pods:
        selecting = [n for n in policies if selects(n["spec"]["podSelector"], p.labels)]
        assert len(selecting) == 1, (p.name, [n["metadata"]["name"] for n in selecting])
        (policy,) = selecting
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert set(admitted(policy, pods)) == expected[p.component], p.name
    # the external Redis's pods: not ours; they admit our components and each other
    external = [n for n in policies if n["metadata"]["name"].endswith("external-redis")]
    if case.profile == "production":
        (policy,) = external
        selector = policy["spec"]["podSelector"]
        assert selector == values["externalRedis"]["podSelector"]
        assert selector["matchLabels"] == {
            "app.kubernetes.io/name": "redis",
            "app.kubernetes.io/instance": "conveyor-redis",
        }
        assert not any(selects(selector, p.labels) for p in pods)
        (rule,) = policy["spec"]["ingress"]
        (ours, themselves) = rule["from"]
        assert {
            p.component for p in pods if selects(ours["podSelector"], p.labels)
        } == CONVEYOR_COMPONENTS
        assert themselves == {"podSelector": selector}
        assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    else:
        assert external == []


def test_dispatcher_clients_are_admitted() -> None:
    client = {"podSelector": {"matchLabels": {"app": "checkout"}}}
    objects = render(None, {"networkPolicy": {"dispatcherClients": [client]}})
    policy = find(objects, "NetworkPolicy", "conveyor-dispatcher")
    assert client in policy["spec"]["ingress"][0]["from"]


def test_network_policies_can_be_turned_off() -> None:
    assert by_kind(render("dev", {"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


# -- Prometheus Operator ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", [CASES["production"], CASES["production-keda"]], ids=["hpa", "keda"]
)
def test_monitors_scrape_the_metrics_ports(case: Case) -> None:
    objects = objects_of(case)
    labels = values_of(case)["monitoring"]
    services = by_kind(objects, "Service")
    monitor = find(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"].items() >= labels["serviceMonitor"]["labels"].items()
    spec = monitor["spec"]
    scraped = [s for s in services if selects(spec["selector"], s["metadata"]["labels"])]
    assert sorted(s["metadata"]["name"] for s in scraped) == [
        "conveyor-dispatcher",
        "conveyor-exporter",
    ]
    ports = {p["name"] for s in scraped for p in s["spec"]["ports"]}
    assert {e["port"] for e in spec["endpoints"]} == ports
    assert {e["path"] for e in spec["endpoints"]} == {"/metrics"}

    pod_monitor = find(objects, "PodMonitor")
    assert pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = pod_monitor["spec"]
    scraped_pods = [p for p in pod_templates(objects) if selects(spec["selector"], p.labels)]
    assert [p.component for p in scraped_pods] == ["worker"]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert container_port(scraped_pods[0].container, endpoint["port"]) == int(
        arg(scraped_pods[0].container["args"], "--metrics-port")
    )


def test_prometheus_rule_holds_the_rules_file(tmp_path: Path) -> None:
    link = CHART / "files" / "rules.yml"
    assert link.is_symlink() and link.resolve() == RULES.resolve()
    rule = find(render("production"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert [g["name"] for g in rule["spec"]["groups"]]
    assert PROMTOOL is not None, "promtool is not on PATH (Debian/Ubuntu: apt install prometheus)"
    spec = tmp_path / "rules.yml"
    spec.write_text(yaml.safe_dump(rule["spec"]))
    done = promtool("check", "rules", spec)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# -- NOTES.txt -------------------------------------------------------------------------------


def test_notes_tell_how_to_reach_the_api_and_start_a_workflow() -> None:
    notes = manifests(None)["conveyor/templates/NOTES.txt"]
    assert "port-forward service/conveyor-dispatcher 8080:80" in notes
    assert "/v1/workflows/demo" in notes and "demo" in conveyor.demo.app.workflows
    assert "conveyor-redis" in notes and "conveyor-api-keys" in notes
    production = manifests("production")["conveyor/templates/NOTES.txt"]
    assert "https://conveyor.example.com" in production


# -- values.yaml and values.schema.json ------------------------------------------------------

_KEY = re.compile(r"^(\s*)(- )?([A-Za-z0-9_.\-/]+):(\s|$)")
# their children are Kubernetes' own fields, documented there
_KUBERNETES_SHAPED = {"resources", "behavior", "podSelector", "namespaceSelector", "matchLabels"}


def undocumented_values(text: str) -> list[str]:
    """Keys of a values file without a comment on the line above (inside lists and
    Kubernetes-shaped objects excepted)."""
    missing = []
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            previous = line if stripped else previous
            continue
        match = _KEY.match(line)
        if match:
            indent, item, key = len(match.group(1)), match.group(2), match.group(3)
            stack = [(i, k) for i, k in stack if i < indent]
            if item:
                stack.append((indent, "[]"))
                indent += 2
            parents = [k for _, k in stack]
            exempt = any(k in _KUBERNETES_SHAPED or k == "[]" for k in parents)
            if not exempt and not previous.lstrip().startswith("#"):
                missing.append(".".join([*parents, key]))
            stack.append((indent, key))
        previous = line
    return missing


def test_values_yaml_documents_every_value() -> None:
    assert undocumented_values((CHART / "values.yaml").read_text()) == []
    assert undocumented_values("a: 1\n# b\nb:\n  c: 2\n") == ["a", "b.c"]  # the check can fail


def schema_paths(schema: Obj, root: Obj, prefix: str = "") -> set[str]:
    """Every property path the schema declares."""
    if "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    paths = set()
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        paths.add(path)
        paths |= schema_paths(sub, root, path)
    return paths


def value_paths(values: Obj, prefix: str = "") -> set[str]:
    paths = set()
    for name, sub in values.items():
        path = f"{prefix}.{name}" if prefix else name
        paths.add(path)
        if isinstance(sub, dict) and name not in _KUBERNETES_SHAPED | {
            "labels",
            "annotations",
            "extra",
            "podLabels",
            "podAnnotations",
        }:
            paths |= value_paths(sub, path)
    return paths


def test_schema_types_every_value() -> None:
    schema = chart().schema
    assert schema is not None
    assert value_paths(chart().values) <= schema_paths(schema, schema)

    # every object of the schema refuses unknown keys
    def closed(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                # False, or a schema every other key must meet (resource names: quantities)
                assert node.get("additionalProperties", True) is not True, where
            for key, sub in node.items():
                closed(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                closed(sub, f"{where}/{i}")

    closed(schema, "")
    # queue names as Conveyor checks them
    assert (
        schema["properties"]["autoscaling"]["properties"]["queue"]["pattern"] == QUEUE_NAME.pattern
    )
    assert schema["definitions"]["queues"]["items"]["pattern"] == QUEUE_NAME.pattern


WRONG_VALUES = [
    ({"dispatcher": {"replicas": 0}}, "/dispatcher/replicas"),
    ({"worker": {"replicas": -1}}, "/worker/replicas"),
    ({"dispatcher": {"replicas": "2"}}, "/dispatcher/replicas"),
    ({"worker": {"concurrency": 1.5}}, "/worker/concurrency"),
    ({"autoscaling": {"mode": "vpa"}}, "/autoscaling/mode"),
    ({"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"image": {"digest": "md5:abc"}}, "/image/digest"),
    ({"workers": {"replicas": 3}}, "'workers'"),
    ({"worker": {"replica": 3}}, "'replica'"),
    ({"dispatcher": {"port": 70000}}, "/dispatcher/port"),
    ({"worker": {"metricsPort": 0}}, "/worker/metricsPort"),
    ({"worker": {"terminationGraceMarginSeconds": 10}}, "/worker/terminationGraceMarginSeconds"),
    ({"worker": {"drainTimeoutSeconds": 0}}, "/worker/drainTimeoutSeconds"),
    ({"app": "conveyor.demo"}, "/app"),
    ({"app": "conveyor demo:app"}, "/app"),
    ({"config": {"partitions": 0}}, "/config/partitions"),
    ({"config": {"partitions": 16385}}, "/config/partitions"),
    ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
    ({"config": {"logLevel": "LOUD"}}, "/config/logLevel"),
    ({"config": {"namespace": "a{b}"}}, "/config/namespace"),
    ({"config": {"extra": {"REDIS_PASSWORD": "hunter2"}}}, "REDIS_PASSWORD"),
    ({"config": {"extra": {"CONVEYOR_MAX_BACKLOG": 5000}}}, "/config/extra/CONVEYOR_MAX_BACKLOG"),
    ({"extraEnv": [{"name": "CONVEYOR_API_KEYS", "value": "x"}]}, "/extraEnv/0/name"),
    ({"worker": {"queues": ["bad queue"]}}, "/worker/queues/0"),
    ({"autoscaling": {"queue": ""}}, "/autoscaling/queue"),
    ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "/redis/url"),
    ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
    ({"redis": {"url": ""}}, "/redis/url"),
    ({"redis": {"dev": {"appendfsync": "sometimes"}}}, "/redis/dev/appendfsync"),
    ({"worker": {"resources": {"limits": None}}}, "/worker/resources"),
    ({"dispatcher": {"resources": {"requests": {"cpu": "a lot"}}}},
     "/dispatcher/resources/requests/cpu"),
    ({"dispatcher": {"podDisruptionBudget": {"maxUnavailable": -1}}},
     "/dispatcher/podDisruptionBudget/maxUnavailable"),
    ({"autoscaling": {"behavior": {"scaleUp": {"selectPolicy": "Most"}}}},
     "/autoscaling/behavior/scaleUp/selectPolicy"),
    ({"ingress": {"paths": [{"path": "v1", "pathType": "Prefix"}]}}, "/ingress/paths/0/path"),
    ({"monitoring": {"serviceMonitor": {"interval": "often"}}},
     "/monitoring/serviceMonitor/interval"),
    ({"networkPolicy": {"externalRedis": {"podSelector": {"matchLabels": {"a": 1}}}}},
     "/networkPolicy/externalRedis/podSelector/matchLabels/a"),
    ({"podLabels": {"app.kubernetes.io/component": "x"}}, "app.kubernetes.io/component"),
]  # fmt: skip


@pytest.mark.parametrize(("wrong", "where"), WRONG_VALUES, ids=[w for _, w in WRONG_VALUES])
def test_schema_refuses_wrong_values(wrong: Obj, where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart().validate_schema(wrong)
    assert where in str(refused.value)
    with pytest.raises(helm_python.HelmValuesError):  # and so does rendering
        chart().render(wrong, name=RELEASE, namespace=NAMESPACE)


def test_dev_redis_needs_no_url() -> None:
    chart().validate_schema({"redis": {"url": "", "dev": {"enabled": True}}})


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}},
         "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (3)"),
        ({"autoscaling": {"enabled": True}, "worker": {"queues": ["llm"]}},
         'autoscaling.queue "default" is not one of worker.queues'),
        ({"autoscaling": {"enabled": True}, "exporter": {"queues": ["llm"]}},
         'autoscaling.queue "default" is not one of exporter.queues'),
        ({"dispatcher": {"preStopSleepSeconds": 30}},
         "dispatcher.preStopSleepSeconds (30) must be below"),
    ],
)  # fmt: skip
def test_values_that_contradict_each_other_are_refused(wrong: Obj, message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        chart().render(wrong, name=RELEASE, namespace=NAMESPACE)


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
