"""`valora scheduler` logs each job run and stops cleanly on SIGINT or SIGTERM with a summary."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.helpers import ISSUE_CATALOG, cli_env, run_cli, write_json

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_scheduler_logs_job_runs_and_stops_on_a_signal(
    sig: signal.Signals, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    out_path, err_path = tmp_path / "out.log", tmp_path / "err.log"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "valora.cli", "scheduler", "--tick", "0.5"], env=env, stdout=out, stderr=err
        )
        try:
            wait_for(lambda: err_path.read_text().count(" overdue job: ") >= 2, timeout_s=60,
                     message="no job runs logged")
            proc.send_signal(sig)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    log = err_path.read_text()
    assert "Traceback" not in log and " scheduler started: " in log
    for job in ("close", "issue_drafts", "trials", "overdue"):
        assert f" {job} job: " in log, log
    # The first run invoices every month since January 2026 that has ended; later runs find nothing due.
    assert re.search(r" close job: [1-9]\d* invoice\(s\), 0 deferred in ", log), log
    assert " close job: 0 invoice(s), 0 deferred in " in log
    assert out_path.read_text().startswith(f"scheduler stopped ({sig.name}): ")
