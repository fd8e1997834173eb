"""MkDocs hook: the metrics reference (docs/reference/metrics.md), read from the code.

A line ``::: conveyor-metrics PATH`` in a page is replaced by tables of the Prometheus metrics
that the Python file PATH (relative to the repository) defines: name as scraped, type,
labels, help text and a histogram's buckets, in the order of the source. The file is read,
not imported: every call of a prometheus-client metric class (``Counter``, ``Gauge``,
``Histogram``...) or metric family (``GaugeMetricFamily``...) is a metric, and so is every
call of a helper in the same file that returns such a call made from its parameters. Names a
call uses (a tuple of labels, the buckets) are looked up in the assignments of the enclosing
function, then of the module.

A call whose name, help or labels cannot be read that way stops the build with its file and
line, so the page never goes stale silently. The same goes for a ``conveyor_*`` metric named
in the prose of a page that no source defines (recording-rule names such as
``queue:conveyor_queue_backlog:max`` count by the metric inside them).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DIRECTIVE = re.compile(r"^::: conveyor-metrics (\S+)[ \t]*$", re.MULTILINE)
# metric classes and families -> (type, the positional order of their arguments)
CONSTRUCTORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Counter": ("counter", ("name", "documentation", "labelnames")),
    "Gauge": ("gauge", ("name", "documentation", "labelnames")),
    "Histogram": ("histogram", ("name", "documentation", "labelnames")),
    "Summary": ("summary", ("name", "documentation", "labelnames")),
    "Info": ("info", ("name", "documentation", "labelnames")),
    "Enum": ("stateset", ("name", "documentation", "labelnames")),
    "CounterMetricFamily": ("counter", ("name", "documentation", "value", "labels")),
    "GaugeMetricFamily": ("gauge", ("name", "documentation", "value", "labels")),
    "HistogramMetricFamily": ("histogram", ("name", "documentation", "buckets", "sum_value")),
    "SummaryMetricFamily": ("summary", ("name", "documentation", "count_value", "sum_value")),
    "InfoMetricFamily": ("info", ("name", "documentation", "value", "labels")),
    "StateSetMetricFamily": ("stateset", ("name", "documentation", "value", "labels")),
    "UnknownMetricFamily": ("unknown", ("name", "documentation", "value", "labels")),
}
# the series a scrape shows for one metric of each type (prometheus-client's naming)
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "info": ("_info",),
}
# a name, not a pattern such as conveyor_stream_.*
NAMED_IN_PROSE = re.compile(r"(?<![\w-])conveyor_[a-z0-9_]*[a-z0-9](?![\w*]|\.\*)")


@dataclass
class Metric:
    name: str
    type: str
    documentation: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None
    line: int

    @property
    def scraped(self) -> str:
        """The name a scrape shows (a counter's ``_total``; the base name otherwise)."""
        if self.type == "counter":
            return self.name.removesuffix("_total") + "_total"
        return self.name

    def series(self) -> set[str]:
        base = self.name.removesuffix("_total") if self.type == "counter" else self.name
        return {base, self.scraped} | {base + s for s in SUFFIXES.get(self.type, ())}


@dataclass
class _Source:
    path: Path
    tree: ast.Module
    parents: dict[ast.AST, ast.AST] = field(default_factory=dict)

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


class _Unreadable(Exception):
    pass


def _assignments(body: list[ast.stmt]) -> dict[str, ast.expr]:
    found: dict[str, ast.expr] = {}
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
            found[stmt.target.id] = stmt.value
    return found


def _value(node: ast.expr, scopes: list[dict[str, ast.expr]], depth: int = 0) -> Any:
    """The value of a constant expression: literals, tuples and lists of them, ``+``, and
    names assigned such values in one of ``scopes`` (innermost first)."""
    if depth > 20:
        raise _Unreadable("too deep")
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_value(e, scopes, depth + 1) for e in node.elts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _value(node.left, scopes, depth + 1) + _value(node.right, scopes, depth + 1)
    if isinstance(node, ast.Name):
        for scope in scopes:
            if node.id in scope:
                return _value(scope[node.id], scopes, depth + 1)
    raise _Unreadable(ast.unparse(node))


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _bind(call: ast.Call, order: tuple[str, ...]) -> dict[str, ast.expr]:
    bound = dict(zip(order, call.args, strict=False))
    bound.update({k.arg: k.value for k in call.keywords if k.arg})
    return bound


def _helpers(source: _Source) -> dict[str, tuple[str, tuple[str, ...], dict[str, ast.expr]]]:
    """Functions of the module that return a metric made from their parameters:
    name -> (type, parameter order, the metric's arguments in terms of the parameters)."""
    found = {}
    for fn in source.tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
                known = CONSTRUCTORS.get(_callee(node.value) or "")
                if known:
                    params = tuple(a.arg for a in fn.args.posonlyargs + fn.args.args)
                    found[fn.name] = (known[0], params, _bind(node.value, known[1]))
    return found


def _scopes(source: _Source, node: ast.AST) -> list[dict[str, ast.expr]]:
    scopes = []
    current: ast.AST | None = node
    while current is not None:
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
            scopes.append(_assignments(current.body))
        current = source.parents.get(current)
    return [*scopes, _assignments(source.tree.body)]


def read_metrics(path: Path) -> list[Metric]:
    """Every metric that ``path`` defines, in the order of the source."""
    text = path.read_text(encoding="utf-8")
    source = _Source(path, ast.parse(text, str(path)))
    for parent in ast.walk(source.tree):
        for child in ast.iter_child_nodes(parent):
            source.parents[child] = parent
    helpers = _helpers(source)
    metrics = []
    for node in ast.walk(source.tree):
        if not isinstance(node, ast.Call):
            continue
        name = _callee(node) or ""
        if name in CONSTRUCTORS:
            kind, order = CONSTRUCTORS[name]
            args = _bind(node, order)
            if _inside_helper(source, node, helpers):
                continue  # the helper's own body: its callers are the metrics
        elif name in helpers:
            kind, params, inner = helpers[name]
            given = _bind(node, params)
            args = {
                key: given.get(expr.id, expr)
                if isinstance(expr, ast.Name) and expr.id in params
                else expr
                for key, expr in inner.items()
            }
        else:
            continue
        metrics.append(_metric(source, node, kind, args))
    if not metrics:
        raise PluginError(f"docs/_gen/metrics.py: no metric definitions found in {path}")
    return sorted(metrics, key=lambda m: m.line)


def _inside_helper(source: _Source, node: ast.AST, helpers: dict[str, Any]) -> bool:
    current = source.parents.get(node)
    while current is not None:
        if isinstance(current, ast.FunctionDef) and current.name in helpers:
            return True
        current = source.parents.get(current)
    return False


def _metric(
    source: _Source,
    node: ast.Call,
    kind: str,
    args: dict[str, ast.expr],
) -> Metric:
    scopes = _scopes(source, node)

    def read(key: str, default: Any = None) -> Any:
        if key not in args:
            return default
        try:
            return _value(args[key], scopes)
        except _Unreadable as exc:
            raise PluginError(
                f"docs/_gen/metrics.py: cannot read the {key} of the metric at "
                f"{source.where(node)} ({exc}): give it as a literal or a constant"
            ) from None

    name = "_".join(p for p in (read("namespace"), read("subsystem"), read("name")) if p)
    if read("unit"):
        name += "_" + read("unit")
    documentation, labels = read("documentation"), read("labelnames", read("labels", ()))
    if not isinstance(name, str) or not isinstance(documentation, str):
        raise PluginError(f"docs/_gen/metrics.py: no name or help at {source.where(node)}")
    buckets = read("buckets") if kind == "histogram" and "sum_value" not in args else None
    return Metric(name, kind, documentation, tuple(labels or ()), buckets, node.lineno)


def _number(value: float) -> str:
    return f"{value:g}"


def render(metrics: list[Metric]) -> str:
    out = ['<div class="metrics-table" markdown>', "", "| metric | type | labels | help |"]
    out.append("|---|---|---|---|")
    for m in metrics:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "none"
        text = m.documentation.replace("|", "\\|")
        if m.buckets:
            text += " Buckets (s): " + ", ".join(_number(b) for b in m.buckets) + ", +Inf."
        out.append(f"| `{m.scraped}` | {m.type} | {labels} | {text} |")
    out += ["", "</div>"]
    return "\n".join(out) + "\n"


_known: set[str] = set()


def _expand(markdown: str) -> str:
    def table(match: re.Match[str]) -> str:
        path = ROOT / match.group(1)
        if not path.is_file():
            raise PluginError(f"docs/_gen/metrics.py: no file {match.group(1)}")
        metrics = read_metrics(path)
        for m in metrics:
            _known.update(m.series())
        return render(metrics)

    return DIRECTIVE.sub(table, markdown)


def on_pre_build(config: Any) -> None:
    """Read every source a page names first, so the prose check below knows all metrics."""
    _known.clear()
    for path in Path(config["docs_dir"]).rglob("*.md"):
        _expand(path.read_text(encoding="utf-8"))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = _expand(markdown)
    if _known:
        for code in re.findall(r"`([^`\n]+)`", markdown):
            for name in NAMED_IN_PROSE.findall(code):
                if name not in _known:
                    log.warning(
                        "%s names the metric %s, which no metric source defines",
                        page.file.src_uri,
                        name,
                    )
    return markdown
