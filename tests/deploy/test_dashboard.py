"""deploy/grafana/conveyor.json: a dashboard Grafana can load (panels with targets, a grid
without overlaps, unique ids, the datasource variable everywhere) whose queries are valid
PromQL and read only metrics that exist or series that rules.yml records."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from . import (
    DASHBOARD,
    PROMTOOL,
    metric_names,
    output_labels,
    promtool,
    recorded_names,
    unknown_names,
)

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# rows issue 5 asks for, in order
ROWS = ["Overview", "Throughput", "Latency", "Backlog", "Failures", "Workers", "HTTP API"]
GRAFANA_INTERVALS = ("__rate_interval", "__interval", "__range")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in load()["panels"] if p["type"] != "row"]


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels() for t in p["targets"]]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in load()["templating"]["list"]}


def substitute(expr: str) -> str:
    """An expression as Prometheus gets it: Grafana's intervals become a duration, the
    dashboard's variables a regex that matches everything (what "All" sends)."""

    def value(match: re.Match[str]) -> str:
        name = (match.group(1) or match.group(2)).split(":")[0]
        return "5m" if name in GRAFANA_INTERVALS else ".*"

    return re.sub(r"\$\{([^}]+)\}|\$(\w+)", value, expr)


def label_values_metric(query: str) -> str:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert match, query
    return match.group(1)


# -- structure -------------------------------------------------------------------------------


def test_dashboard_basics() -> None:
    data = load()
    assert data["schemaVersion"] >= 39
    assert data["uid"] == "conveyor" and data["title"]
    assert [p["title"] for p in data["panels"] if p["type"] == "row"] == ROWS
    assert {p["type"] for p in panels()} <= {"timeseries", "stat"}


def test_ids_are_unique_stable_integers() -> None:
    ids = [p["id"] for p in load()["panels"]]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids))
    # a panel's id is its row's id plus its place in the row, so adding a panel to one row
    # does not renumber the others (links to ?viewPanel= keep working)
    row_id = 0
    for p in load()["panels"]:
        if p["type"] == "row":
            row_id = p["id"]
            assert row_id % 100 == 0, p["title"]
        else:
            assert row_id < p["id"] < row_id + 100, p["title"]


def test_grid_has_no_overlaps_and_follows_the_rows() -> None:
    boxes = []
    for p in load()["panels"]:
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"}, p["title"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            assert (g["x"], g["w"], g["h"]) == (0, 24, 1), p["title"]
            assert p["collapsed"] is False and p["panels"] == [], p["title"]
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1 :]:
            overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
            assert not overlap, f"{a!r} overlaps {b!r}"
    # Grafana gives a row the panels that follow it in the list: list order is grid order
    positions = [(y, x) for _, x, y, _, _ in boxes]
    assert positions == sorted(positions)


def test_every_panel_has_targets_on_the_datasource_variable() -> None:
    assert len(panels()) >= 20
    for p in panels():
        assert p["title"] and p.get("description"), p["id"]
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert t["expr"].strip(), p["title"]
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]


def test_variables() -> None:
    found = variables()
    assert found["DS_PROMETHEUS"]["type"] == "datasource"
    assert found["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("queue", "workflow"):
        var = found[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE, name
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*", name
        assert label_values_metric(var["query"]), name
        assert var["query"].endswith(f", {name})"), name


def test_queries_use_variables_that_exist_and_match_them_as_regexes() -> None:
    defined = set(variables()) | set(GRAFANA_INTERVALS)
    for title, t in targets():
        used = {
            m.group(1) or m.group(2) for m in re.finditer(r"\$\{(\w+)[^}]*\}|\$(\w+)", t["expr"])
        }
        assert used <= defined, (title, used - defined)
        # a multi-value variable is sent as a regex (a|b, or .* for All)
        assert not re.search(r'[^=!~]="\$', t["expr"]), title
        assert not re.search(r'!="\$', t["expr"]), title


def test_legends_name_labels_the_query_keeps() -> None:
    for title, t in targets():
        kept = output_labels(t["expr"])
        assert kept is not None, title
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
            assert label in kept, (title, label, kept)


def test_queries_read_only_known_metrics() -> None:
    recorded = recorded_names()
    queries = [(title, t["expr"]) for title, t in targets()]
    queries += [(name, label_values_metric(v["query"])) for name, v in variables().items()
                if v["type"] == "query"]  # fmt: skip
    used: set[str] = set()
    for title, expr in queries:
        names = metric_names(expr)
        assert names, title
        assert unknown_names(expr, recorded) == [], title
        used.update(names)
    # and every recording rule is shown somewhere
    assert recorded <= used, recorded - used


def test_substitute() -> None:
    assert (
        substitute(
            'rate(x{queue=~"$queue", w=~"${workflow}", s=~"${step:regex}"}[$__rate_interval])'
        )
        == 'rate(x{queue=~".*", w=~".*", s=~".*"}[5m])'
    )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not on PATH (apt install prometheus)")
def test_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query, as the expression of a recording rule."""
    exprs = [substitute(t["expr"]) for _, t in targets()]
    rules = {
        "groups": [{
            "name": "dashboard",
            "rules": [{"record": f"dashboard:query_{i}:check", "expr": e} for i, e in enumerate(exprs)],
        }]
    }  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not on PATH (apt install prometheus)")
def test_invalid_promql_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    bad = {"groups": [{"name": "x", "rules": [{"record": "x:y:z", "expr": "sum(rate(x[5m])"}]}]}
    path.write_text(json.dumps(bad))
    assert promtool("check", "rules", path).returncode != 0
