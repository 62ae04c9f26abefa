"""Hostile input against the real broker and Postgres: one tenant cannot stop, skew or hide another's usage.

* Poison records of organization A (each example of issue 10) are dead-lettered with their
  reason code, interleaved with A's and B's good events; one `worker --until-idle` run counts
  every good event exactly and conservation holds.
* A re-sent id with a different payload is counted once and recorded in `dedup_conflicts`.
* A topic recreated under the stored offsets is refused: `--until-idle` exits non-zero with one
  line, a running worker pauses only that partition (the others are counted) and sets a gauge,
  until the operator runs `worker --reset-offsets earliest`, which then counts the new records.
* `usage.totals` is published while the worker runs, not only when it exits.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.publish import publish
from streams.worker import ensure_topics
from tests.conftest import wait_for
from tests.helpers import run_cli
from tests.streams.conftest import (
    KV,
    Stack,
    WorkerPool,
    Workload,
    assert_exact,
    make_catalog,
    make_tenants,
    native,
    producer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JAN = "2026-01-10T00:00:00Z"


def deep_properties(depth: int) -> bytes:
    props = '{"a": ' * depth + "1" + "}" * depth
    return native("deep", "cus_1", JAN, "llm_call", {}).replace(b'"properties": {}', b'"properties": ' + props.encode())


def cloud(event_id: str, source: str, customer: str, tokens: str) -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id, "source": source, "type": "llm_call",
                       "subject": customer, "time": JAN, "data": {"tokens": json.loads(tokens)}}).encode()


def poison(org: str) -> list[tuple[bytes, bytes, str]]:
    """(key, value, reason code): every way one tenant's record used to stop, skew or slip past the worker."""
    key = org.encode()
    raw_tokens = '{"id": "%s", "type": "llm_call", "customer": "cus_1", "time": "%s", "properties": {"tokens": %s}}'
    return [
        (key, deep_properties(1000), "too_deep"),
        (key, b"[" * 100_000, "too_deep"),
        (key, native("huge-string", "cus_1", JAN, "llm_call", {"tokens": "9e999999"}), "value_out_of_range"),
        (key, (raw_tokens % ("huge-number", JAN, "9e999999")).encode(), "value_out_of_range"),
        (key, (raw_tokens % ("priced-1e20", JAN, "1e20")).encode(), "value_out_of_range"),
        (key, (raw_tokens % ("tiny", JAN, "1e-999999")).encode(), "value_out_of_range"),
        (key, (raw_tokens % ("bigint", JAN, "1" + "0" * 5000)).encode(), "value_out_of_range"),
        (key, native("negative", "cus_1", JAN, "llm_call", {"tokens": -5}), "negative_value"),
        (key, native("ce:svc\x1fc1", "cus_1", JAN, "llm_call", {"tokens": 1}), "schema"),  # a forged CloudEvent key
        (key, json.dumps({"specversion": "1.0", "id": "c9", "type": "llm_call"}).encode(), "schema"),
        (key, native("i" * 3000, "cus_1", JAN, "llm_call", {"tokens": 1}), "too_large"),  # past Postgres' index row
    ]


def test_poison_records_of_one_tenant_never_stop_or_skew_another(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    tenants = make_tenants(2)
    a = tenants[0].org  # the noisy tenant; tenants[1] only sends good events
    stack.setup(make_catalog(tenants))
    work = Workload(tenants, seed=10)
    good = work.valid(600)

    # A's records that must count: "specversion" only as text inside properties, and a CloudEvent
    # whose id equals a native id (distinct namespaces: both count).
    extra: list[KV] = [
        (a.encode(), native("spec-text", "cus_1", JAN, "llm_call", {"tokens": 7, "note": "specversion 1.0"})),
        (a.encode(), native("c1", "cus_1", JAN, "llm_call", {"tokens": 2})),
        (a.encode(), cloud("c1", "svc", "cus_1", "3")),
    ]
    work.totals[(a, "sub_1", "tokens")] += 12
    work.records += 3
    work.accepted += 3
    work.other_events += 3

    # re-sends of A's events with a different payload: counted once, each recorded as a conflict
    llm = [s for s in work.sent if s.org == a and s.tokens is not None][:4]
    conflicting = [(a.encode(), native(s.event_id, s.customer, s.time, s.type_, {"tokens": float(s.tokens or 0) + 9}))
                   for s in llm]
    conflicting.append((a.encode(), cloud("c1", "svc", "cus_1", "300")))
    work.records += len(conflicting)
    work.duplicates += len(conflicting)

    bad = poison(a)
    work.records += len(bad)
    work.dead_lettered += len(bad)
    stream = good[:300] + extra + [(k, v) for k, v, _ in bad] + good[300:] + conflicting
    assert publish(stack.broker, stack.topic, stream) == work.records

    out = run_cli(["worker", "--until-idle"], stack.env)
    assert "Traceback" not in out.stderr
    assert_exact(stack, work)  # B's totals, A's good events, conservation: all exact
    assert f"conflicts {len(conflicting)}" in out.stdout, out.stdout
    with stack.connect() as conn:
        codes = Counter(c for (c,) in conn.execute("SELECT code FROM dead_letters").fetchall())
        conflicts = conn.execute("SELECT organization_id, dedup_key FROM dedup_conflicts").fetchall()
    assert codes == Counter(code for _, _, code in bad)
    assert sorted(conflicts) == sorted([(a, s.event_id) for s in llm] + [(a, "ce:svc\x1fc1")])


def read_totals(stack: Stack, consumer: Consumer) -> dict[str, Any]:
    """Latest running total per key read so far from `usage.totals`."""
    latest: dict[str, Any] = {}
    for msg in consumer.consume(num_messages=1000, timeout=0.5):
        if msg.error() is None and msg.value():
            latest[msg.key().decode()] = json.loads(msg.value())
    return latest


def test_running_totals_are_published_while_the_worker_runs(
    stack_factory: Callable[..., Stack], workers: WorkerPool
) -> None:
    stack = stack_factory()
    tenants = make_tenants(1)
    stack.setup(make_catalog(tenants))
    totals_topic = stack.env["VALORA_TOTALS_TOPIC"]
    worker = workers.start(stack.env, "totals")
    work = Workload(tenants, seed=5)
    publish(stack.broker, stack.topic, work.valid(30))
    stack.wait_received(30, timeout_s=90)
    expected = {k[1]: v for k, v in work.totals.items() if k[2] == "api_calls"}

    consumer = Consumer({"bootstrap.servers": stack.broker, "group.id": f"{stack.group}-totals-reader",
                         "enable.auto.commit": False})
    seen: dict[str, Any] = {}
    try:
        wait_for(lambda: totals_topic in consumer.list_topics(timeout=10).topics, timeout_s=30,
                 message="usage.totals was never created")
        partitions = consumer.list_topics(totals_topic, timeout=10).topics[totals_topic].partitions
        consumer.assign([TopicPartition(totals_topic, p, OFFSET_BEGINNING) for p in partitions])

        def published() -> bool:
            seen.update(read_totals(stack, consumer))
            got = {t["subscription"]: Decimal(t["meters"].get("api_calls", "0")) for t in seen.values()}
            return all(got.get(sub) == qty for sub, qty in expected.items())

        wait_for(published, timeout_s=30, interval_s=0, message=f"running totals not published: {seen}")
    finally:
        consumer.close()
    assert worker.alive(), "totals must be published while the worker runs, not when it exits"
    assert WorkerPool.terminate(worker) == 0


def produce_to(stack: Stack, partition: int, records: list[KV]) -> None:
    """Produce to one partition explicitly (the worker does not care where an organization's records land)."""
    prod = producer(stack.broker)
    for key, value in records:
        prod.produce(stack.topic, key=key, value=value, partition=partition)
    assert prod.flush(30) == 0


def recreate_topic(stack: Stack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.broker})
    for fut in admin.delete_topics([stack.topic], operation_timeout=15).values():
        fut.result(timeout=15)
    wait_for(lambda: stack.topic not in admin.list_topics(timeout=10).topics, timeout_s=30)
    ensure_topics(stack.broker, {stack.topic: int(stack.env["VALORA_TOPIC_PARTITIONS"])})


def test_a_topic_recreated_under_the_stored_offsets_is_refused_paused_and_reset(
    stack_factory: Callable[..., Stack], workers: WorkerPool
) -> None:
    """`--until-idle` refuses (one line, non-zero); a running worker pauses only that partition; the reset counts it."""
    stack = stack_factory()
    tenants = make_tenants(2)
    stack.setup(make_catalog(tenants))
    work = Workload(tenants, seed=8)
    produce_to(stack, 0, work.valid(20))
    run_cli(["worker", "--until-idle"], stack.env)
    recreate_topic(stack)
    produce_to(stack, 0, work.valid(3))  # below partition 0's stored next offset (20)
    produce_to(stack, 2, work.valid(15))  # partition 2 never had an offset: nothing is lost there

    refused = run_cli(["worker", "--until-idle"], stack.env, check=False)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr
    assert "[0]: stored next offset 20 is past the end of the log" in lines[0], lines
    assert "--reset-offsets earliest" in lines[0]
    assert stack.received() == 20  # nothing counted, nothing skipped

    worker = workers.start(stack.env, "gap", metrics=True)
    stack.wait_received(35, timeout_s=90, message="partition 2 must be read while partition 0 is paused")
    wait_for(lambda: worker.metric('valora_worker_offset_gap{partition="0"}') == 1, timeout_s=30)
    assert worker.alive() and "partition paused" in worker.log() and "[0]: stored next offset 20" in worker.log()
    assert stack.received() == 35  # partition 0's three records wait for the operator
    WorkerPool.terminate(worker)

    out = run_cli(["worker", "--until-idle", "--reset-offsets", "earliest"], stack.env)
    assert "accepted 3" in out.stdout, out.stdout
    assert_exact(stack, work)
