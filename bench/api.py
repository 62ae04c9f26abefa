"""`valora bench api`: HTTP ingestion throughput and latency through one `valora api` process.

One run, on the same machine and broker:

* `raw_produce_events_per_s`: confluent-kafka producing the same events straight to a topic
  (the ceiling for anything that produces them);
* `events_per_s`, `p50_ms`, `p99_ms`: this process (separate from the API's) posts the events
  to `POST /v1/events` in batches of 100 with `CONCURRENCY` requests in flight; latency is per
  batch, from send to the 202 (which the API gives once Kafka acknowledged every event);
* `usage_p99_ms`: meanwhile another process reads `GET /v1/subscriptions/{id}/usage` in a loop.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from confluent_kafka import Producer
from sqlalchemy.engine import make_url

from bench.common import apply_synthetic_catalog
from invoicing.db import make_engine, recreate_database
from invoicing.operations.keys import create_key
from streams.worker import ensure_topics
from valora.cli_common import services_for

BATCH = 100
CONCURRENCY = 4  # measured: 4 in flight keep the API busy; more only queue (c=16: p50 50 ms)
PARTITIONS = 8
PORT = 18_480


def _batches(n: int, prefix: str) -> list[bytes]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        {
            "id": f"{prefix}{i}",
            "type": "api_request",
            "customer": "c0",
            "time": (start + timedelta(seconds=i % (28 * 86400))).isoformat().replace("+00:00", "Z"),
            "properties": {"tokens": i % 5000 + 1},
        }
        for i in range(n)
    ]
    return [json.dumps(events[i : i + BATCH]).encode() for i in range(0, n, BATCH)]


def _raw_produce_rate(bootstrap: str, topic: str, bodies: list[bytes]) -> float:
    values = [json.dumps(e).encode() for body in bodies for e in json.loads(body)]
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 2,
                         "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    started = time.perf_counter()
    for value in values:
        while True:
            try:
                producer.produce(topic, key=b"org0000", value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    return len(values) / (time.perf_counter() - started)


async def _post_loop(host: str, port: int, head: bytes, queue: list[bytes], latencies: list[float]) -> None:
    """One keep-alive HTTP/1.1 connection posting batches until the queue is empty.

    A few lines of asyncio streams instead of an HTTP client library: the driver shares the
    machine's two cores with the API, the broker and Postgres, so its own cost must stay small.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while queue:
            body = queue.pop()
            sent = time.perf_counter()
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
            if b" 202 " not in status_line or b'"rejected":0' not in answer:
                raise RuntimeError(f"POST /v1/events answered {status_line!r}: {answer[:200]!r}")
    finally:
        writer.close()


async def _drive(host: str, port: int, secret: str, bodies: list[bytes]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = list(reversed(bodies))
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {secret}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    started = time.perf_counter()
    await asyncio.gather(*(_post_loop(host, port, head, queue, latencies) for _ in range(CONCURRENCY)))
    return time.perf_counter() - started, latencies


def _read_usage(base: str, secret: str, stop: Any, out: Any) -> None:
    """Read the usage in a loop until `stop` is set, then send the latencies back (own process)."""
    latencies: list[float] = []
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {secret}"}, timeout=30) as client:
        while not stop.is_set():
            sent = time.perf_counter()
            response = client.get("/v1/subscriptions/s0/usage")
            latencies.append(time.perf_counter() - sent)
            if response.status_code not in (200, 409):
                raise RuntimeError(f"GET usage answered {response.status_code}: {response.text[:200]}")
            stop.wait(0.02)
    out.send(latencies)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else float("nan")


def _start_api(env: dict[str, str], base: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "valora.cli", "api", "--port", str(PORT)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"valora api exited: {(proc.stderr.read() if proc.stderr else b'').decode()[-500:]}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("valora api did not answer /healthz within 60 s")


def run_api_bench(settings: Any, *, events: int) -> dict[str, Any]:
    bootstrap, server_url = services_for(settings)
    db_url = recreate_database(server_url, f"{make_url(server_url).database or 'valora'}_bench_api")
    apply_synthetic_catalog(db_url, 1)
    engine = make_engine(db_url)
    secret = create_key(engine, "org0000", ["events:write", "usage:read"], now=datetime.now(UTC)).secret
    engine.dispose()
    run = uuid.uuid4().hex[:8]
    topic, raw_topic = f"bench-api-{run}.usage.events", f"bench-api-{run}.raw"
    ensure_topics(bootstrap, {topic: PARTITIONS, raw_topic: PARTITIONS})
    bodies = _batches(events, f"e{run}-")
    raw_rate = _raw_produce_rate(bootstrap, raw_topic, bodies)
    env = {**os.environ, "VALORA_DATABASE_URL": db_url, "VALORA_KAFKA_BOOTSTRAP": bootstrap,
           "VALORA_EVENTS_TOPIC": topic, "VALORA_TOPIC_PARTITIONS": str(PARTITIONS)}
    base = f"http://127.0.0.1:{PORT}"
    api = _start_api(env, base)
    # The usage reader runs in a process of its own, so its latencies are the API's, not this
    # process's GIL shared with the posting loop.
    ctx = multiprocessing.get_context("spawn")
    stop, (receive, send) = ctx.Event(), ctx.Pipe(duplex=False)
    reader = ctx.Process(target=_read_usage, args=(base, secret, stop, send), daemon=True)
    usage_latencies: list[float] = []
    try:
        reader.start()
        elapsed, latencies = asyncio.run(_drive("127.0.0.1", PORT, secret, bodies))
    finally:
        stop.set()
        if receive.poll(30):
            usage_latencies = receive.recv()
        reader.join(timeout=30)
        api.terminate()
        api.wait(timeout=30)
    return {
        "events": events,
        "events_per_s": round(events / elapsed),
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
        "raw_produce_events_per_s": round(raw_rate),
        "usage_reads": len(usage_latencies),
        "usage_p99_ms": _pct(usage_latencies, 0.99),
        "batch": BATCH,
        "concurrency": CONCURRENCY,
    }
