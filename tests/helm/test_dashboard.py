"""The Grafana dashboard: valid for the sidecar, and built only on metrics the code exports."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .conftest import CHART, GPU_KEDA_MONITORING, PREFIX

DASHBOARD = CHART / "dashboards" / "xsd.json"

# The metric names the processes export (scheduler/metrics.py, the API's HTTP metrics).
METRICS = {
    "xsd_http_requests_total",
    "xsd_http_request_duration_seconds_bucket",
    "xsd_queue_depth",
    "xsd_inflight_images",
    "xsd_jobs_finished_total",
    "xsd_queue_wait_seconds_bucket",
    "xsd_gpu_seconds_bucket",
    "xsd_end_to_end_seconds_bucket",
    "xsd_batch_jobs_bucket",
    "xsd_batch_images_bucket",
    "xsd_images_generated_total",
    "xsd_jobs_stopped_total",
    "xsd_denoise_step_seconds_bucket",
    "xsd_storage_upload_seconds_bucket",
    "xsd_storage_failures_total",
    "xsd_storage_give_ups_total",
    "xsd_spool_bytes",
    "xsd_webhook_attempts_total",
    "xsd_webhook_give_ups_total",
    "xsd_xtokens_debited_total",
    "xsd_xtokens_refunded_total",
    "xsd_gpu_memory_used_bytes",
    "xsd_gpu_memory_total_bytes",
    "xsd_gpu_utilization_ratio",
    "xsd_gpu_idle_seconds_total",
    "xsd_warmup_seconds",
    "xsd_claim_seconds_bucket",
    "xsd_upload_backlog_wait_seconds_bucket",
    "xsd_png_encode_seconds_bucket",
    "xsd_spool_write_seconds_bucket",
    "xsd_record_success_seconds_bucket",
    "xsd_webhook_delivery_seconds_bucket",
}

# PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum",
    "avg",
    "max",
    "min",
    "count",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "clamp_min",
    "clamp_max",
    "topk",
    "bottomk",
    "abs",
    "time",
    "vector",
    "scalar",
}

# The sections the dashboard must show, each found in some panel's title.
SECTIONS = [
    "throughput",
    "latency",
    "queue",
    "gpu utilisation",
    "gpu memory",
    "failed jobs by code",
    "webhook",
    "xtokens",
]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that name series: everything left once strings,
    label matchers, ranges, grouping clauses, numbers and PromQL's own words are gone."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return words - PROMQL_WORDS


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_schema_version_ids_and_layout(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_datasource_is_a_template_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_expr_uses_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exprs = _exprs(dashboard)
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        names = _metric_names(expr)
        assert names, expr
        assert names <= METRICS, (expr, names - METRICS)
        used |= names
    # And every exported family appears somewhere.
    assert used == METRICS


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(xsd_http_request_duration_seconds"
        '_bucket{namespace=~"$namespace", route="/v1/x"}[$__rate_interval]))) / '
        "sum without (pod) (bogus_metric)"
    )
    assert _metric_names(expr) == {"xsd_http_request_duration_seconds_bucket", "bogus_metric"}


def test_it_covers_the_operators_questions(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for section in SECTIONS:
        assert section in titles, section


def test_shipped_as_a_sidecar_configmap(render) -> None:
    manifests = render(GPU_KEDA_MONITORING)
    configmap = manifests.get("ConfigMap", f"{PREFIX}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "xSD"}
    assert json.loads(configmap["data"]["xsd.json"]) == json.loads(DASHBOARD.read_text())


def _exported_series() -> set[str]:
    """Series names the code defines, read from its source (so this test needs no import of
    the service): counters get ``_total``, histograms ``_bucket``."""
    root = CHART.parents[1]
    source = "\n".join(
        path.read_text()
        for path in [root / "scheduler" / "metrics.py", *root.glob("api_shim/*.py")]
    )
    names: set[str] = set()
    for kind, name in re.findall(
        r'\b(Counter|Histogram|Gauge|GaugeMetricFamily)\(\s*"(xsd_\w+)"', source
    ):
        if kind == "Counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "Histogram":
            names.add(f"{name}_bucket")
        else:
            names.add(name)
    return names


def test_the_metric_list_matches_the_code() -> None:
    assert _exported_series() == METRICS
