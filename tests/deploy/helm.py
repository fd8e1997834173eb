"""The Helm chart (deploy/helm/conveyor) rendered offline by Helm's own engine (Helm v4 as a
library: helm-python-sdk), and what tests need from the rendered objects.

Stable helpers (other tests import them):

- ``render(profile, overrides)``: the parsed objects a profile renders, as a list of dicts.
  ``profile`` is None (the chart's defaults), ``"dev"`` or ``"production"`` (values-dev.yaml,
  values-production.yaml); ``overrides`` are values merged over it, as ``--set`` would.
  Cached per (profile, overrides): each call returns a fresh deep copy.
- ``user_values(profile, overrides)``: the values a release is installed with (what ``-f``
  and ``--set`` give; the chart's defaults are merged by Helm).
- ``lint(profile, overrides)``: ``helm lint --strict`` for Kubernetes 1.30.
- ``pod_templates(objects)``: every Deployment's and StatefulSet's pod template, as ``Pod``.
- ``pod(objects, component)``: the one pod template of a component (dispatcher, worker,
  exporter, redis).
- ``environment(objects, container, secrets)``: a container's environment as the kubelet
  builds it (envFrom ConfigMaps, then env; secretKeyRef values from ``secrets``).
- ``expand(text, env)``: Kubernetes' ``$(VAR)`` expansion (command, args, env values).
- ``selects(selector, labels)``: whether a label selector (matchLabels/matchExpressions, or
  a Service's plain map) selects ``labels``.
- ``find(objects, kind, name=None)``, ``by_kind(objects, kind)``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import helm_python
import yaml

from . import ROOT

CHART = ROOT / "deploy" / "helm" / "conveyor"
PROFILES: dict[str | None, Path | None] = {
    None: None,
    "dev": CHART / "values-dev.yaml",
    "production": CHART / "values-production.yaml",
}
RELEASE = "conveyor"
NAMESPACE = "shop"
KUBE_VERSION = "v1.30.0"

Obj = dict[str, Any]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, maps recursively (as Helm merges values)."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def user_values(profile: str | None, overrides: Mapping[str, Any] | None = None) -> Obj:
    """The values file of ``profile`` (none for the defaults) with ``overrides`` merged in."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: one of {list(PROFILES)}")
    path = PROFILES[profile]
    base = yaml.safe_load(path.read_text()) if path else {}
    return _merge(base or {}, overrides or {})


@functools.cache
def chart() -> helm_python.Chart:
    """The chart, loaded once per process (charts are immutable)."""
    return helm_python.Chart.load(CHART)


@functools.cache
def _rendered(profile: str | None, overrides_json: str) -> tuple[tuple[str, str], ...]:
    values = user_values(profile, json.loads(overrides_json))
    manifests = chart().render(values, name=RELEASE, namespace=NAMESPACE)
    return tuple(sorted(manifests.items()))


def manifests(profile: str | None, overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included)."""
    return dict(_rendered(profile, json.dumps(overrides or {}, sort_keys=True)))


def render(profile: str | None, overrides: Mapping[str, Any] | None = None) -> list[Obj]:
    """Every object the chart renders for ``profile`` and ``overrides``, parsed, in template
    order. Raises helm_python.HelmValuesError (schema) or HelmRenderError (templates)."""
    objects: list[Obj] = []
    for path, text in manifests(profile, overrides).items():
        if path.endswith(".txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def lint(profile: str | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``helm lint --strict`` of the chart with a profile's values, for Kubernetes 1.30."""
    return helm_python.lint(
        CHART,
        user_values(profile, overrides),
        strict=True,
        namespace=NAMESPACE,
        kube_version=KUBE_VERSION,
    )


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def find(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    """The one object of ``kind`` (and ``name``); fails if there is not exactly one."""
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in by_kind(objects, kind)])
    return found[0]


class Pod(NamedTuple):
    """A workload's pod template."""

    kind: str  # Deployment or StatefulSet
    name: str  # the workload's name
    component: str  # its app.kubernetes.io/component label
    labels: dict[str, str]  # the pod template's labels
    annotations: dict[str, str]
    spec: Obj  # the pod spec
    workload: Obj  # the whole Deployment or StatefulSet

    @property
    def containers(self) -> list[Obj]:
        return list(self.spec["containers"])

    @property
    def container(self) -> Obj:
        """The only container (every pod of the chart has one)."""
        (only,) = self.spec["containers"]
        return dict(only)


def pod_templates(objects: list[Obj]) -> list[Pod]:
    """The pod template of every Deployment and StatefulSet, in render order."""
    pods = []
    for o in objects:
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        meta = o["spec"]["template"]["metadata"]
        pods.append(
            Pod(
                kind=o["kind"],
                name=o["metadata"]["name"],
                component=meta["labels"]["app.kubernetes.io/component"],
                labels=dict(meta["labels"]),
                annotations=dict(meta.get("annotations") or {}),
                spec=o["spec"]["template"]["spec"],
                workload=o,
            )
        )
    return pods


def pod(objects: list[Obj], component: str) -> Pod:
    """The one pod template of ``component``."""
    (found,) = [p for p in pod_templates(objects) if p.component == component]
    return found


_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in command, args and env values: a defined
    variable is replaced, an undefined reference is kept, ``$$`` is a literal ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REF.sub(one, text)


def environment(
    objects: list[Obj], container: Obj, secrets: Mapping[tuple[str, str], str]
) -> dict[str, str]:
    """The environment the kubelet gives ``container``: each ``envFrom`` ConfigMap of
    ``objects`` in order, then ``env`` in order (values expanded against what precedes
    them; ``secretKeyRef`` looked up as ``secrets[(secret, key)]``, a missing one fails)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]
        env.update(find(objects, "ConfigMap", ref["name"]).get("data") or {})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"], ref["key"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            raise AssertionError(f"unsupported env source {source}")
    return env


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Label selector semantics: a LabelSelector ({matchLabels, matchExpressions}; empty
    selects everything) or a Service's plain label map."""
    if set(selector) - {"matchLabels", "matchExpressions"}:  # a Service's selector
        return all(labels.get(k) == v for k, v in selector.items())
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def container_port(container: Obj, port: int | str) -> int:
    """A probe's or hook's port (a number, or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == port]
    return int(number)


def arg(args: list[str], option: str) -> str:
    """The value following ``option`` in an argument list."""
    assert args.count(option) == 1, (option, args)
    return args[args.index(option) + 1]
