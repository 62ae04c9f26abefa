"""Prometheus metrics of the stream worker, built on an injected registry.

No organization ids as labels: a tenant count must never become a series count.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.sink import BatchResult


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "valora_worker_records_received_total", "Records read (replays excluded)", registry=registry
        )
        self.accepted = Counter("valora_worker_records_accepted_total", "New events persisted", registry=registry)
        self.duplicates = Counter(
            "valora_worker_records_duplicate_total", "Re-sent events counted once", registry=registry
        )
        self.dead_lettered = Counter(
            "valora_worker_records_dead_lettered_total", "Records sent to the DLQ", ["reason"], registry=registry
        )
        self.replayed = Counter(
            "valora_worker_records_replayed_total",
            "Records re-read after a restart or rebalance and skipped by the offset guard",
            registry=registry,
        )
        self.late = Counter(
            "valora_worker_late_usage_total", "Contributions to already-closed periods", registry=registry
        )
        self.batches = Counter("valora_worker_batches_total", "Batches committed", registry=registry)
        self.batch_retries = Counter("valora_worker_batch_retries_total", "Batch commits retried", registry=registry)
        self.batch_size = Histogram(
            "valora_worker_batch_size",
            "Records per batch",
            registry=registry,
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000),
        )
        self.batch_seconds = Histogram(
            "valora_worker_batch_duration_seconds", "Time to commit a batch", registry=registry
        )
        self.lag = Gauge(
            "valora_worker_consumer_lag", "Records behind the high watermark", ["partition"], registry=registry
        )
        self.conflicts = Counter(
            "valora_worker_dedup_conflicts_total",
            "Re-sent events whose payload differs from the one counted (rows in dedup_conflicts)",
            registry=registry,
        )
        self.offset_gap = Gauge(
            "valora_worker_offset_gap",
            "1 while the log no longer holds the partition's stored next offset (the partition is paused)",
            ["partition"],
            registry=registry,
        )
        self.summary: Tally[str] = Tally()

    def observe_batch(self, result: BatchResult, seconds: float) -> None:
        self.batches.inc()
        self.batch_size.observe(result.received + result.replayed)
        self.batch_seconds.observe(seconds)
        self.received.inc(result.received)
        self.accepted.inc(result.accepted)
        self.duplicates.inc(result.duplicates)
        self.replayed.inc(result.replayed)
        self.late.inc(result.late)
        self.conflicts.inc(result.conflicts)
        for dead in result.dead_letters:
            self.dead_lettered.labels(dead.code.value).inc()
        self.summary.update(
            received=result.received,
            accepted=result.accepted,
            duplicates=result.duplicates,
            dead_lettered=len(result.dead_letters),
            late=result.late,
            conflicts=result.conflicts,
            batches=1,
        )
