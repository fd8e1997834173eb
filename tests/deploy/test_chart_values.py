"""The Helm chart's values (deploy/helm/conveyor): values.yaml documents every value and
values.schema.json types every one. Wrong values are refused by the schema, and values that
contradict each other by the templates."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import pytest

from conveyor.storage.connection import RedisTarget
from conveyor.workflow.definition import _NAME as QUEUE_NAME

from .helm import CHART, NAMESPACE, RELEASE, Obj, chart

helm_python.disable_logging()

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
    "url",
    [
        "redis://conveyor-redis-master:6379/0",
        "rediss://conveyor@redis:6380/1?ssl_ca_certs=/etc/redis-tls/ca.crt",
        "redis+sentinel://conveyor-redis:26379/mymaster",
        "rediss+sentinel://s1:26379,s2:26379/mymaster/0",
        "redis+cluster://redis-cluster-0:6379,redis-cluster-1:6379",
    ],
)
def test_every_topology_url_is_accepted(url: str) -> None:
    chart().validate_schema({"redis": {"url": url}})
    RedisTarget.parse(url)  # and Conveyor reads it the same way
