"""`valora worker` says what it is doing: a start line, and a summary when SIGINT or SIGTERM stops it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from streams.publish import publish
from tests.conftest import wait_for
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = pytest.mark.integration


def _accepted(database_url: str, topic: str) -> int:
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT coalesce(sum(accepted), 0) FROM consumer_offsets WHERE topic = %s", (topic,))
        return int(row.fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_worker_stops_cleanly_with_a_summary(
    sig: signal.Signals, broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    topic = env["VALORA_EVENTS_TOPIC"]
    publish(broker, topic, [(b"acme", native_event(f"e{i}", "cus_1", "2026-01-20T10:00:00Z")) for i in range(20)])
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "valora.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for(lambda: _accepted(database_url, topic) == 20, timeout_s=90, message="worker did not ingest")
            worker.send_signal(sig)
            assert worker.wait(timeout=60) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
    lines = log_path.read_text().splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert any(f" worker started: topic {topic} (group {env['VALORA_CONSUMER_GROUP']})" in line for line in lines)
    [summary] = [line for line in lines if " worker stopped (" in line]
    assert f"worker stopped ({sig.name}) after " in summary and "20 records" in summary and "accepted 20" in summary
