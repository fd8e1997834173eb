"""What the Helm chart's pods run (deploy/helm/conveyor), rendered by Helm's own engine,
offline: the commands of each component, the configuration from the ConfigMap and the Secrets,
the environment, the dev Redis, replicas, resources, the service account and the spread
constraints."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from .chart_cases import DEMO, Case, args_of, conveyor_pods, each_case, objects_of, values_of
from .helm import (
    arg,
    by_kind,
    environment,
    expand,
    find,
    manifests,
    pod,
    pod_templates,
    render,
    selects,
)

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
