"""`valora bench pipeline`: end-to-end worker throughput, freshness and memory.

One run, on the same machine and broker, measures:

* `raw_consume_events_per_s`: a plain confluent-kafka consumer reading the topic,
  the ceiling for anything that reads it;
* `events_per_s`: the real worker (a `valora worker` subprocess) from its first
  committed batch to the last, dedup and Postgres writes included;
* `p99_freshness_ms`: with the worker caught up, events are produced at a steady
  5,000/s in 50 ms ticks, and a poller watches the running totals in Postgres; a tick
  is fresh when the totals include it;
* `worker_peak_rss_mb`: the worker's VmHWM from /proc at the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from sqlalchemy.engine import make_url

from bench.common import apply_synthetic_catalog
from invoicing.db import psycopg_connect_args, recreate_database
from schemas.errors import ValoraError
from streams.publish import publish
from streams.worker import ensure_topics
from valora.cli_common import services_for

ORGS = 1000
PARTITIONS = 8


def synthetic_events(n: int, *, seed: int, prefix: str, dup_share: float = 0.1) -> list[tuple[bytes, bytes]]:
    """n records over ORGS organizations; `dup_share` of them re-send an earlier event."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[tuple[bytes, bytes]] = []
    for i in range(n):
        if out and rng.random() < dup_share:
            out.append(out[rng.randrange(len(out))])
            continue
        org = f"org{rng.randrange(ORGS):04d}"
        when = start + timedelta(seconds=rng.randrange(30 * 86400))
        value = json.dumps(
            {
                "id": f"{prefix}{i}",
                "type": "api_request",
                "customer": "c0",
                "time": when.isoformat().replace("+00:00", "Z"),
                "properties": {"tokens": rng.randrange(1, 5000)},
            }
        ).encode()
        out.append((org.encode(), value))
    return out


def raw_consume_rate(bootstrap: str, topic: str, total: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 << 20,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen, started, deadline = 0, None, time.monotonic() + 300
    while seen < total and time.monotonic() < deadline:
        for msg in consumer.consume(10000, 1.0):
            if msg.error() is None:
                started = started or time.perf_counter()
                seen += 1
    consumer.close()
    return seen / (time.perf_counter() - (started or time.perf_counter()))


def _counters(conn: psycopg.Connection[Any], topic: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT coalesce(sum(next_offset), 0), coalesce(sum(accepted), 0) FROM consumer_offsets WHERE topic = %s",
        (topic,),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _freshness(
    bootstrap: str, topic: str, conn: psycopg.Connection[Any], *, rate: int, seconds: float, prefix: str
) -> list[float]:
    """Produce `rate` events/s in 50 ms ticks; return per-tick produce-to-visible latencies (ms)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    per_tick, ticks = rate // 20, int(seconds * 20)
    _, base = _counters(conn, topic)
    sent_at: list[tuple[int, float]] = []
    done = threading.Event()

    def produce() -> None:
        t0 = time.perf_counter()
        for k in range(ticks):
            for j in range(per_tick):
                org = f"org{(k * per_tick + j) % ORGS:04d}".encode()
                producer.produce(
                    topic,
                    key=org,
                    value=json.dumps(
                        {
                            "id": f"{prefix}f{k}_{j}",
                            "type": "api_request",
                            "customer": "c0",
                            "time": "2026-01-15T00:00:00Z",
                            "properties": {"tokens": 1},
                        }
                    ).encode(),
                )
            producer.flush()
            sent_at.append((base + (k + 1) * per_tick, time.perf_counter()))
            time.sleep(max(0.0, t0 + (k + 1) / 20 - time.perf_counter()))  # pacing the producer, not waiting on work
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    latencies: list[float] = []
    idx, deadline = 0, time.monotonic() + seconds + 60
    while time.monotonic() < deadline and (idx < ticks):
        _, accepted = _counters(conn, topic)
        now = time.perf_counter()
        while idx < len(sent_at) and accepted >= sent_at[idx][0]:
            latencies.append((now - sent_at[idx][1]) * 1000)
            idx += 1
        time.sleep(0.005)  # the poll interval of the measuring loop
    thread.join()
    return latencies


def run_pipeline_bench(settings: Any, *, events: int) -> dict[str, Any]:
    bootstrap, server_url = services_for(settings)
    # Named after the configured database, so benches pointed at different databases never share one.
    db_url = recreate_database(server_url, f"{make_url(server_url).database or 'valora'}_bench")
    apply_synthetic_catalog(db_url, ORGS)
    topic = f"bench.events.{int(time.time())}"
    ensure_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": PARTITIONS})
    prefix = f"b{int(time.time())}_"
    records = synthetic_events(events, seed=11, prefix=prefix)
    t0 = time.perf_counter()
    publish(bootstrap, topic, records)
    produce_rate = len(records) / (time.perf_counter() - t0)
    raw = raw_consume_rate(bootstrap, topic, len(records))

    env = {
        **os.environ,
        "VALORA_KAFKA_BOOTSTRAP": bootstrap,
        "VALORA_DATABASE_URL": db_url,
        "VALORA_EVENTS_TOPIC": topic,
        "VALORA_DLQ_TOPIC": f"{topic}.dlq",
        "VALORA_CONSUMER_GROUP": f"g-{topic}",
        "VALORA_TOPIC_PARTITIONS": str(PARTITIONS),
        "VALORA_SESSION_TIMEOUT_MS": "6000",
        "VALORA_FUTURE_TOLERANCE": "3650d",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "valora.cli", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    conn = psycopg.connect(**psycopg_connect_args(db_url), autocommit=True)
    try:
        first = last = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and worker.poll() is None:
            consumed, _ = _counters(conn, topic)
            now = time.perf_counter()
            if consumed and first is None:
                first = (now, consumed)
            if consumed >= len(records):
                last = now
                break
            time.sleep(0.01)  # the poll interval of the measuring loop
        if last is None or first is None:
            died = worker.poll() is not None and worker.stderr is not None
            detail = worker.stderr.read().decode()[-500:] if died and worker.stderr else "timeout"
            last_line = (detail.strip().splitlines() or ["no output"])[-1]
            raise ValoraError(f"bench: the worker did not catch up: {last_line}")
        rate = (len(records) - first[1]) / max(last - first[0], 1e-9)
        _, accepted = _counters(conn, topic)
        latencies = sorted(_freshness(bootstrap, topic, conn, rate=5000, seconds=10, prefix=prefix))
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
        rss = _peak_rss_mb(worker.pid)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        conn.close()
    return {
        "events": len(records),
        "accepted": accepted,
        "events_per_s": round(rate),
        "raw_consume_events_per_s": round(raw),
        "worker_vs_raw_ratio": round(rate / raw, 4),
        "produce_events_per_s": round(produce_rate),
        "p99_freshness_ms": round(p99, 1),
        "worker_peak_rss_mb": round(rss, 1),
    }
