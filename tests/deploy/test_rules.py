"""deploy/prometheus/rules.yml: promtool accepts the rules and passes their unit tests
(deploy/prometheus/tests/), every alert carries what an operator needs, every rule reads only
metrics that exist, and those metrics are really served by a worker, the API and the exporter."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conveyor.embedded import EmbeddedRedis, free_port
from tests.helpers import until
from tests.processes import spawn, stop, wait_http

from . import (
    KNOWN_METRICS,
    PROMTOOL,
    ROOT,
    RULE_TESTS,
    RULES,
    family_name,
    load_rules,
    metric_names,
    output_labels,
    promtool,
    recorded_names,
    unknown_names,
)

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (Debian/Ubuntu: apt install prometheus)"
)

# the alerts issue 5 asks for, and their severities
ALERTS = {
    "WorkflowBacklogHigh": "warning",
    "WorkflowOldestPendingTooOld": "warning",
    "DeadLettersGrowing": "warning",
    "NoLiveWorkers": "critical",
    "StepErrorRatioHigh": "warning",
    "WorkflowStartsRefused": "warning",
    "RedisDown": "critical",
    "ExporterDown": "warning",
}
# alerts whose value says nothing (always 0, or 1 from absent())
VALUELESS = {"RedisDown", "ExporterDown"}
OPERATIONS = ROOT / "docs" / "operations.md"


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def rule_tests() -> list[dict[str, Any]]:
    files = sorted(RULE_TESTS.glob("*.yml"))
    return [test for f in files for test in yaml.safe_load(f.read_text())["tests"]]


# -- metric_names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", ["up"]),
        (
            'sum by (queue) (rate(conveyor_steps_completed_total{queue=~"llm|default", step!="x"}[5m]))',
            ["conveyor_steps_completed_total"],
        ),
        (
            "histogram_quantile(0.99, sum without (instance, pod) "
            "(rate(conveyor_step_duration_seconds_bucket[$__rate_interval])))",
            ["conveyor_step_duration_seconds_bucket"],
        ),
        (
            "sum(rate(a_total[1m] offset 5m)) by (workflow) / ignoring (status) "
            "group_left (queue) b_total > bool 0.05",
            ["a_total", "b_total"],
        ),
        (
            '(max by (queue) (backlog) > 0) unless on (queue) (max by (queue) (workers) > 0) '
            'or on() vector(0) and absent(redis_up{job="x"})',
            ["backlog", "workers", "redis_up"],
        ),
        (
            "min_over_time(sum(max by (partition) (dead_letters))[15m:1m]) @ end() "
            "+ 1e3 * Inf - NaN + 0x1F + sum(x offset -1h30m)",
            ["dead_letters", "x"],
        ),
        (
            'label_replace(rate(by_total[5m]), "dst", "$1", "src", "(.*)") '
            '# a comment naming not_a_metric\n + {__name__="named", queue="$queue"}',
            ["by_total", "named"],
        ),
        ("queue:conveyor_queue_backlog:max{queue=~\"${queue:regex}\"} * SUM(sum_total) BY (queue)",
         ["queue:conveyor_queue_backlog:max", "sum_total"]),
        ("count_values(\"version\", build_info) + topk(3, rate(x_total[1m]))",
         ["build_info", "x_total"]),
    ],
)  # fmt: skip
def test_metric_names(expr: str, names: list[str]) -> None:
    assert metric_names(expr) == names


def test_metric_names_rejects_unknown_functions() -> None:
    with pytest.raises(ValueError, match="rates"):
        metric_names("rates(x_total[5m])")
    with pytest.raises(ValueError, match="unbalanced"):
        metric_names("sum(rate(x[5m)")


@pytest.mark.parametrize(
    ("expr", "labels"),
    [
        ("conveyor_redis_up == 0", {"job", "instance"}),
        ('queue:conveyor_queue_backlog:max{queue=~"a"}', {"queue"}),
        ("sum(max by (partition) (conveyor_dead_letters))", set()),
        ("max by (partition) (conveyor_dead_letters)", {"partition"}),
        ("sum(rate(conveyor_steps_failed_total[5m])) by (workflow, step) / on (workflow, step) "
         "sum by (step, workflow) (rate(conveyor_steps_started_total[5m]))", {"workflow", "step"}),
        ("histogram_quantile(0.9, sum by (route, le) (rate(x_bucket[5m])))", {"route"}),
        ("sum without (instance) (up)", None),
        ("max(x) without (instance)", None),
    ],
)  # fmt: skip
def test_output_labels(expr: str, labels: set[str] | None) -> None:
    assert output_labels(expr) == labels


# -- promtool --------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    assert done.stderr == ""


@needs_promtool
def test_promtool_test_rules() -> None:
    files = sorted(RULE_TESTS.glob("*.yml"))
    assert files
    done = promtool("test", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(files), done.stdout


@needs_promtool
def test_promtool_test_rules_can_fail(tmp_path: Path) -> None:
    """The unit tests notice a changed threshold (a copy of the rules, 5000 -> 4000)."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules.yml").write_text(RULES.read_text().replace("> 5000", "> 4000"))
    test = tmp_path / "tests" / "queues.yml"
    test.write_text((RULE_TESTS / "queues.yml").read_text())
    done = promtool("test", "rules", test)
    assert done.returncode != 0
    assert "WorkflowBacklogHigh" in done.stdout + done.stderr


# -- the rules themselves --------------------------------------------------------------------


def test_the_alerts_asked_for() -> None:
    assert {rule["alert"]: rule["labels"]["severity"] for rule in alerts()} == ALERTS


def test_backlog_alert_is_the_reference_one() -> None:
    (rule,) = [r for r in alerts() if r["alert"] == "WorkflowBacklogHigh"]
    assert rule["for"] == "2m"
    assert re.search(r"\(conveyor_queue_backlog\)\s*>\s*5000\s*$", rule["expr"].strip())
    assert "queue" in rule["annotations"]["summary"]


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes = rule["annotations"]
        assert set(notes) >= {"summary", "description", "runbook_url"}, name
        assert notes["summary"].strip() and notes["description"].strip(), name
        # the anchor is the alert's name as a heading of docs/operations.md slugs it
        assert notes["runbook_url"] == f"docs/operations.md#{name.lower()}", name
        text = notes["summary"] + notes["description"]
        assert ("$value" in text) != (name in VALUELESS), name
        # the labels it names are labels the alert has
        kept = output_labels(rule["expr"])
        assert kept is not None, name
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert label in kept, (name, label, kept)


def test_rules_read_only_known_metrics() -> None:
    recorded = recorded_names()
    for rule in load_rules():
        what = rule.get("alert") or rule["record"]
        assert metric_names(rule["expr"]), what
        assert unknown_names(rule["expr"], recorded) == [], what


def test_recording_rules_follow_the_naming_convention() -> None:
    for rule in load_rules():
        if "record" not in rule:
            continue
        level, metric, operations = rule["record"].split(":")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level), rule["record"]
        assert re.fullmatch(r"(rate|ratio_rate|max)\d*m?", operations), rule["record"]
        # the metric it is made of, with a counter's _total left off
        read = metric_names(rule["expr"])
        bases = {n.removesuffix("_total") for n in read}
        assert metric in bases or metric.split("_per_")[0] in bases, rule["record"]
        assert set(level.split("_")) <= {"workflow", "step", "queue", "status"}, rule["record"]
        for label in level.split("_"):
            assert re.search(rf"by \([^)]*\b{label}\b", rule["expr"]), (rule["record"], label)


def test_every_rule_has_unit_tests() -> None:
    """Each alert is tested firing and not firing; each recording rule is evaluated."""
    firing: set[str] = set()
    silent: set[str] = set()
    evaluated: set[str] = set()
    for test in rule_tests():
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
        for case in test.get("promql_expr_test", []):
            evaluated.update(metric_names(case["expr"]))
    assert firing >= set(ALERTS), set(ALERTS) - firing
    assert silent >= set(ALERTS), set(ALERTS) - silent
    assert evaluated >= recorded_names(), recorded_names() - evaluated


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_runbook_anchors_exist() -> None:
    if not OPERATIONS.exists():
        pytest.skip("docs/operations.md is not written yet (the runbooks' home)")
    headings = re.findall(r"^#+\s+(.+?)\s*#*$", OPERATIONS.read_text(), re.MULTILINE)
    anchors = {_github_anchor(h) for h in headings}
    missing = [
        rule["alert"]
        for rule in alerts()
        if rule["annotations"]["runbook_url"].split("#", 1)[1] not in anchors
    ]
    assert missing == [], f"docs/operations.md has no heading for {missing}"


# -- the known metrics are served ------------------------------------------------------------

APP = "tests.apps.api_app:app"


def _start(args: list[str], env: dict[str, str], ready: str) -> subprocess.Popen[bytes]:
    process = spawn(args, env)
    wait_http(ready, process)
    return process


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):
        stop(process, timeout=15)


def _families(url: str) -> dict[str, set[frozenset[str]]]:
    """The metric families ``url`` serves, each with the label-name sets of its samples."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, (url, response.status_code, response.text[:500])
    return {
        family.name: {frozenset(sample.labels) - {"le"} for sample in family.samples}
        for family in text_string_to_metric_families(response.text)
    }


def test_known_metrics_are_served(
    redis7: EmbeddedRedis, namespace: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A real worker, API and exporter, after two workflows ran, serve every known metric."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis7.url,
        "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_PARTITIONS": "4",
    }
    quiet = ["--log-level", "WARNING"]
    worker_port, api_port, exporter_port = (str(free_port()) for _ in range(3))
    worker_url = f"http://127.0.0.1:{worker_port}/metrics"
    api_url = f"http://127.0.0.1:{api_port}"
    exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"
    processes.append(
        _start(["worker", APP, "--metrics-port", worker_port, *quiet], env, worker_url)
    )
    processes.append(
        _start(["api", APP, "--port", api_port, "--no-auth", *quiet], env, f"{api_url}/healthz")
    )
    processes.append(_start(["exporter", "--port", exporter_port], env, exporter_url))

    with httpx.Client(base_url=api_url, timeout=30) as http:
        started = [
            http.post("/v1/workflows/orders", json={"sku": "book", "qty": 2}),
            http.post("/v1/workflows/story", json="dragons"),
        ]
        for response in started:
            assert response.status_code == 202, response.text
            wf_id = response.json()["id"]
            result = http.get(f"/v1/workflows/{wf_id}/result", params={"wait": 20})
            assert result.status_code == 200, result.text

    # a worker counts a step just after its commit, which the result may overtake
    completed = family_name("conveyor_steps_completed_total")
    until(lambda: _families(worker_url).get(completed), what="the worker's step counter")
    served = {
        "worker": _families(worker_url),
        "api": _families(f"{api_url}/metrics"),
        "exporter": _families(exporter_url),
        "api /metrics/queues": _families(f"{api_url}/metrics/queues"),
    }
    where = {"worker": ["worker"], "api": ["api"], "exporter": ["exporter", "api /metrics/queues"]}
    missing: dict[str, list[str]] = {}
    mislabelled: dict[str, dict[str, list[list[str]]]] = {}
    for endpoint, families in served.items():
        expected = {n: k for n, k in KNOWN_METRICS.items() if endpoint in where.get(k.source, [])}
        missing[endpoint] = sorted(n for n in expected if family_name(n) not in families)
        # the labels the rules and the dashboard group by are the ones served
        mislabelled[endpoint] = {
            name: sorted(sorted(labels) for labels in found)
            for name, known in expected.items()
            if (found := families.get(family_name(name), set()) - {frozenset(known.labels)})
        }
    assert missing == {endpoint: [] for endpoint in served}
    assert mislabelled == {endpoint: {} for endpoint in served}
    # the workflows that ran are counted (so the label check above saw samples)
    assert served["worker"][completed]
    assert served["api"][family_name("conveyor_workflows_started_total")]
    assert served["exporter"][family_name("conveyor_queue_backlog")]
