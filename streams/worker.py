"""The worker: `usage.events` → validated, deduplicated totals in Postgres, hosted by Faust.

Faust runs the process (lifecycle, signals, timers: running-totals publishing and the
idle check). Ingestion reads with aiokafka's `getmany` in batches, not through a Faust
stream, whose per-event path measured ~7k events/s here. Batch N+1 is planned while batch
N commits (streams/processor.py); Kafka offsets are committed only behind Postgres, and
each newly assigned partition starts at the offset Postgres stored, so a crash or a
rebalance re-reads at most what the offset guard in streams/sink.py then drops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from aiokafka.structs import TopicPartition as AIOKafkaTopicPartition
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from faust.app.base import BootStrategy
from faust.worker import Worker
from prometheus_client import CollectorRegistry

from schemas.errors import ValoraError
from streams.batch import Record
from streams.metrics import WorkerMetrics
from streams.offsets import find_gaps, refusal, reset_to_earliest
from streams.processor import BatchProcessor, WorkerConfig
from streams.report import WorkerReport
from streams.sink import BatchResult

__all__ = ["BatchProcessor", "WorkerConfig", "WorkerCrashed", "ensure_topics", "run_worker"]

log = logging.getLogger("valora.worker")


class WorkerCrashed(ValoraError):
    code = "worker_crashed"


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


# Collect the youngest generation every 50,000 net allocations instead of 700: a batch allocates
# hundreds of thousands of short-lived objects that reference counting frees, and at the default
# the cycle collector re-scanned every batch in flight (and, without the freeze below, all of
# Faust and its dependencies) often enough to take half the worker's CPU.
_GC_THRESHOLDS = (50_000, 20, 20)
# The writing thread waits on Postgres a dozen times per batch and needs the GIL back each time,
# while the planning thread computes; CPython makes it wait up to the switch interval (5 ms by
# default) for the GIL, which made the write path, not the CPU, the limit (~63k against ~84k
# events/s in the 200k bench at 0.5 ms).
_SWITCH_INTERVAL_S = 0.0005
# Running totals may take at most a tenth of the wall time (see build_app's publish_totals).
_TOTALS_SHARE_INVERSE = 10


def _tune_interpreter() -> None:
    """Set the cycle collector and the GIL switch interval for the batch path.

    Called once the app and the consumer are up: what exists then lives as long as the process
    and is frozen out of collection. The batch path creates no reference cycles (tuples, dicts,
    Decimals freed by reference counting); the collector still runs, for what libraries leave.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    sys.setswitchinterval(_SWITCH_INTERVAL_S)


async def _end_offset(consumer: AIOKafkaConsumer, tp: Any) -> int | None:
    try:
        return (await consumer.end_offsets([tp])).get(tp)  # type: ignore[no-any-return]
    except KafkaError:
        return None


async def ingest_loop(
    cfg: WorkerConfig, processor: BatchProcessor, idle: IdleWatch | None, should_stop: Callable[[], bool]
) -> None:
    """Fetch batches with getmany, commit each to Postgres, then commit Kafka offsets behind it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.bootstrap,
        group_id=cfg.group,
        enable_auto_commit=False,
        # A position the log lost resets to its start, where the offset guard skips (never counts or
        # commits) what lies below the stored offset; check_log then finds the gap and pauses it.
        auto_offset_reset="earliest",
        max_poll_records=cfg.batch_max,
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=min(3000, cfg.session_timeout_ms // 3),
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    listener = _Rebalance(consumer, processor, idle)
    if idle is None:
        consumer.subscribe([cfg.events_topic], listener=listener)
        await consumer.start()
    else:
        # `--until-idle` reads every partition itself instead of joining the consumer group: a
        # group join waits out the broker's initial rebalance delay (3 s on Apache Kafka, 5 s on
        # Tansu) for a one-shot catch-up. Exactness does not rest on the group: each batch locks
        # its partitions' stored offsets in Postgres and drops what is already counted there.
        await consumer.start()
        partitions = [AIOKafkaTopicPartition(cfg.events_topic, p) for p in sorted(idle.targets)]
        consumer.assign(partitions)
        await listener.on_partitions_assigned(partitions)
    _tune_interpreter()
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
            if highwater is None:  # no fetch response recorded since the (re)assignment: ask the broker
                highwater = await _end_offset(consumer, tp)
            if highwater is not None:
                processor.metrics.lag.labels(str(tp.partition)).set(max(0, highwater - meta.offset))
        oldest_ms = min((rs[0].timestamp for rs in job[1].values() if rs), default=None)  # in order per partition
        if oldest_ms is not None and oldest_ms >= 0:
            processor.metrics.freshness.observe(max(0.0, time.time() - oldest_ms / 1000))
        try:
            await consumer.commit(commits)
        except KafkaError as exc:  # a rebalance took the partition: Postgres offsets still guard
            log.info("kafka offset commit skipped: %s", exc)

    try:
        while not should_stop():
            processor.heartbeat = time.monotonic()
            fetched = await consumer.getmany(timeout_ms=int(cfg.batch_within_s * 1000), max_records=cfg.batch_max)
            if processor.gaps or consumer.paused():
                fetched = await _hold_gaps(consumer, fetched, processor)
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


async def _hold_gaps(consumer: AIOKafkaConsumer, fetched: dict[Any, Any], processor: BatchProcessor) -> dict[Any, Any]:
    """Pause the partitions whose stored offset the log lost, dropping what was fetched from them;
    resume those that are no longer gaps (an operator reset them) at their stored offset."""
    gaps = processor.gaps
    cleared = [tp for tp in consumer.paused() if tp.partition not in gaps]
    if cleared:
        stored = await asyncio.get_running_loop().run_in_executor(None, processor.stored_offsets)
        for tp in cleared:
            consumer.seek(tp, stored.get(tp.partition, 0))
        consumer.resume(*cleared)
    held = [tp for tp in fetched if tp.partition in gaps]
    if held:
        consumer.pause(*held)
    return {tp: rs for tp, rs in fetched.items() if tp.partition not in gaps}


def check_log(cfg: WorkerConfig, processor: BatchProcessor) -> None:
    """Find partitions whose stored next offset the log no longer holds, and refuse them.

    With `reset_offsets` they are moved to the log start first. `--until-idle` raises;
    a running worker pauses them and reports (error line, `valora_worker_offset_gap`).

    Raises:
        OffsetsOutOfRange: in `until_idle` mode, when any partition is a gap.
    """
    stored = processor.stored_offsets()
    gaps = find_gaps(cfg.bootstrap, cfg.events_topic, stored)
    if gaps and cfg.reset_offsets:
        with processor.connection_for_reset() as conn:
            reset_to_earliest(conn, cfg.group, cfg.events_topic, gaps)
        for gap in gaps.values():
            log.warning("reset %s to its log start", gap.describe(cfg.events_topic))
        gaps = find_gaps(cfg.bootstrap, cfg.events_topic, processor.stored_offsets())
    for p in processor.gaps.keys() - gaps.keys():
        processor.metrics.offset_gap.labels(str(p)).set(0)
    if gaps and cfg.until_idle:
        raise refusal(cfg.events_topic, gaps)
    for p, gap in gaps.items():
        processor.metrics.offset_gap.labels(str(p)).set(1)
        log.error("partition paused: %s; run `valora worker --reset-offsets earliest`", gap.describe(cfg.events_topic))
    processor.gaps = gaps


def build_app(
    cfg: WorkerConfig,
    processor: BatchProcessor,
    idle: IdleWatch | None,
    stop: Callable[[], None],
    data_dir: str,
    report: WorkerReport | None = None,
) -> faust.App:
    """The Faust app hosting the worker: lifecycle, signals, timers, and the ingest task.

    Ingestion reads with aiokafka's getmany instead of a Faust stream: Faust's per-event
    stream path measured ~7k events/s on this hardware, a fraction of the goal.
    """
    app = faust.App(
        f"{cfg.group}-host",
        broker=f"kafka://{cfg.bootstrap}",
        store="memory://",
        datadir=data_dir,  # never `<app id>-data` in the working directory
        web_enabled=False,
        topic_allow_declare=False,
        broker_session_timeout=cfg.session_timeout_ms / 1000,
    )
    # Faust hosts the process; it reads nothing and writes nothing through Kafka itself. Without
    # its own consumer and producer it also skips joining a consumer group of its own, which took
    # ~6 s of every start (a 7-record `--until-idle` run: 18 s before, see ARCHITECTURE.md).
    app.boot_strategy = BootStrategy(app, enable_kafka=False, enable_web=False)
    state = {"stopping": False}

    @app.task  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def ingest() -> None:
        try:
            await ingest_loop(cfg, processor, idle, lambda: state["stopping"] or app.should_stop)
        except Exception as exc:  # surfaced as WorkerCrashed by run_worker
            processor.crash = exc
            stop()

    if report is not None:

        @app.timer(1.0)  # type: ignore[untyped-decorator]
        async def report_progress() -> None:
            report.tick()

    if idle is not None:

        @app.timer(0.25)  # type: ignore[untyped-decorator]
        async def check_idle() -> None:
            if idle.idle(processor.offsets):
                state["stopping"] = True
                processor.stop_reason = "idle"
                stop()

    else:

        @app.timer(cfg.offset_check_s)  # type: ignore[untyped-decorator]
        async def check_offsets() -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, check_log, cfg, processor)
            except Exception as exc:  # the broker or Postgres away: checked again on the next tick
                log.warning("offsets not checked: %s", exc)

    next_totals = [0.0]

    @app.timer(cfg.totals_interval_s)  # type: ignore[untyped-decorator]
    async def publish_totals() -> None:
        started = time.monotonic()
        if started < next_totals[0]:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, processor.publish_totals)
        except Exception as exc:  # running totals are a view: a failed tick is retried on the next
            log.warning("running totals not published: %s", exc)
        # Rating shares the interpreter with ingestion: when the touched totals take long to
        # rate (thousands of subscriptions a second), publish less often rather than slow ingest.
        next_totals[0] = started + _TOTALS_SHARE_INVERSE * (time.monotonic() - started)

    return app


class _Worker(Worker):  # type: ignore[misc]  # faust's Worker is untyped
    """Faust's worker, remembering which signal (SIGINT or SIGTERM) asked it to stop."""

    stop_reason: str | None = None

    def _schedule_shutdown(self, signal: Any) -> None:
        self.stop_reason = self.stop_reason or getattr(signal, "name", str(signal))
        super()._schedule_shutdown(signal)


def run_worker(
    cfg: WorkerConfig,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    serve: Callable[[CollectorRegistry, BatchProcessor], object] | None = None,
    live: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Run the Faust worker; with `until_idle`, return once everything present at start is committed.

    `serve` (the CLI's metrics and health listener) gets the registry and the processor, whose
    `heartbeat` and `crash` say whether the ingest loop turns. It logs a start line, progress while
    busy and a summary on stop (`streams.report`); `live` receives the progress line every second
    instead (a terminal's redrawn line).

    Raises:
        WorkerCrashed: the worker stopped on an error (one line for the CLI).
    """
    ensure_topics(
        cfg.bootstrap,
        {cfg.events_topic: cfg.partitions, cfg.dlq_topic: cfg.partitions, cfg.totals_topic: cfg.partitions},
        compacted=frozenset({cfg.totals_topic}),
    )
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    processor = BatchProcessor(cfg, metrics, clock)
    if serve is not None:
        serve(registry, processor)
    check_log(cfg, processor)
    idle: IdleWatch | None = None
    if cfg.until_idle:
        idle = IdleWatch(end_offsets(cfg.bootstrap, cfg.events_topic), cfg.idle_quiet_s)
        processor.offsets.update(processor.stored_offsets())
    holder: list[Worker] = []

    stopping: set[asyncio.Future[None]] = set()

    def stop() -> None:
        if holder and not holder[0].should_stop and not stopping:
            stopping.add(asyncio.ensure_future(holder[0].stop()))

    scratch = None if cfg.data_dir else tempfile.TemporaryDirectory(prefix="valora-worker-")
    if cfg.data_dir:
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    report = WorkerReport(cfg, metrics, live=live)
    app = build_app(cfg, processor, idle, stop, cfg.data_dir or scratch.name, report)  # type: ignore[union-attr]
    worker = _Worker(app, loglevel=cfg.log_level, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.spinner = None  # Faust's startup spinner writes terminal escapes into the CLI's output
    holder.append(worker)
    report.started()
    crashed: str | None = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            crashed = str(worker.crash_reason or app.crash_reason or f"exit code {exc.code}")
    finally:
        if scratch is not None:
            scratch.cleanup()
    if processor.crash is not None:
        crashed = str(processor.crash)
    report.stopped("error" if crashed else worker.stop_reason or processor.stop_reason or "stopped")
    if crashed:
        raise WorkerCrashed(f"worker stopped: {crashed}")
    processor.publish_totals()  # what the last batches touched
    return dict(metrics.summary)
