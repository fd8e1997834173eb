"""Shared by the deploy/ tests: the metrics Conveyor serves (the one list the rules and the
dashboard are checked against), the metric names a PromQL expression reads, and the rule file.

KNOWN_METRICS names every metric a process serves, by its exposed name: counters with their
`_total`, histograms by their base name (queries read `_bucket`, `_sum` and `_count`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests"
DASHBOARD = ROOT / "deploy" / "grafana" / "conveyor.json"
PROMTOOL = shutil.which("promtool")


class Known(NamedTuple):
    kind: str  # counter | gauge | histogram
    source: str  # worker | api | exporter | prometheus (added by the scraper)
    labels: tuple[str, ...] = ()  # its own labels (histograms add `le`; Prometheus job, instance)


_W, _A, _E = "worker", "api", "exporter"
_STEP = ("workflow", "step", "queue")
_PART = ("queue", "partition")
KNOWN_METRICS: dict[str, Known] = {
    # worker processes (`conveyor worker --metrics-port`)
    "conveyor_steps_started_total": Known("counter", _W, _STEP),
    "conveyor_steps_completed_total": Known("counter", _W, _STEP),
    "conveyor_steps_failed_total": Known("counter", _W, _STEP),
    "conveyor_steps_retried_total": Known("counter", _W, _STEP),
    "conveyor_steps_dead_lettered_total": Known("counter", _W, _STEP),
    "conveyor_steps_limited_total": Known("counter", _W, _STEP),
    "conveyor_steps_dropped_total": Known("counter", _W, _STEP),
    "conveyor_step_duration_seconds": Known("histogram", _W, _STEP),
    "conveyor_workflow_duration_seconds": Known("histogram", _W, ("workflow", "status")),
    "conveyor_steps_in_flight": Known("gauge", _W),
    "conveyor_cache_hits_total": Known("counter", _W, ("workflow", "step")),
    "conveyor_cache_misses_total": Known("counter", _W, ("workflow", "step")),
    "conveyor_tasks_reclaimed_total": Known("counter", _W, ("queue",)),
    "conveyor_commit_duplicates_total": Known("counter", _W, ("queue",)),
    "conveyor_poison_entries_total": Known("counter", _W, ("queue",)),
    "conveyor_commit_errors_total": Known("counter", _W),
    # API processes (`conveyor api`, /metrics)
    "conveyor_workflows_started_total": Known("counter", _A, ("workflow",)),
    "conveyor_enqueue_refused_total": Known("counter", _A, ("workflow", "reason")),
    "conveyor_http_requests_total": Known("counter", _A, ("method", "route", "status")),
    "conveyor_http_request_duration_seconds": Known("histogram", _A, ("method", "route", "status")),
    # the queue exporter (`conveyor exporter`, the API's /metrics/queues)
    "redis_stream_pending": Known("gauge", _E, ("stream", "queue")),
    "conveyor_stream_length": Known("gauge", _E, _PART),
    "conveyor_stream_pending": Known("gauge", _E, _PART),
    "conveyor_stream_lag": Known("gauge", _E, _PART),
    "conveyor_stream_oldest_pending_age_seconds": Known("gauge", _E, _PART),
    "conveyor_delayed_tasks": Known("gauge", _E, _PART),
    "conveyor_dead_letters": Known("gauge", _E, ("partition",)),
    "conveyor_queue_backlog": Known("gauge", _E, ("queue",)),
    "conveyor_queue_lag": Known("gauge", _E, ("queue",)),
    "conveyor_queue_oldest_age_seconds": Known("gauge", _E, ("queue",)),
    "conveyor_queue_delayed": Known("gauge", _E, ("queue",)),
    "conveyor_workers": Known("gauge", _E, ("queue",)),
    "conveyor_redis_up": Known("gauge", _E),
    "conveyor_exporter_scrape_duration_seconds": Known("gauge", _E),
    # added by Prometheus to every target
    "up": Known("gauge", "prometheus"),
}


def series_names(name: str, known: Known) -> list[str]:
    """The names a query can use for one known metric."""
    if known.kind == "histogram":
        return [f"{name}_bucket", f"{name}_sum", f"{name}_count"]
    return [name]


KNOWN_SERIES: dict[str, str] = {
    series: name for name, known in KNOWN_METRICS.items() for series in series_names(name, known)
}


def family_name(name: str) -> str:
    """The family name a text-format parser gives a known metric (counters lose `_total`)."""
    if KNOWN_METRICS[name].kind == "counter":
        return name.removesuffix("_total")
    return name


# -- metric names in PromQL ------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS = _words(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk "
    "limit_ratio"
)
# keywords are case-insensitive in PromQL; `bool`, `offset` and the binary set operators are
# not metrics, nor are the literals Inf and NaN
KEYWORDS = _words("bool offset and or unless atan2 inf nan")
# followed by a parenthesised list of label names (group_left/right: optionally)
LABEL_LISTS = _words("by without on ignoring group_left group_right")
FUNCTIONS = _words(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv double_exponential_smoothing end exp first_over_time floor
    histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev
    histogram_stdvar histogram_sum holt_winters hour idelta increase info irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute
    month pi predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn
    sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt start stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp ts_of_first_over_time
    ts_of_last_over_time ts_of_max_over_time ts_of_min_over_time vector year
    """
)

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+)
    | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:[a-zA-Z]+\d*)*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^@=<>,(){}\[\]])
    """,
    re.VERBOSE,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def _closing(tokens: list[tuple[str, str]], i: int, open_: str, close: str) -> int:
    """The index of the token closing the bracket opened at ``i``."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j] == ("op", open_):
            depth += 1
        elif tokens[j] == ("op", close):
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {open_!r}")


def metric_names(expr: str) -> list[str]:
    """The metric (or recorded series) names a PromQL expression selects, in order, once each.

    Function and aggregation names, keywords, label names in ``{...}`` and in by/without/on/
    ignoring/group_left/group_right lists, strings, numbers, durations, ranges and Grafana
    ``$variables`` are not metrics; ``{__name__="x"}`` selects ``x``. A call of a function
    PromQL does not have raises ValueError."""
    tokens = _tokens(expr)
    names: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if (kind, text) == ("op", "{"):
            end = _closing(tokens, i, "{", "}")
            inner = tokens[i + 1 : end]
            for k in range(len(inner) - 2):
                if inner[k] == ("ident", "__name__") and inner[k + 1] == ("op", "="):
                    names.append(inner[k + 2][1][1:-1])
            i = end + 1
            continue
        if (kind, text) == ("op", "["):
            i = _closing(tokens, i, "[", "]") + 1
            continue
        if kind == "ident":
            word = text.lower()
            if word in LABEL_LISTS:
                if following == ("op", "("):
                    i = _closing(tokens, i + 1, "(", ")") + 1
                    continue
            elif word in KEYWORDS or word in AGGREGATIONS:
                pass
            elif following == ("op", "("):
                if text not in FUNCTIONS:
                    raise ValueError(f"{text}() is not a PromQL function (in {expr!r})")
            else:
                names.append(text)
        i += 1
    return list(dict.fromkeys(names))


def _label_list(tokens: list[tuple[str, str]], i: int) -> tuple[set[str], int]:
    """The label names of the list opened at ``i`` and the index after it."""
    end = _closing(tokens, i, "(", ")")
    return {text for kind, text in tokens[i + 1 : end] if kind == "ident"}, end + 1


def output_labels(expr: str) -> set[str] | None:
    """The labels the result of ``expr`` keeps, as far as a reading without a parser can tell:
    where it aggregates, the labels every aggregation keeps (`sum(...)` keeps none; `le` is
    consumed by histogram_quantile); else the labels of the series it reads (a recorded
    series' level, a metric's own plus job and instance). None where `without` is used."""
    tokens = _tokens(expr)
    groupings: list[set[str]] = []
    for i, (kind, text) in enumerate(tokens):
        if kind != "ident" or text.lower() not in AGGREGATIONS:
            continue
        j = i + 1
        if j < len(tokens) and tokens[j][1].lower() in ("by", "without"):
            if tokens[j][1].lower() == "without":
                return None
            groupings.append(_label_list(tokens, j + 1)[0])
            continue
        after = _closing(tokens, j, "(", ")") + 1
        if after < len(tokens) and tokens[after][1].lower() == "without":
            return None
        if after < len(tokens) and tokens[after][1].lower() == "by":
            groupings.append(_label_list(tokens, after + 1)[0])
        else:
            groupings.append(set())
    if groupings:
        return set.intersection(*groupings) - {"le"}
    labels: set[str] = set()
    for name in metric_names(expr):
        if ":" in name:
            labels.update(name.split(":")[0].split("_"))
        else:
            labels.update(KNOWN_METRICS[KNOWN_SERIES[name]].labels, ("job", "instance"))
    return labels


# -- the rule file ---------------------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/rules.yml, in order."""
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def unknown_names(expr: str, recorded: set[str]) -> list[str]:
    """The names ``expr`` selects that are neither a known metric nor a recorded series."""
    return [n for n in metric_names(expr) if n not in KNOWN_SERIES and n not in recorded]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
