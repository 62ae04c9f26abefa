"""The scheduler: racing closers, a SIGKILL mid-close, a poison item, the lifecycle jobs, and its metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine

from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.db import make_engine, upgrade
from invoicing.metrics import SchedulerMetrics
from invoicing.scheduler import Scheduler, SchedulerConfig
from tests.conftest import wait_for
from tests.helpers import cli_env

pytestmark = pytest.mark.integration

ORGS = ("alpha", "beta", "gamma")
FEB_CLOSE = datetime(2026, 2, 1, 2, tzinfo=UTC)
DISTINCT_PERIODS = "SELECT count(DISTINCT (organization_id, subscription_id, period_start)) FROM invoices"


def _catalog() -> dict[str, object]:
    return {
        "organizations": [{"id": o, "name": o.title(), "currency": "EUR"} for o in ORGS],
        "meters": [{"organization": o, "key": "calls", "event_type": "call", "aggregation": "count"} for o in ORGS],
        "plans": [{"organization": o, "code": "p", "currency": "EUR", "interval": "month", "charges": [
            {"key": "base", "model": "flat", "amount": "10"},
            {"key": "calls", "meter": "calls", "model": "per_unit", "unit_amount": "0.01"}]} for o in ORGS],
    }


def _seed(url: str, per_org: int) -> None:
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers (organization_id, id, name) SELECT o, 'c' || i, 'C' || i "
            "FROM unnest(%s::text[]) o, generate_series(1, %s) i", (list(ORGS), per_org))
        conn.execute(
            "INSERT INTO subscriptions (organization_id, id, customer_id, plan_code, start_at, billing_anchor, "
            "next_period_start, next_close_at, close_attempts) SELECT organization_id, 's' || id, id, 'p', "
            "'2026-01-01Z', '2026-01-01Z', '2026-01-01Z', '2026-02-01Z', 0 FROM customers")
        conn.execute(
            "INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, segment_start, "
            "period_end, quantity, event_count, closed) SELECT organization_id, id, 'calls', '2026-01-01Z', "
            "'2026-01-01Z', '2026-02-01Z', "
            "length(id) * 100, 1, false FROM subscriptions")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url, pool_size=8)
    upgrade(eng)
    apply_catalog(eng, parse_catalog(_catalog()))
    yield eng
    eng.dispose()


def _invoice_numbers(url: str) -> dict[str, list[int]]:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        rows = conn.execute("SELECT organization_id, number FROM invoices").fetchall()
    out: dict[str, list[int]] = defaultdict(list)
    for org, number in rows:
        out[org].append(int(number.rsplit("-", 1)[1]))
    return {org: sorted(ns) for org, ns in out.items()}


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]


def _scheduler(engine: Engine, batch: int = 50) -> tuple[Scheduler, CollectorRegistry]:
    registry = CollectorRegistry()
    cfg = SchedulerConfig(batch_size=batch, job_budget_s=120)
    return Scheduler(engine, cfg, SchedulerMetrics(registry), lambda: FEB_CLOSE), registry


def test_two_schedulers_racing_invoice_each_period_once_and_number_gaplessly(engine: Engine,
                                                                           database_url: str) -> None:
    _seed(database_url, 1000)
    results = []
    schedulers = [_scheduler(engine)[0] for _ in range(2)]
    threads = [threading.Thread(target=lambda s=s: results.append(s.run(once=True))) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sum(r.invoices for r in results) == 3000
    assert all(r.invoices > 0 for r in results), "both schedulers should have claimed work"
    assert _count(database_url, DISTINCT_PERIODS) == 3000
    assert _invoice_numbers(database_url) == {org: list(range(1, 1001)) for org in ORGS}
    # A third run finds nothing left to do.
    assert _scheduler(engine)[0].run(once=True).invoices == 0


def test_scheduler_killed_mid_close_resumes_without_duplicates_or_gaps(engine: Engine, database_url: str,
                                                                       topic_prefix: str) -> None:
    _seed(database_url, 400)
    # With the real clock, every month from January to the last ended one is due: ~10 per subscription.
    env = cli_env(None, database_url, topic_prefix)
    cmd = [sys.executable, "-m", "valora.cli", "scheduler", "--batch", "100", "--tick", "0.2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _count(database_url, "SELECT count(*) FROM invoices") >= 500, timeout_s=120,
                 message="the scheduler wrote no invoices")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = _count(database_url, "SELECT count(*) FROM invoices")
    finished = subprocess.run([*cmd, "--once", "--budget", "600"], env=env, capture_output=True, text=True,
                              timeout=600, check=True)
    assert "scheduler stopped" in finished.stdout
    now = datetime.now(UTC) - timedelta(hours=1)
    months = (now.year - 2026) * 12 + now.month - 1  # periods [Jan 2026, first of this month)
    total = _count(database_url, "SELECT count(*) FROM invoices")
    assert partial < total == 3 * 400 * months
    assert _count(database_url, DISTINCT_PERIODS) == total
    for numbers in _invoice_numbers(database_url).values():
        assert numbers == list(range(1, len(numbers) + 1))


def test_a_poison_item_is_deferred_and_the_rest_invoiced(engine: Engine, database_url: str) -> None:
    _seed(database_url, 5)
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("UPDATE usage_totals SET quantity = -1 WHERE organization_id = 'beta' AND subscription_id = 'sc3'")
    scheduler, registry = _scheduler(engine)
    summary = scheduler.run(once=True)
    assert (summary.invoices, summary.failed) == (14, 1)
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        row = conn.execute("SELECT attempts, error, retry_at FROM close_failures").fetchone()
        assert row is not None and row[0] == 1 and "negative" in row[1] and row[2] > FEB_CLOSE
        conn.execute("UPDATE usage_totals SET quantity = 7 WHERE organization_id = 'beta' AND subscription_id = 'sc3'")
    # Before the retry time nothing happens; after it, the period is invoiced.
    assert scheduler.run(once=True).invoices == 0
    later = Scheduler(engine, SchedulerConfig(), SchedulerMetrics(CollectorRegistry()),
                      lambda: FEB_CLOSE + timedelta(hours=1))
    assert later.run(once=True).invoices == 1
    text = generate_latest(registry).decode()
    assert 'valora_scheduler_batch_deferred_total{job="close",reason="rating_failed"} 1.0' in text


def test_scheduler_serves_the_dashboard_metrics(engine: Engine, database_url: str) -> None:
    _seed(database_url, 3)
    scheduler, registry = _scheduler(engine)
    scheduler.run(once=True)
    text = generate_latest(registry).decode()
    for name in ("valora_scheduler_job_runs_total", "valora_scheduler_job_duration_seconds",
                 "valora_scheduler_job_timeouts_total", "valora_scheduler_job_errors_total",
                 "valora_scheduler_batch_processed_total", "valora_scheduler_batch_deferred_total",
                 "valora_scheduler_runloop_lag_seconds"):
        assert f"# TYPE {name}" in text, name
    assert 'valora_scheduler_batch_processed_total{job="close"} 9.0' in text
    for job in ("close", "issue_drafts", "trials", "overdue"):
        assert f'valora_scheduler_job_runs_total{{job="{job}"}} 1.0' in text, job
        assert f'valora_scheduler_job_duration_seconds_count{{job="{job}"}} 1.0' in text, job


def _statuses(url: str) -> dict[str, int]:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM subscriptions GROUP BY status").fetchall())


def test_scheduler_ends_trials_and_runs_dunning_each_tick(engine: Engine, database_url: str) -> None:
    _seed(database_url, 3)
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("UPDATE subscriptions SET status = 'trialing', trial_end = '2026-01-15Z' "
                     "WHERE organization_id = 'alpha' AND id = 'sc1'")
    scheduler, registry = _scheduler(engine)
    scheduler.run(once=True)
    assert _statuses(database_url) == {"active": 9}
    assert 'valora_scheduler_batch_processed_total{job="trials"} 1.0' in generate_latest(registry).decode()

    # January's invoices (issued Feb 1, 30 days' terms) are overdue on March 10.
    later = Scheduler(engine, SchedulerConfig(batch_size=4), SchedulerMetrics(registry := CollectorRegistry()),
                      lambda: datetime(2026, 3, 10, tzinfo=UTC))
    later.run(once=True)
    assert _statuses(database_url) == {"past_due": 9}
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("UPDATE invoices SET status = 'paid' WHERE organization_id = 'beta' AND subscription_id = 'sc2' "
                     "AND period_start = '2026-01-01Z'")
    later.run(once=True)
    assert _statuses(database_url) == {"past_due": 8, "active": 1}
    text = generate_latest(registry).decode()
    assert 'valora_scheduler_batch_processed_total{job="overdue"} 10.0' in text
    assert 'valora_scheduler_job_runs_total{job="overdue"} 2.0' in text
