"""What the test_chart* modules share: the cases they render (the default values,
values-dev.yaml, values-production.yaml and production with KEDA), what each case renders, by
kind and name, the constants the checks hold the objects to, and small helpers over a case's
objects and values."""

from __future__ import annotations

from typing import Any, NamedTuple

import helm_python
import pytest

from .helm import Obj, Pod, chart, pod, pod_templates, render, user_values

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
