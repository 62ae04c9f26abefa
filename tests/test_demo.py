"""`valora demo` on the test broker and Postgres: its own topics, and a demo.env that leads into "Using it"."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.helpers import cli_env, run_cli

pytestmark = pytest.mark.integration

PRODUCTION_TOPICS = {"usage.events", "usage.events.dlq", "usage.totals"}


def _topics(broker: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": broker}).list_topics(timeout=15).topics)


def _env_file(path: Path) -> dict[str, str]:
    exports = [shlex.split(line)[1] for line in path.read_text().splitlines() if line.startswith("export ")]
    return dict(item.split("=", 1) for item in exports)


def test_demo_uses_its_own_topics_and_points_the_next_commands_at_its_data(
    broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = cli_env(broker, database_url, topic_prefix, VALORA_STATE_DIR=str(state))
    before = _topics(broker)
    demo_db = f"{make_url(database_url).database}_demo"
    try:
        out = run_cli(["demo", "--events", "300"], env, timeout_s=300).stdout
        assert "invoices             3" in out and ". " in out and "demo.env" in out

        created = _topics(broker) - before
        assert created and all(name.startswith("demo.") for name in created), created
        assert not created & PRODUCTION_TOPICS
        assert {name.split(".", 2)[2] for name in created} == PRODUCTION_TOPICS  # demo.<run>.usage.events, ...

        # What `. .valora/demo.env` sets: the demo's database and topics (and the broker, as one was given).
        exports = _env_file(state / "demo.env")
        assert make_url(exports["VALORA_DATABASE_URL"]).database == demo_db
        assert exports["VALORA_EVENTS_TOPIC"] in created and exports["VALORA_TOTALS_TOPIC"] in created
        follow = {**env, **exports}
        listed = json.loads(run_cli(["invoices", "list", "--org", "acme", "--json"], follow).stdout)
        assert [i["number"] for i in listed] == ["ACME-2026-000001", "ACME-2026-000002", "ACME-2026-000003"]
        assert run_cli(["invoices", "show", "ACME-2026-000002"], follow).stdout.startswith("ACME-2026-000002  in_")
        assert list(tmp_path.parent.glob("*-host-data")) == [] and list(Path.cwd().glob("*-host-data")) == []
    finally:
        admin = make_url(database_url).set(drivername="postgresql", database="postgres")
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(demo_db)))
