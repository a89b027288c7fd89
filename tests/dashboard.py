"""The Grafana dashboard (deploy/grafana/dashboards/aqueduct.json) read as its PromQL:
which metrics and labels each query uses, so tests can hold them against the code.

Not a PromQL parser: enough of the grammar to find the metric names (identifiers
that are not functions, keywords or label names) and the labels a query selects
or groups by, in the queries this dashboard writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_FILE = ROOT / "deploy" / "grafana" / "dashboards" / "aqueduct.json"

# Series Prometheus makes itself for every target, not the code.
PROMETHEUS_SERIES = {"up"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$model": ".*"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_NAME = re.compile(r"(?<![\w$.])([A-Za-z_:][\w:]*)(?!\w)(\s*\()?")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)$")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL expression, with the title of the panel it is in."""
    found = [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(text)
            assert match, f"variable {variable['name']}: unexpected query {text!r}"
            found.append((f"${variable['name']}", f'{match.group(1)}{{{match.group(2)}!=""}}'))
    return found


def metric_names(expr: str) -> set[str]:
    """The series names an expression reads."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {
        match.group(1)
        for match in _NAME.finditer(text)
        if not match.group(2) and match.group(1).lower() not in KEYWORDS
    }


def selected_labels(expr: str) -> dict[str, set[str]]:
    """Labels matched in each series selector, by series name: `m{a="x",b=~"y"}` -> {m: {a, b}}."""
    text = _STRING.sub('""', expr)
    selected: dict[str, set[str]] = {}
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", text):
        labels = _MATCHER.findall(match.group(2))
        selected.setdefault(match.group(1), set()).update(labels)
    return selected


def grouping_labels(expr: str) -> set[str]:
    """Labels named in `by (…)`, `on (…)`, `ignoring (…)`, … clauses."""
    return {
        label.strip()
        for match in _GROUPING.finditer(_STRING.sub('""', expr))
        for label in match.group(2).split(",")
        if label.strip()
    }


def as_promql(expr: str) -> str:
    """The expression as Grafana sends it, its variables given typical values."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this helper does not know: {expr}"
    return expr


def sample_names(name: str, kind: str) -> set[str]:
    """The sample names a metric family of this name and type exposes."""
    return {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
