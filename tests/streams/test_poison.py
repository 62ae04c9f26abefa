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


def test_events_for_a_customer_added_while_the_worker_runs_are_accepted(
    broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    import copy
    import subprocess
    import sys

    from tests.conftest import wait_for

    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    topic = env["VALORA_EVENTS_TOPIC"]

    def accepted() -> int:
        with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
            row = conn.execute("SELECT coalesce(sum(accepted), 0) FROM consumer_offsets").fetchone()
        return int(row[0]) if row else 0

    worker = subprocess.Popen([sys.executable, "-m", "valora.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        publish(broker, topic, [(b"acme", native_event("a1", "cus_1", "2026-01-20T00:00:00Z"))])
        wait_for(lambda: accepted() == 1, timeout_s=60, message="the first event was not accepted")
        grown = copy.deepcopy(ISSUE_CATALOG)
        grown["customers"].append({"organization": "acme", "id": "cus_new", "name": "New"})
        grown["subscriptions"].append({"organization": "acme", "id": "sub_new", "customer": "cus_new",
                                       "plan": "starter", "start": "2026-01-01T00:00:00Z"})
        run_cli(["catalog", "apply", str(write_json(tmp_path / "grown.json", grown))], env)
        publish(broker, topic, [(b"acme", native_event("n1", "cus_new", "2026-01-20T00:00:00Z"))])
        wait_for(lambda: accepted() == 2, timeout_s=30, message="the new customer's event was not accepted")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
