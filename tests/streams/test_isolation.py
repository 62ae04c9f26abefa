"""Per-record isolation in the write path, and records past Kafka's message size, against the real stack.

* Any exception while one record's share of a batch is written (here an injected
  ZeroDivisionError, standing for any bug or arithmetic failure) dead-letters that record
  alone, `unprocessable`, naming the error; the rest of the batch commits.
* A record over `MAX_RECORD_BYTES` is dead-lettered `too_large`, and its DLQ message,
  which Kafka could not carry, says `value_omitted` (the value is in `dead_letters`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

import streams.processor as processor_module
from streams.batch import Record, plan_batch
from streams.decode import MAX_RECORD_BYTES
from streams.metrics import WorkerMetrics
from streams.processor import BatchProcessor, WorkerConfig
from streams.worker import ensure_topics
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json
from tests.streams.conftest import Stack, read_dlq

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOW = datetime(2026, 1, 25, tzinfo=UTC)
POISON = native_event("poison", "cus_1", "2026-01-20T00:00:00Z", path="/explode")


def test_an_exception_writing_one_record_dead_letters_it_alone(
    broker: str, database_url: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    ensure_topics(broker, {env["VALORA_DLQ_TOPIC"]: 1})
    real_write = processor_module.write_batch

    def failing_write(conn: Any, records: Any, snapshot: Any, **kw: Any) -> Any:
        plan = kw.pop("plan") or plan_batch(records, snapshot, now=kw["now"], future_tolerance=kw["future_tolerance"])
        if any(rec.value == POISON for _, rec in plan.events):
            raise ZeroDivisionError("the poison record's share of the write failed")
        return real_write(conn, records, snapshot, plan=plan, **kw)

    monkeypatch.setattr(processor_module, "write_batch", failing_write)
    cfg = WorkerConfig(bootstrap=broker, database_url=database_url, events_topic=env["VALORA_EVENTS_TOPIC"],
                       dlq_topic=env["VALORA_DLQ_TOPIC"], group=env["VALORA_CONSUMER_GROUP"])
    processor = BatchProcessor(cfg, WorkerMetrics(CollectorRegistry()), lambda: NOW)
    values = [native_event(f"g{i}", "cus_1", "2026-01-20T00:00:00Z", path="/v1") for i in range(30)]
    values.insert(11, POISON)
    try:
        result = processor.process([Record(0, offset, b"acme", value) for offset, value in enumerate(values)])
    finally:
        if processor.conn is not None:
            processor.conn.close()
        processor._sqlalchemy().dispose()

    assert (result.received, result.accepted, result.duplicates) == (31, 30, 0)
    [dead] = result.dead_letters
    assert (dead.offset, dead.code.value) == (11, "unprocessable") and "ZeroDivisionError" in dead.detail
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT \"offset\", code FROM dead_letters").fetchall() == [(11, "unprocessable")]
        assert conn.execute("SELECT quantity FROM usage_totals WHERE meter_key = 'api_calls'").fetchone() == (30,)
        assert conn.execute("SELECT next_offset FROM consumer_offsets").fetchone() == (31,)


def test_a_record_past_the_size_limit_is_dead_lettered_with_its_value_kept_in_postgres(
    stack_factory: Any,
) -> None:
    stack: Stack = stack_factory()
    stack.setup(ISSUE_CATALOG)
    big = native_event("big", "cus_1", "2026-01-20T00:00:00Z", blob="x" * MAX_RECORD_BYTES)
    prod = Producer({"bootstrap.servers": stack.broker, "message.max.bytes": 4_000_000})
    prod.produce(stack.topic, key=b"acme", value=big)
    prod.produce(stack.topic, key=b"acme", value=native_event("small", "cus_1", "2026-01-20T00:00:00Z"))
    assert prod.flush(30) == 0

    out = run_cli(["worker", "--until-idle"], stack.env)
    assert "accepted 1" in out.stdout and "dead_lettered 1" in out.stdout, out.stdout
    with stack.connect() as conn:
        [(code, value)] = conn.execute("SELECT code, value FROM dead_letters").fetchall()
    assert code == "too_large" and bytes(value) == big
    [msg] = read_dlq(stack, distinct=1)
    reason = json.loads(dict(msg.headers() or [])["valora-reason"])
    assert reason["code"] == "too_large" and reason["value_omitted"] is True and msg.value() is None
