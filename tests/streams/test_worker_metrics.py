"""The worker serves Prometheus metrics, labelled by reason and partition, never by tenant."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from streams.publish import publish
from tests.conftest import wait_for
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def test_worker_metrics(broker: str, database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    port = _free_port()
    env = cli_env(broker, database_url, topic_prefix, VALORA_METRICS_PORT=str(port))
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    events = [(b"acme", native_event(f"m{i}", "cus_1", "2026-01-20T00:00:00Z")) for i in range(50)]
    publish(broker, env["VALORA_EVENTS_TOPIC"], [*events, events[0], (b"acme", b"not json")])
    worker = subprocess.Popen([sys.executable, "-m", "valora.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "valora_worker_records_accepted_total 50.0" in _scrape(port), timeout_s=60,
                 message="worker metrics never showed the 50 accepted events")
        text = _scrape(port)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert "valora_worker_records_received_total 52.0" in text
    assert "valora_worker_records_duplicate_total 1.0" in text
    assert 'valora_worker_records_dead_lettered_total{reason="invalid_json"} 1.0' in text
    for name in ("valora_worker_batch_size", "valora_worker_batch_duration_seconds", "valora_worker_consumer_lag",
                 "valora_worker_late_usage_total"):
        assert f"# TYPE {name}" in text, name
    assert "acme" not in text and "cus_1" not in text  # no tenant ids as labels
