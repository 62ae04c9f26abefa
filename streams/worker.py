"""The Faust worker: `usage.events` → validated, deduplicated totals in Postgres.

The agent takes batches with `take_events`, which acks a batch only after the
loop body returns, and the body only returns once the batch is committed to
Postgres (retrying with backoff while Postgres is away). Faust's own commits
therefore trail Postgres, and the offsets stored in Postgres drop anything
re-read after a crash or rebalance (see streams/sink.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from sqlalchemy.exc import OperationalError

from schemas.errors import ValoraError
from streams.batch import BatchPlan, DeadLetter, Record, plan_batch
from streams.decode import Reason
from streams.metrics import WorkerMetrics
from streams.sink import BatchResult, write_batch
from streams.snapshot import CatalogSnapshot, load_snapshot

log = logging.getLogger("valora.worker")


_CATALOG_REASONS = frozenset({Reason.UNKNOWN_ORGANIZATION, Reason.UNKNOWN_CUSTOMER, Reason.NO_ACTIVE_SUBSCRIPTION})
_MIN_REFRESH_S = 1.0  # at most one extra catalog load per second, however many such records arrive


class WorkerCrashed(ValoraError):
    code = "worker_crashed"


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
    metrics_port: int | None = None
    idle_quiet_s: float = 2.0


def ensure_topics(
    bootstrap: str, topics: dict[str, int], timeout_s: float = 15.0, compacted: frozenset[str] = frozenset()
) -> None:
    """Create topics that are missing (idempotent); names in `compacted` get cleanup.policy=compact."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    new = [
        NewTopic(
            name,
            num_partitions=n,
            replication_factor=1,
            config={"cleanup.policy": "compact"} if name in compacted else {},
        )
        for name, n in topics.items()
        if name not in existing
    ]
    if not new:
        return
    for name, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 15.0) -> dict[int, int]:
    """High watermark of every partition: what `--until-idle` has to reach."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "valora-watermarks", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in meta.partitions
        }
    finally:
        consumer.close()


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
        self.touched: set[tuple[str, str, datetime]] = set()
        self._totals_engine: Any = None

    def publish_totals(self) -> int:
        """Rate and publish the running totals touched since the last call (compacted topic)."""
        touched, self.touched = self.touched, set()
        if not touched:
            return 0
        from invoicing.db import make_engine
        from invoicing.usage import totals_for

        if self._totals_engine is None:
            self._totals_engine = make_engine(self.cfg.database_url, pool_size=1)
        try:
            totals = totals_for(self._totals_engine, touched)
        except OperationalError:
            self.touched |= touched  # Postgres away: publish on a later tick
            return 0
        for total in totals:
            key = f"{total['organization']}/{total['subscription']}/{total['period_start']}".encode()
            self.producer.produce(self.cfg.totals_topic, key=key, value=orjson.dumps({"schema_version": 1, **total}))
        self.producer.flush(10)
        return len(totals)

    def stored_offsets(self) -> dict[int, int]:
        with psycopg.connect(_libpq_url(self.cfg.database_url), autocommit=True, connect_timeout=5) as conn:
            return stored_offsets(conn, self.cfg.group, self.cfg.events_topic)

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(_libpq_url(self.cfg.database_url), autocommit=True, connect_timeout=5)
        return self.conn

    def _snapshot(self) -> CatalogSnapshot:
        if self.snapshot is None or time.monotonic() - self.snapshot_at > self.cfg.snapshot_refresh_s:
            from invoicing.db import make_engine

            engine = make_engine(self.cfg.database_url, pool_size=1)
            try:
                self.snapshot = load_snapshot(engine)
            finally:
                engine.dispose()
            self.snapshot_at = time.monotonic()
        return self.snapshot

    def _produce_dead_letters(self, dead: list[DeadLetter]) -> None:
        for d in dead:
            reason = {
                "code": d.code.value,
                "detail": d.detail,
                "topic": self.cfg.events_topic,
                "partition": d.partition,
                "offset": d.offset,
            }
            self.producer.produce(
                self.cfg.dlq_topic, key=d.key, value=d.value, headers=[("valora-reason", orjson.dumps(reason))]
            )
        if dead and self.producer.flush(30) > 0:
            raise DeliveryFailed("dead letters were not delivered to the DLQ topic")

    def plan(self, records: list[Record]) -> BatchPlan:
        """Decode and route a batch (CPU only); runs while the previous batch commits.

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

        A batch Postgres refuses for its data (not for being away) is split in halves until
        the record it refuses stands alone; that one is dead-lettered `rejected_by_store`.
        """
        try:
            result = self._commit(records, plan)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            result = self._isolate(records, exc)
        for p, nxt in result.next_offsets.items():
            self.offsets[p] = max(self.offsets.get(p, 0), nxt)
        self.touched |= result.touched
        return result

    def _isolate(self, records: list[Record], exc: Exception) -> BatchResult:
        if len(records) == 1:
            [rec] = records
            detail = f"Postgres refused the record: {str(exc).splitlines()[0]}"
            org = rec.key.decode("utf-8", "replace") if rec.key else None
            dead = DeadLetter(rec.partition, rec.offset, org, Reason.REJECTED_BY_STORE, detail, rec.key, rec.value)
            return self._commit(records, BatchPlan(dead_letters=[dead]))
        half = len(records) // 2
        results = []
        for part in (records[:half], records[half:]):
            try:
                results.append(self._commit(part, None))
            except (psycopg.DataError, psycopg.IntegrityError) as part_exc:
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


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class IdleWatch:
    """Decides when `--until-idle` may stop.

    Idle means: every partition's stored offset reached the high watermark read at
    start, and no record arrived for `quiet_s` since the last batch or assignment.
    The quiet interval matters because some Kafka-compatible brokers under-report
    watermarks; on Apache Kafka the watermark alone would do, and the wait is short.
    """

    def __init__(self, targets: dict[int, int], quiet_s: float) -> None:
        self.targets, self.quiet_s = targets, quiet_s
        self.assigned = False
        self.last_activity = time.monotonic()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def idle(self, offsets: dict[int, int]) -> bool:
        reached = all(offsets.get(p, 0) >= end for p, end in self.targets.items() if end > 0)
        return self.assigned and reached and time.monotonic() - self.last_activity >= self.quiet_s


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, start each partition at the offset Postgres has committed."""

    def __init__(self, consumer: AIOKafkaConsumer, processor: BatchProcessor, idle: IdleWatch | None) -> None:
        self.consumer, self.processor, self.idle = consumer, processor, idle

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None  # batches are committed synchronously: nothing is in flight here

    async def on_partitions_assigned(self, assigned: Any) -> None:
        stored = await asyncio.get_running_loop().run_in_executor(None, self.processor.stored_offsets)
        for tp in assigned:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition])
        if self.idle is not None:
            self.idle.assigned = True
            self.idle.touch()


async def ingest_loop(
    cfg: WorkerConfig, processor: BatchProcessor, idle: IdleWatch | None, should_stop: Callable[[], bool]
) -> None:
    """Fetch batches with getmany, commit each to Postgres, then commit Kafka offsets behind it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.bootstrap,
        group_id=cfg.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=cfg.batch_max,
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=min(3000, cfg.session_timeout_ms // 3),
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    consumer.subscribe([cfg.events_topic], listener=_Rebalance(consumer, processor, idle))
    await consumer.start()
    loop = asyncio.get_running_loop()
    planner = ThreadPoolExecutor(1, thread_name_prefix="valora-plan")
    writer = ThreadPoolExecutor(1, thread_name_prefix="valora-write")
    pending: tuple[asyncio.Future[BatchResult], dict[Any, Any]] | None = None

    async def finish(job: tuple[asyncio.Future[BatchResult], dict[Any, Any]]) -> None:
        result = await job[0]
        if idle is not None:
            idle.touch()
        commits = {
            tp: OffsetAndMetadata(result.next_offsets[tp.partition], "")
            for tp in job[1]
            if tp.partition in result.next_offsets
        }
        for tp, meta in commits.items():  # lag from the high watermark the last fetch reported
            highwater = consumer.highwater(tp)
            if highwater is not None:
                processor.metrics.lag.labels(str(tp.partition)).set(max(0, highwater - meta.offset))
        try:
            await consumer.commit(commits)
        except KafkaError as exc:  # a rebalance took the partition: Postgres offsets still guard
            log.info("kafka offset commit skipped: %s", exc)

    try:
        while not should_stop():
            fetched = await consumer.getmany(timeout_ms=int(cfg.batch_within_s * 1000), max_records=cfg.batch_max)
            records = [Record(tp.partition, r.offset, r.key, r.value) for tp, rs in fetched.items() for r in rs]
            if not records:
                if pending is not None:
                    await finish(pending)
                    pending = None
                continue
            if idle is not None:
                idle.touch()
            plan = await loop.run_in_executor(planner, processor.plan, records)
            if pending is not None:  # one batch in flight: commits stay in order
                await finish(pending)
            pending = (loop.run_in_executor(writer, processor.process, records, plan), fetched)
        if pending is not None:
            await finish(pending)
    finally:
        planner.shutdown()
        writer.shutdown()
        await consumer.stop()


def build_app(
    cfg: WorkerConfig, processor: BatchProcessor, idle: IdleWatch | None, stop: Callable[[], None]
) -> faust.App:
    """The Faust app hosting the worker: lifecycle, signals, timers, and the ingest task.

    Ingestion reads with aiokafka's getmany instead of a Faust stream: Faust's per-event
    stream path measured ~7k events/s on this hardware, a fraction of the goal.
    """
    app = faust.App(
        f"{cfg.group}-host",
        broker=f"kafka://{cfg.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,
        broker_session_timeout=cfg.session_timeout_ms / 1000,
    )
    state = {"stopping": False}

    @app.task  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def ingest() -> None:
        try:
            await ingest_loop(cfg, processor, idle, lambda: state["stopping"] or app.should_stop)
        except Exception as exc:  # surfaced as WorkerCrashed by run_worker
            processor.crash = exc
            stop()

    if idle is not None:

        @app.timer(0.25)  # type: ignore[untyped-decorator]
        async def check_idle() -> None:
            if idle.idle(processor.offsets):
                state["stopping"] = True
                stop()

    return app


def run_worker(cfg: WorkerConfig, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> dict[str, int]:
    """Run the Faust worker; with `until_idle`, return once everything present at start is committed.

    Raises:
        WorkerCrashed: the worker stopped on an error (one line for the CLI).
    """
    from faust.worker import Worker
    from prometheus_client import CollectorRegistry, start_http_server

    ensure_topics(
        cfg.bootstrap,
        {cfg.events_topic: cfg.partitions, cfg.dlq_topic: cfg.partitions, cfg.totals_topic: cfg.partitions},
        compacted=frozenset({cfg.totals_topic}),
    )
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    if cfg.metrics_port is not None:
        start_http_server(cfg.metrics_port, registry=registry)
    processor = BatchProcessor(cfg, metrics, clock)
    idle: IdleWatch | None = None
    if cfg.until_idle:
        idle = IdleWatch(end_offsets(cfg.bootstrap, cfg.events_topic), cfg.idle_quiet_s)
        with psycopg.connect(_libpq_url(cfg.database_url), autocommit=True, connect_timeout=5) as conn:
            processor.offsets.update(stored_offsets(conn, cfg.group, cfg.events_topic))
    holder: list[Worker] = []

    stopping: set[asyncio.Future[None]] = set()

    def stop() -> None:
        if holder and not holder[0].should_stop and not stopping:
            stopping.add(asyncio.ensure_future(holder[0].stop()))

    app = build_app(cfg, processor, idle, stop)
    worker = Worker(
        app,
        loglevel=os.environ.get("VALORA_LOG_LEVEL", "warning"),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.spinner = None  # Faust's startup spinner writes terminal escapes into the CLI's output
    holder.append(worker)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            reason = worker.crash_reason or app.crash_reason
            raise WorkerCrashed(f"worker stopped: {reason or f'exit code {exc.code}'}") from None
    if processor.crash is not None:
        raise WorkerCrashed(f"worker stopped: {processor.crash}")
    processor.publish_totals()  # what the last batches touched
    return dict(metrics.summary)
