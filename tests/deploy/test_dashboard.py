"""The dashboard's shape and coverage: rows, panels Grafana can place, the metrics each row must show."""

from __future__ import annotations

import json

import yaml

from tests.deploy.promql import ALERT_RULES, DASHBOARD, alert_expressions, dashboard_expressions

SEED_SCHEDULER_METRICS = [
    "valora_scheduler_job_runs_total",
    "valora_scheduler_job_duration_seconds",
    "valora_scheduler_job_timeouts_total",
    "valora_scheduler_job_errors_total",
    "valora_scheduler_batch_processed_total",
    "valora_scheduler_batch_deferred_total",
    "valora_scheduler_runloop_lag_seconds",
]


def test_rows_and_panel_layout() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "valora" and dashboard["title"] == "Valora"
    panels = dashboard["panels"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert [r.split(" ")[0] for r in rows] == ["Ingestion", "Close", "API", "Process"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["description"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    occupied = set()  # no two panels overlap
    for p in panels:
        pos = p["gridPos"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, p["title"]
        occupied |= cells


def test_each_row_shows_what_the_issue_asks_for() -> None:
    text = "\n".join(e.promql for e in dashboard_expressions())
    for metric in SEED_SCHEDULER_METRICS:
        assert metric in text, metric
    for label in ("job", "reason", "resource"):
        assert f"by (job, {label})" in text or f"by ({label})" in text or f"by (le, {label})" in text, label
    for metric in (
        "valora_worker_records_received_total",
        "valora_worker_records_accepted_total",
        "valora_worker_records_duplicate_total",
        "valora_worker_records_dead_lettered_total",
        "valora_worker_consumer_lag",
        "valora_worker_batch_duration_seconds_bucket",
        "valora_worker_freshness_seconds_bucket",
        "valora_api_requests_total",
        "valora_api_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert metric in text, metric
    assert "max by (partition) (valora_worker_consumer_lag)" in text
    assert "sum by (route, method) (rate(valora_api_requests_total" in text


def test_alert_rules_cover_the_failures_operators_must_hear_about() -> None:
    names = {e.source.removeprefix("alert: ") for e in alert_expressions()}
    assert {
        "ValoraWorkerDown",
        "ValoraConsumerLagGrowing",
        "ValoraSchedulerJobErrors",
        "ValoraSchedulerJobTimeouts",
        "ValoraSchedulerRunloopLag",
        "ValoraCloseFailures",
    } <= names
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
