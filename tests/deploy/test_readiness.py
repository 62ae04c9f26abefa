"""The real worker and scheduler turn unready when their database goes away, and say why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from invoicing.db import psycopg_connect_args
from tests.conftest import wait_for
from tests.deploy.test_prometheus import free_port, http_get
from tests.helpers import ISSUE_CATALOG, cli_env, run_cli, write_json

pytestmark = pytest.mark.integration


def _readyz(port: int) -> tuple[int, dict[str, object]]:
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    return status, (json.loads(body) if status in (200, 503) else {})


@pytest.mark.parametrize("command", [["worker"], ["scheduler", "--tick", "1"]])
def test_readiness_follows_the_database(
    command: list[str], broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = cli_env(broker, database_url, topic_prefix, VALORA_METRICS_PORT=str(port))
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    log = (tmp_path / "process.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "valora.cli", *command], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _readyz(port)[0] == 200, timeout_s=60, interval_s=0.2,
                 message=f"{command[0]} never became ready")
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        # the database disappears (ours: the fixture made it for this test)
        admin = psycopg_connect_args(database_url) | {"dbname": "postgres", "connect_timeout": 5}
        with psycopg.connect(**admin, autocommit=True) as conn:
            name = make_url(database_url).database
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        wait_for(lambda: _readyz(port)[0] == 503, timeout_s=30, interval_s=0.2,
                 message=f"{command[0]} stayed ready without its database")
        status, body = _readyz(port)
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert status == 503 and checks["database"] != "ok" and "does not exist" in str(checks["database"])
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # alive: it retries, no restart needed
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_worker_turns_unready_when_its_broker_goes(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    """A broker of the test's own, stopped under the running worker: /readyz names the broker."""
    from valora.devservices import start_broker

    broker_proc, bootstrap = start_broker(tmp_path / "broker.log", detached=False)
    port = free_port()
    env = cli_env(bootstrap, database_url, topic_prefix, VALORA_METRICS_PORT=str(port))
    run_cli(["db", "upgrade"], env)
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "valora.cli", "worker"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _readyz(port)[0] == 200, timeout_s=60, interval_s=0.2, message="worker never became ready")
        broker_proc.terminate()
        broker_proc.wait(timeout=15)
        wait_for(lambda: _readyz(port)[0] == 503, timeout_s=30, interval_s=0.2,
                 message="the worker stayed ready without its broker")
        checks = _readyz(port)[1]["checks"]
        assert isinstance(checks, dict)
        assert checks["broker"] == f"broker {bootstrap} does not answer" and checks["database"] == "ok", checks
    finally:
        for p in (proc, broker_proc):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=15)
        log.close()
