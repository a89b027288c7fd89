"""The Grafana dashboard, checked without Grafana: a well-formed file whose every
query reads metrics the code defines (tests/integration/test_dashboard.py holds
it against what the running processes serve)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dashboard import (
    PROMETHEUS_SERIES,
    ROOT,
    as_promql,
    expressions,
    load,
    metric_names,
    panels,
    sample_names,
)

DASHBOARD = load()
METRIC_CLASSES = {
    "Counter": "counter",
    "Counters": "counter",  # core.metric_cells: the hot path's
    "CounterMetricFamily": "counter",
    "Gauge": "gauge",
    "GaugeMetricFamily": "gauge",
    "Histogram": "histogram",
    "Histograms": "histogram",
    "HistogramMetricFamily": "histogram",
}


def defined_samples() -> set[str]:
    """Sample names of every metric the edge and the services create (their first
    argument, a literal), with the suffixes their type adds."""
    names: set[str] = set()
    for path in [*(ROOT / "edge").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            called = node.func.id if isinstance(node.func, ast.Name) else None
            first = node.args[0]
            if called in METRIC_CLASSES and isinstance(first, ast.Constant):
                names |= sample_names(str(first.value), METRIC_CLASSES[called])
    return names


def test_the_code_scan_finds_the_metrics() -> None:
    # Guards the scan itself: one of each kind, from the edge and from a service.
    found = defined_samples()
    assert {
        "aqueduct_requests_total",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "aqueduct_key_watch_up",
        "aqueduct_upstream_attempts_total",
        "grpc_server_handled_total",
    } <= found


def test_every_query_reads_metrics_the_code_defines() -> None:
    defined = defined_samples() | PROMETHEUS_SERIES
    for title, expr in expressions(DASHBOARD):
        names = metric_names(expr)
        assert names, f"{title}: no metric found in {expr!r}"
        assert names <= defined, f"{title}: {sorted(names - defined)} are not defined: {expr}"


def test_the_dashboard_covers_what_an_operator_asks() -> None:
    used = {name for _, expr in expressions(DASHBOARD) for name in metric_names(expr)}
    for wanted in (
        "aqueduct_requests_total",  # traffic, errors
        "aqueduct_rate_limited_total",  # limits hit
        "gen_ai_server_request_duration_seconds_bucket",  # latency
        "gen_ai_server_time_to_first_token_seconds_bucket",  # TTFT
        "gen_ai_server_time_per_output_token_seconds_bucket",
        "aqueduct_tokens_total",
        "aqueduct_upstream_circuit_state",  # upstream health
        "aqueduct_upstream_failures_total",
        "aqueduct_upstream_ejections_total",
        "aqueduct_upstream_retries_total",
        "aqueduct_upstream_in_flight",
        "aqueduct_local_queue_depth",  # local queue
        "aqueduct_local_active_generations",
        "grpc_server_handled_total",
        "aqueduct_settles_pending",
        "aqueduct_key_watch_up",
    ):
        assert wanted in used, f"no panel shows {wanted}"


def test_percentiles_are_taken_over_bucket_rates_by_le() -> None:
    quantile = re.compile(
        r"histogram_quantile\(\s*(0\.\d+)\s*,\s*sum by \(([^)]*)\) \(rate\((\w+)\{"
    )
    seen = 0
    for title, expr in expressions(DASHBOARD):
        if "histogram_quantile" not in expr:
            continue
        match = quantile.search(expr)
        assert match, f"{title}: {expr}"
        assert "le" in [label.strip() for label in match.group(2).split(",")], title
        assert match.group(3).endswith("_bucket"), title
        seen += 1
    assert seen >= 5


def test_model_variable_filters_the_model_panels() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    model = variables["model"]
    assert model["multi"] and model["includeAll"] and model["allValue"] == ".*"
    filtered = [expr for _, expr in expressions(DASHBOARD) if '=~"$model"' in expr]
    assert len(filtered) >= 15
    for _, expr in expressions(DASHBOARD):
        if "gen_ai_server_" in expr:  # the GenAI histograms label the model differently
            assert 'gen_ai_request_model=~"$model"' in expr, expr


def test_panels_use_the_datasource_variable_and_fit_the_grid() -> None:
    ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(DASHBOARD):
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        place = panel["gridPos"]
        assert place["x"] >= 0 and place["w"] > 0 and place["x"] + place["w"] <= 24
        for x in range(place["x"], place["x"] + place["w"]):
            for y in range(place["y"], place["y"] + place["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_the_dashboard_file_is_where_the_readme_says() -> None:
    readme = (ROOT / "README.md").read_text()
    relative = Path("deploy/grafana/dashboards/aqueduct.json")
    assert str(relative) in readme
    assert DASHBOARD["uid"] == "aqueduct"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    # Each query as a recording rule: `promtool check rules` parses it as Prometheus would.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(expressions(DASHBOARD))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
