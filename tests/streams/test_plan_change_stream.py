"""A plan change mid-period, end to end: the CLI, the worker's routing by plan segment, the close."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.db import make_engine, upgrade
from invoicing.plan_changes import change_plan
from streams.batch import Record
from streams.publish import publish
from streams.sink import StaleSnapshot, write_batch
from streams.snapshot import load_snapshot
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = pytest.mark.integration

CATALOG: dict[str, Any] = copy.deepcopy(ISSUE_CATALOG)
CATALOG["plans"] = [
    {
        "organization": "acme",
        "code": "starter",
        "currency": "USD",
        "interval": "month",
        "charges": [
            {"key": "base", "model": "flat", "amount": "29"},
            {"key": "api", "meter": "api_calls", "model": "per_unit", "unit_amount": "0.01"},
        ],
    },
    {
        "organization": "acme",
        "code": "pro",
        "currency": "USD",
        "interval": "month",
        "charges": [
            {"key": "base", "model": "flat", "amount": "99"},
            {"key": "api", "meter": "api_calls", "model": "per_unit", "unit_amount": "0.005"},
            {"key": "tokens", "meter": "tokens", "model": "per_unit", "unit_amount": "0.00001"},
        ],
    },
]
CHANGE_AT = "2026-01-24T00:00:00Z"  # sub_1 runs from Jan 16: 8 days on starter, then 8 on pro


def _ev(i: str, time: str, type_: str = "api_request", **props: Any) -> tuple[bytes, bytes]:
    return b"acme", native_event(i, "cus_1", time, type_, **props)


def _lines(lines: list[dict[str, Any]]) -> list[tuple[str, int, str, str]]:
    return [(x["charge"], x["amount_minor"], x["service_start"][:10], x["service_end"][:10]) for x in lines]


def test_usage_splits_at_the_change_and_each_part_is_rated_under_its_plan(
    broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", CATALOG))], env)
    refused = run_cli(
        ["subscriptions", "change-plan", "acme", "sub_1", "--plan", "nope", "--at", CHANGE_AT], env, check=False
    )
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1 and "nope" in refused.stderr
    changed = json.loads(
        run_cli(
            ["subscriptions", "change-plan", "acme", "sub_1", "--plan", "pro", "--at", CHANGE_AT, "--json"], env
        ).stdout
    )
    assert [(c["from"], c["to"], c["effective_at"]) for c in changed["plan_changes"]] == [("starter", "pro", CHANGE_AT)]

    publish(
        broker,
        env["VALORA_EVENTS_TOPIC"],
        [
            _ev("a1", "2026-01-20T00:00:00Z"),
            _ev("a2", "2026-01-21T00:00:00Z"),
            _ev("a3", "2026-01-23T23:59:59Z"),
            _ev("t0", "2026-01-22T00:00:00Z", "llm_call", tokens=5000),  # starter bills no tokens
            _ev("a4", CHANGE_AT),  # exactly at the change: the new plan's
            _ev("a5", "2026-01-30T00:00:00Z"),
            _ev("t1", "2026-01-25T00:00:00Z", "llm_call", tokens=1000),
        ],
    )
    run_cli(["worker", "--until-idle"], env)

    [running] = json.loads(
        run_cli(["usage", "--org", "acme", "--customer", "cus_1", "--at", "2026-01-31T00:00:00Z", "--json"], env).stdout
    )
    assert [(s["plan"], s["start"], s["meters"]) for s in running["segments"]] == [
        ("starter", "2026-01-16T00:00:00Z", {"api_calls": "3"}),
        ("pro", CHANGE_AT, {"api_calls": "2", "tokens": "1000"}),
    ]
    run_cli(["close", "--as-of", "2026-02-01T01:00:00Z"], env)
    [invoice] = json.loads(run_cli(["invoices", "list", "--org", "acme", "--json"], env).stdout)
    assert _lines(invoice["lines"]) == [
        ("base", 748, "2026-01-16", "2026-01-24"),  # $29 × 8/31
        ("api", 3, "2026-01-16", "2026-01-24"),  # 3 × $0.01
        ("base", 2555, "2026-01-24", "2026-02-01"),  # $99 × 8/31
        ("api", 1, "2026-01-24", "2026-02-01"),  # 2 × $0.005
        ("tokens", 1, "2026-01-24", "2026-02-01"),  # 1000 × $0.00001
    ]
    assert invoice["total_minor"] == running["total_minor"] == 748 + 3 + 2555 + 1 + 1
    assert _lines(invoice["lines"]) == _lines(running["lines"])


def test_a_batch_routed_before_a_change_is_planned_again(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        apply_catalog(engine, parse_catalog(CATALOG))
        before = load_snapshot(engine)
        at = datetime(2026, 1, 24, tzinfo=UTC)
        change_plan(engine, "acme", "sub_1", "pro", at=at, now=at, actor="test", reason="upgrade")
        records = [Record(0, 0, b"acme", native_event("t1", "cus_1", "2026-01-25T00:00:00Z", "llm_call", tokens=7))]
        kwargs: dict[str, Any] = {
            "group": "g",
            "topic": "events",
            "now": datetime(2026, 1, 26, tzinfo=UTC),
            "future_tolerance": timedelta(minutes=5),
        }
        with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
            with pytest.raises(StaleSnapshot):
                write_batch(conn, records, before, **kwargs)  # the old snapshot knows no tokens charge
            result = write_batch(conn, records, load_snapshot(engine), **kwargs)
            assert result.accepted == 1
            rows = conn.execute(
                "SELECT meter_key, segment_start, quantity, latest_time FROM usage_totals "
                "WHERE subscription_id = 'sub_1'"
            ).fetchall()
        assert rows == [("tokens", at, 7, datetime(2026, 1, 25, tzinfo=UTC))]
    finally:
        engine.dispose()
