"""Running totals, the usage.totals topic, late usage, and every meter aggregation, end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.publish import publish
from tests.conftest import wait_for
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = pytest.mark.integration

CATALOG: dict[str, Any] = copy.deepcopy(ISSUE_CATALOG)
CATALOG["meters"] += [
    {"organization": "acme", "key": "peak_gb", "event_type": "storage", "aggregation": "max", "value_property": "gb"},
    {
        "organization": "acme",
        "key": "users",
        "event_type": "login",
        "aggregation": "unique_count",
        "value_property": "user.id",
        "filters": {"region": ["eu", "us"]},
    },
    {"organization": "acme", "key": "seats", "event_type": "seats", "aggregation": "latest", "value_property": "n"},
]
CATALOG["plans"].append(
    {
        "organization": "acme",
        "code": "mixed",
        "currency": "USD",
        "interval": "month",
        "charges": [
            {
                "key": "calls",
                "meter": "api_calls",
                "model": "graduated",
                "tiers": [{"up_to": "2", "unit_amount": "1"}, {"up_to": None, "unit_amount": "0.5"}],
            },
            {"key": "gb", "meter": "peak_gb", "model": "per_unit", "unit_amount": "0.1"},
            {"key": "users", "meter": "users", "model": "per_unit", "unit_amount": "2"},
            {"key": "seats", "meter": "seats", "model": "per_unit", "unit_amount": "10"},
        ],
    }
)
CATALOG["customers"].append({"organization": "acme", "id": "cus_2", "name": "Initech"})
CATALOG["subscriptions"].append(
    {"organization": "acme", "id": "sub_2", "customer": "cus_2", "plan": "mixed", "start": "2026-01-01T00:00:00Z"}
)


def _ev(i: str, type_: str, time: str, **props: Any) -> tuple[bytes, bytes]:
    return b"acme", native_event(i, "cus_2", time, type_, **props)


def _cloud(i: str, source: str, time: str) -> tuple[bytes, bytes]:
    return b"acme", json.dumps(
        {
            "specversion": "1.0",
            "id": i,
            "source": source,
            "type": "api_request",
            "subject": "cus_2",
            "time": time,
            "data": {},
        }
    ).encode()


def _usage(env: dict[str, str], at: str) -> dict[str, Any]:
    [row] = json.loads(run_cli(["usage", "--org", "acme", "--customer", "cus_2", "--at", at, "--json"], env).stdout)
    return row  # type: ignore[no-any-return]


def _invoice(env: dict[str, str], period_start: str) -> dict[str, Any]:
    invoices = json.loads(run_cli(["invoices", "list", "--org", "acme", "--customer", "cus_2", "--json"], env).stdout)
    [inv] = [i for i in invoices if i["period_start"] == period_start]
    return inv  # type: ignore[no-any-return]


def test_aggregations_running_totals_and_late_usage(
    broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", CATALOG))], env)
    jan = [
        _ev("c1", "api_request", "2026-01-02T00:00:00Z"),
        _cloud("c2", "/svc/a", "2026-01-03T00:00:00Z"),
        _cloud("c2", "/svc/b", "2026-01-03T00:00:00Z"),  # same id, other source: a different event
        _cloud("c2", "/svc/a", "2026-01-04T00:00:00Z"),  # re-sent: counts once
        _ev("s1", "storage", "2026-01-05T00:00:00Z", gb="12.5"),
        _ev("s2", "storage", "2026-01-06T00:00:00Z", gb=40),
        _ev("s3", "storage", "2026-01-07T00:00:00Z", gb="7.25"),
        _ev("l1", "login", "2026-01-05T00:00:00Z", region="eu", user={"id": "u1"}),
        _ev("l2", "login", "2026-01-06T00:00:00Z", region="us", user={"id": "u1"}),
        _ev("l3", "login", "2026-01-06T00:00:00Z", region="us", user={"id": 2}),
        _ev("l4", "login", "2026-01-06T00:00:00Z", region="apac", user={"id": "u9"}),  # filtered out
        _ev("n2", "seats", "2026-01-20T00:00:00Z", n=7),
        _ev("n1", "seats", "2026-01-10T00:00:00Z", n=3),  # older: does not replace the latest
        _ev("n3", "seats", "2026-01-20T00:00:00Z", n=5),  # same time, larger id: wins the tie
    ]
    publish(broker, env["VALORA_EVENTS_TOPIC"], jan)
    run_cli(["worker", "--until-idle"], env)

    running = _usage(env, "2026-01-25T00:00:00Z")
    assert running["meters"] == {"api_calls": "3", "peak_gb": "40", "seats": "5", "users": "2"}
    # graduated calls: 2 × $1 + 1 × $0.50; 40 GB × 0.1; 2 users × $2; 5 seats × $10
    assert [line["amount_minor"] for line in running["lines"]] == [250, 400, 400, 5000]

    run_cli(["close", "--as-of", "2026-02-01T01:00:00Z"], env)
    january = _invoice(env, "2026-01-01T00:00:00Z")
    assert [line["amount_minor"] for line in january["lines"]] == [line["amount_minor"] for line in running["lines"]]
    assert january["total_minor"] == running["total_minor"] == 6050

    # Late January usage and February usage arrive after January closed.
    publish(
        broker,
        env["VALORA_EVENTS_TOPIC"],
        [
            _ev("late1", "api_request", "2026-01-30T00:00:00Z"),
            _ev("late2", "api_request", "2026-01-31T23:59:59Z"),
            _ev("f1", "api_request", "2026-02-01T00:00:00Z"),  # on the boundary: February
        ],
    )
    run_cli(["worker", "--until-idle"], env)
    late = json.loads(run_cli(["usage", "--org", "acme", "--late", "--json"], env).stdout)
    assert [(r["event"], r["meter"], r["billed_on_invoice"]) for r in late] == [
        ("late1", "api_calls", None),
        ("late2", "api_calls", None),
    ]
    assert _invoice(env, "2026-01-01T00:00:00Z") == january  # a closed invoice never changes

    run_cli(["close", "--as-of", "2026-03-01T01:00:00Z"], env)
    february = _invoice(env, "2026-02-01T00:00:00Z")
    adjustments = [line for line in february["lines"] if line["kind"] == "adjustment"]
    # Two more calls in January, priced where they fall: the tier above 2 units at $0.50 each.
    assert [(a["charge"], a["amount_minor"], a["service_start"]) for a in adjustments] == [
        ("calls", 100, "2026-01-01T00:00:00Z")
    ]
    assert "2026-01-01" in adjustments[0]["description"]
    billed = json.loads(run_cli(["usage", "--org", "acme", "--late", "--json"], env).stdout)
    assert {r["billed_on_invoice"] for r in billed} == {february["id"]}

    # The compacted usage.totals topic carries the running total per subscription and period.
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"{topic_prefix}read", "enable.auto.commit": False})
    consumer.assign([TopicPartition(env["VALORA_TOTALS_TOPIC"], p, 0) for p in range(3)])
    latest: dict[bytes, dict[str, Any]] = {}

    def read_totals() -> bool:
        for msg in consumer.consume(100, 0.5):
            if msg.error() is None:
                latest[msg.key()] = orjson.loads(msg.value())
        return b"acme/sub_2/2026-01-01T00:00:00Z" in latest

    try:
        wait_for(read_totals, timeout_s=30, message="no running total published for sub_2")
    finally:
        consumer.close()
    assert latest[b"acme/sub_2/2026-01-01T00:00:00Z"]["total_minor"] == 6050
    import msgspec

    from schemas.events import UsageTotal

    strict = msgspec.json.decode(orjson.dumps(latest[b"acme/sub_2/2026-01-01T00:00:00Z"]), type=UsageTotal)
    assert strict.meters["api_calls"] == "3"

