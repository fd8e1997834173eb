"""The Helm chart (deploy/helm/conveyor), rendered and linted by Helm's own engine, offline:
for the default values, values-dev.yaml, values-production.yaml and production with KEDA
(tests/deploy/chart_cases.py).

Every built-in object validates against Kubernetes 1.30's OpenAPI schema; the Prometheus
Operator and KEDA objects are checked for what they must hold (and the rules with promtool).
Policies hold over every pod (restricted Pod Security Standard, requests and limits, probes,
pinned images, a worker that outlives its drain). Labels and selectors are stable; NetworkPolicy
and monitor selectors select exactly the pods they are about.

What the pods run is in test_chart_workloads.py, what the objects name is checked against real
things in test_chart_live.py, and the values and their schema in test_chart_values.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import kubernetes_validate
import pytest
import yaml

import conveyor
import conveyor.demo

from . import PROMTOOL, RULES, promtool
from .chart_cases import (
    CASES,
    CONVEYOR_COMPONENTS,
    CRDS,
    EXPECTED_OBJECTS,
    RESTRICTED_VOLUMES,
    SELECTOR_LABELS,
    STANDARD_LABELS,
    SUPERVISOR_KILL_AFTER,
    Case,
    args_of,
    case_name,
    conveyor_pods,
    each_case,
    objects_of,
    values_of,
)
from .helm import (
    CHART,
    RELEASE,
    Obj,
    Pod,
    arg,
    by_kind,
    chart,
    container_port,
    find,
    lint,
    manifests,
    pod,
    pod_templates,
    render,
    selects,
    user_values,
)

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


def test_a_sentinel_port_is_admitted_to_the_external_redis() -> None:
    """With REDIS_URL=redis+sentinel://..., the clients also reach the Sentinels' port."""
    overrides = {"networkPolicy": {"externalRedis": {"sentinelPort": 26379}}}
    policy = find(render("production", overrides), "NetworkPolicy", "conveyor-external-redis")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [
        {"port": 6379, "protocol": "TCP"},
        {"port": 26379, "protocol": "TCP"},
    ]


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
