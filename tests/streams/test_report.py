"""The worker's operator lines: start, progress only while busy, a summary naming why it stopped."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from streams.metrics import WorkerMetrics
from streams.processor import WorkerConfig
from streams.report import WorkerReport
from streams.sink import BatchResult


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _report(live: list[str] | None = None) -> tuple[WorkerReport, WorkerMetrics, FakeClock]:
    metrics, clock = WorkerMetrics(CollectorRegistry()), FakeClock()
    cfg = WorkerConfig(bootstrap="k:9092", database_url="postgresql+psycopg://u:secret@db/valora", group="g")
    report = WorkerReport(cfg, metrics, interval_s=5.0, clock=clock, live=None if live is None else live.append)
    return report, metrics, clock


def test_progress_is_logged_every_interval_while_records_flow_and_never_while_idle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report, metrics, clock = _report()
    caplog.set_level(logging.INFO, logger="valora.worker")
    report.started()
    assert caplog.messages[-1].startswith("worker started: topic usage.events (group g), database ")
    assert "secret" not in caplog.messages[-1]

    metrics.observe_batch(BatchResult(received=1000, accepted=990, duplicates=10), 0.1)
    metrics.lag.labels("0").set(250)
    metrics.lag.labels("1").set(50)
    clock.now += 2
    report.tick()  # too soon
    clock.now += 3
    report.tick()
    assert caplog.messages[-1] == (
        "worker: 1,000 records (200/s): accepted 990, duplicates 10, dead-lettered 0, lag 300"
    )
    logged = len(caplog.messages)
    clock.now += 60
    report.tick()  # nothing arrived: an idle worker stays quiet
    assert len(caplog.messages) == logged

    clock.now += 1
    summary = report.stopped("SIGTERM")
    assert summary.startswith("worker stopped (SIGTERM) after 66.0 s: 1,000 records (15/s), accepted 990, ")
    assert caplog.messages[-1] == summary


def test_a_live_line_replaces_the_log_lines_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    report, metrics, clock = _report(lines)
    caplog.set_level(logging.INFO, logger="valora.worker")
    metrics.observe_batch(BatchResult(received=7, accepted=7), 0.1)
    clock.now += 1
    report.tick()
    clock.now += 5
    report.tick()
    assert lines == [
        "7 records (7/s): accepted 7, duplicates 0, dead-lettered 0, lag 0",
        "7 records (0/s): accepted 7, duplicates 0, dead-lettered 0, lag 0",  # the rate since the last tick
    ]
    assert caplog.messages == []
