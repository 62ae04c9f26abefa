"""A record Postgres refuses (valid JSON, e.g. a \\u0000 in a string) is dead-lettered alone; the rest commit."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from streams.publish import publish
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = pytest.mark.integration


def test_a_record_the_store_refuses_is_isolated(broker: str, database_url: str, topic_prefix: str,
                                               tmp_path: Path) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    good = [(b"acme", native_event(f"g{i}", "cus_1", "2026-01-20T00:00:00Z", path="/v1")) for i in range(40)]
    poison = (b"acme", json.dumps({"id": "bad", "type": "api_request", "customer": "cus_1",
                                   "time": "2026-01-20T00:00:00Z", "properties": {"path": "/v1\u0000"}}).encode())
    assert b"\\u0000" in poison[1]
    publish(broker, env["VALORA_EVENTS_TOPIC"], [*good[:20], poison, *good[20:]])
    out = run_cli(["worker", "--until-idle"], env).stdout
    assert "accepted 40" in out and "dead_lettered 1" in out
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        [(code, detail, value)] = conn.execute("SELECT code, detail, value FROM dead_letters").fetchall()
        total = conn.execute("SELECT quantity FROM usage_totals WHERE meter_key = 'api_calls'").fetchone()
    assert code == "rejected_by_store" and "Postgres refused" in detail and bytes(value) == poison[1]
    assert total is not None and total[0] == 40
