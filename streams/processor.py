"""The worker's batch processor: a batch of records in, one committed Postgres transaction out.

It owns the Postgres connection, the catalog snapshot (refreshed on a timer, and at once
when a record's rejection may only mean the snapshot is stale) and the DLQ producer. A
batch Postgres cannot take because it is away is retried with backoff; a batch it refuses
for its data is bisected until the refused record stands alone and is dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg
from confluent_kafka import Producer
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from invoicing.db import make_engine, psycopg_connect_args
from streams.batch import BatchPlan, DeadLetter, Record, plan_batch
from streams.decode import Reason
from streams.metrics import WorkerMetrics
from streams.offsets import Gap
from streams.sink import BatchResult, StaleSnapshot, render_events, write_batch
from streams.snapshot import CatalogSnapshot, load_snapshot

log = logging.getLogger("valora.worker")

_CATALOG_REASONS = frozenset({Reason.UNKNOWN_ORGANIZATION, Reason.UNKNOWN_CUSTOMER, Reason.NO_ACTIVE_SUBSCRIPTION})
# A dead letter's value goes to the DLQ topic only below Kafka's default message size (1 MB);
# past it the message says `value_omitted` and the value is in the `dead_letters` row.
_DLQ_VALUE_MAX = 900_000
_MIN_REFRESH_S = 1.0  # at most one extra catalog load per second, however many such records arrive


class DeliveryFailed(Exception):
    """The DLQ producer could not deliver; the batch is retried, not acked."""


@dataclass(frozen=True)
class WorkerConfig:
    bootstrap: str
    database_url: str
    events_topic: str = "usage.events"
    dlq_topic: str = "usage.events.dlq"
    totals_topic: str = "usage.totals"
    totals_interval_s: float = 1.0
    partitions: int = 8
    group: str = "valora-worker"
    batch_max: int = 5000
    batch_within_s: float = 0.1
    future_tolerance: timedelta = timedelta(minutes=5)
    snapshot_refresh_s: float = 10.0
    session_timeout_ms: int = 10000
    until_idle: bool = False
    idle_quiet_s: float = 2.0
    data_dir: str | None = None  # Faust's data directory; None: a temporary one, removed on exit
    log_level: str = "warning"
    reset_offsets: bool = False  # move stored offsets the log no longer holds to its start (streams.offsets)
    offset_check_s: float = 30.0  # how often a running worker re-checks that the log holds its offsets


def stored_offsets(conn: psycopg.Connection[Any], group: str, topic: str) -> dict[int, int]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = %s AND topic = %s",
            (group, topic),
        )
        return {p: o for p, o in cur.fetchall()}


class BatchProcessor:
    """Owns the Postgres connection, the catalog snapshot and the DLQ producer."""

    def __init__(self, cfg: WorkerConfig, metrics: WorkerMetrics, clock: Callable[[], datetime]) -> None:
        self.cfg, self.metrics, self.clock = cfg, metrics, clock
        self.conn: psycopg.Connection[Any] | None = None
        self.snapshot: CatalogSnapshot | None = None
        self.snapshot_at = 0.0
        self.producer = Producer({"bootstrap.servers": cfg.bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self.offsets: dict[int, int] = {}
        self.crash: BaseException | None = None
        self.heartbeat: float | None = None  # monotonic time of the ingest loop's last turn (readiness)
        self.stop_reason: str | None = None  # "idle" when `--until-idle` caught up
        self.gaps: dict[int, Gap] = {}  # partitions paused: the log no longer holds their stored offset
        self.touched: set[tuple[str, str, datetime]] = set()
        self._touched_lock = threading.Lock()  # the writer adds, the totals timer takes
        self._engine: Engine | None = None  # snapshot loads and totals publishing share it

    def publish_totals(self) -> int:
        """Rate and publish the running totals touched since the last call (compacted topic)."""
        with self._touched_lock:
            touched, self.touched = self.touched, set()
        if not touched:
            return 0
        from invoicing.usage import totals_for

        try:
            totals = totals_for(self._sqlalchemy(), touched)
        except OperationalError:
            with self._touched_lock:
                self.touched |= touched  # Postgres away: publish on a later tick
            return 0
        for total in totals:
            key = f"{total['organization']}/{total['subscription']}/{total['period_start']}".encode()
            self.producer.produce(self.cfg.totals_topic, key=key, value=orjson.dumps({"schema_version": 1, **total}))
        self.producer.flush(10)
        return len(totals)

    def stored_offsets(self) -> dict[int, int]:
        with psycopg.connect(**psycopg_connect_args(self.cfg.database_url), autocommit=True, connect_timeout=5) as conn:
            return stored_offsets(conn, self.cfg.group, self.cfg.events_topic)

    def connection_for_reset(self) -> psycopg.Connection[Any]:
        """A connection of its own for an operator's offset reset (streams.offsets)."""
        return psycopg.connect(**psycopg_connect_args(self.cfg.database_url), autocommit=True, connect_timeout=5)

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                **psycopg_connect_args(self.cfg.database_url), autocommit=True, connect_timeout=5
            )
        return self.conn

    def _snapshot(self) -> CatalogSnapshot:
        if self.snapshot is None or time.monotonic() - self.snapshot_at > self.cfg.snapshot_refresh_s:
            self.snapshot = load_snapshot(self._sqlalchemy())
            self.snapshot_at = time.monotonic()
        return self.snapshot

    def _sqlalchemy(self) -> Engine:
        """One pooled engine for the catalog snapshot and the totals publisher (two threads)."""
        if self._engine is None:
            self._engine = make_engine(self.cfg.database_url, pool_size=2)
        return self._engine

    def _produce_dead_letters(self, dead: list[DeadLetter]) -> None:
        for d in dead:
            reason: dict[str, Any] = {
                "code": d.code.value,
                "detail": d.detail,
                "topic": self.cfg.events_topic,
                "partition": d.partition,
                "offset": d.offset,
            }
            value = d.value
            if len(d.key or b"") + len(value or b"") + len(d.detail) > _DLQ_VALUE_MAX:
                value, reason["value_omitted"] = None, True  # past Kafka's message size: kept in `dead_letters`
            self.producer.produce(
                self.cfg.dlq_topic, key=d.key, value=value, headers=[("valora-reason", orjson.dumps(reason))]
            )
        if dead and self.producer.flush(30) > 0:
            raise DeliveryFailed("dead letters were not delivered to the DLQ topic")

    def plan(self, records: list[Record]) -> BatchPlan:
        """Decode, route and render a batch (CPU only); runs while the previous batch commits.

        Rejections that depend on the catalog (unknown organization or customer, no active
        subscription) may only mean the snapshot predates a `catalog apply`: the batch is
        planned again on a fresh snapshot before anything is dead-lettered for that reason.
        """
        plan = plan_batch(
            records, self._loaded_snapshot(), now=self.clock(), future_tolerance=self.cfg.future_tolerance
        )
        stale = time.monotonic() - self.snapshot_at > _MIN_REFRESH_S
        if stale and any(d.code in _CATALOG_REASONS for d in plan.dead_letters):
            self.snapshot = None  # reload now
            plan = plan_batch(
                records, self._loaded_snapshot(), now=self.clock(), future_tolerance=self.cfg.future_tolerance
            )
        plan.event_rows = render_events(plan, self.cfg.events_topic)
        return plan

    def _loaded_snapshot(self) -> CatalogSnapshot:
        while True:
            try:
                return self._snapshot()
            except (OperationalError, psycopg.OperationalError) as exc:
                log.warning("catalog not loaded (%s); retrying", exc)
                time.sleep(1.0)  # Postgres away: wait off the event loop

    def process(self, records: list[Record], plan: BatchPlan | None = None) -> BatchResult:
        """Commit one batch, retrying with backoff until Postgres takes it.

        A batch Postgres refuses for its data (not for being away), or whose write fails in
        any other way, is split in halves until the record it fails on stands alone; that one
        is dead-lettered `rejected_by_store` (Postgres refused it) or `unprocessable`.
        """
        try:
            result = self._commit(records, plan)
        except Exception as exc:  # isolated below; Postgres being away is retried in _commit
            result = self._isolate(records, exc)
        for p, nxt in result.next_offsets.items():
            self.offsets[p] = max(self.offsets.get(p, 0), nxt)
        with self._touched_lock:
            self.touched |= result.touched
        return result

    def _isolate(self, records: list[Record], exc: Exception) -> BatchResult:
        if len(records) == 1:
            [rec] = records
            if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)):
                code, detail = Reason.REJECTED_BY_STORE, f"Postgres refused the record: {str(exc).splitlines()[0]}"
            else:
                code, detail = Reason.UNPROCESSABLE, f"writing the record failed: {type(exc).__name__}: {exc}"[:300]
            log.warning("record %d@%d dead-lettered %s: %s", rec.offset, rec.partition, code.value, detail)
            org = rec.key.decode("utf-8", "replace") if rec.key else None
            dead = DeadLetter(rec.partition, rec.offset, org, code, detail, rec.key, rec.value)
            return self._commit(records, BatchPlan(dead_letters=[dead]))
        half = len(records) // 2
        results = []
        for part in (records[:half], records[half:]):
            try:
                results.append(self._commit(part, None))
            except Exception as part_exc:  # bisected until the failing record stands alone
                results.append(self._isolate(part, part_exc))
        return results[0].merge(results[1])

    def _commit(self, records: list[Record], plan: BatchPlan | None) -> BatchResult:
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                result = write_batch(
                    self._connection(),
                    records,
                    self._snapshot(),
                    group=self.cfg.group,
                    topic=self.cfg.events_topic,
                    now=self.clock(),
                    future_tolerance=self.cfg.future_tolerance,
                    plan=plan,
                    before_commit=self._produce_dead_letters,
                )
            except psycopg.errors.ProgramLimitExceeded:
                raise  # a value past a Postgres limit (e.g. an index row): the record's fault, isolated by process()
            except StaleSnapshot as exc:
                log.info("batch planned on an older catalog (%s); planning it again", exc)
                self.snapshot, plan = None, None  # write_batch plans on the reloaded snapshot
                continue
            except (psycopg.OperationalError, psycopg.InterfaceError, OperationalError, DeliveryFailed) as exc:
                self.metrics.batch_retries.inc()
                log.warning("batch of %d records not committed (%s); retrying in %.1fs", len(records), exc, delay)
                if self.conn is not None:
                    self.conn.close()
                time.sleep(delay)  # backoff while Postgres or the broker is away, off the event loop
                delay = min(delay * 2, 5.0)
                continue
            self.metrics.observe_batch(result, time.perf_counter() - started)
            return result
