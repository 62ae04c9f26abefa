"""Prometheus metrics of the scheduler process, built on an injected registry.

The names and labels are the ones the Grafana dashboard expects; `job` is always
set, `reason` says why something failed or was deferred, `resource` what timed out.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.job_runs = Counter("valora_scheduler_job_runs_total", "Job runs started", ["job"], registry=registry)
        self.job_duration = Histogram(
            "valora_scheduler_job_duration_seconds",
            "Wall time of one job run",
            ["job"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.job_timeouts = Counter(
            "valora_scheduler_job_timeouts_total",
            "Job runs cut off by their timeout",
            ["job", "resource"],
            registry=registry,
        )
        self.job_errors = Counter(
            "valora_scheduler_job_errors_total", "Job runs that failed", ["job", "reason"], registry=registry
        )
        self.batch_processed = Counter(
            "valora_scheduler_batch_processed_total", "Items completed by a job", ["job"], registry=registry
        )
        self.batch_deferred = Counter(
            "valora_scheduler_batch_deferred_total",
            "Items that failed and were deferred to a retry with backoff",
            ["job", "reason"],
            registry=registry,
        )
        self.close_failing = Gauge(
            "valora_close_failing_periods",
            "Periods whose last close attempt failed and that are not closed yet (see close_failures)",
            registry=registry,
        )
        self.runloop_lag = Gauge(
            "valora_scheduler_runloop_lag_seconds",
            "How late the last tick started against its schedule",
            registry=registry,
        )
