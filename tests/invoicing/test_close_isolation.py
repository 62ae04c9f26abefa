"""One subscription's bad data fails its own period only: the close invoices everyone else.

Each test seeds three organizations (alpha, beta, gamma) with three subscriptions each,
poisons one of beta's in a way the issue found, closes January and checks that the poisoned
period is in `close_failures` with a clear reason, the other eight are invoiced with gapless
numbers, and `valora close` says so and exits non-zero for as long as the period fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.db import make_engine, upgrade
from invoicing.metrics import SchedulerMetrics
from invoicing.scheduler import Scheduler, SchedulerConfig
from tests.helpers import cli_env, run_cli

pytestmark = pytest.mark.integration

ORGS = ("alpha", "beta", "gamma")
AS_OF = datetime(2026, 2, 1, 2, tzinfo=UTC)
POISONED = ("beta", "sc2")


def _catalog() -> dict[str, object]:
    return {
        "organizations": [{"id": o, "name": o.title(), "currency": "EUR"} for o in ORGS],
        "meters": [{"organization": o, "key": "calls", "event_type": "call", "aggregation": "sum",
                    "value_property": "n"} for o in ORGS],
        "plans": [{"organization": o, "code": "p", "currency": "EUR", "interval": "month", "charges": [
            {"key": "base", "model": "flat", "amount": "10"},
            {"key": "calls", "meter": "calls", "model": "per_unit", "unit_amount": "0.01"}]} for o in ORGS],
        "customers": [{"organization": o, "id": f"c{i}", "name": f"C{i}"} for o in ORGS for i in range(1, 4)],
        "subscriptions": [{"organization": o, "id": f"sc{i}", "customer": f"c{i}", "plan": "p",
                           "start": "2026-01-01T00:00:00Z"} for o in ORGS for i in range(1, 4)],
    }


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url, pool_size=4)
    try:
        upgrade(eng)
        apply_catalog(eng, parse_catalog(_catalog()))
        with _pg(database_url) as conn:
            conn.execute(
                "INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, segment_start, "
                "period_end, quantity, event_count, closed) SELECT organization_id, id, 'calls', '2026-01-01Z', "
                "'2026-01-01Z', '2026-02-01Z', 100, 1, false FROM subscriptions")
        yield eng
    finally:
        eng.dispose()


def _pg(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url.replace("+psycopg", ""), autocommit=True)


def _poison_usage(url: str, quantity: str) -> None:
    with _pg(url) as conn:
        conn.execute("UPDATE usage_totals SET quantity = %s::numeric WHERE organization_id = %s "
                     "AND subscription_id = %s", (quantity, *POISONED))


def _close(engine: Engine) -> tuple[int, int, list[str]]:
    summary = close_due(engine, as_of=AS_OF, grace=timedelta(hours=1), clock=lambda: AS_OF, limit=2000)
    return summary.invoices, summary.failed, summary.errors


def _assert_rest_invoiced(url: str) -> None:
    with _pg(url) as conn:
        rows = conn.execute("SELECT organization_id, subscription_id, number, total_minor FROM invoices "
                            "ORDER BY organization_id, number").fetchall()
        failures = conn.execute("SELECT organization_id, subscription_id, attempts FROM close_failures").fetchall()
    assert [(o, s) for o, s, _, _ in rows if (o, s) == POISONED] == []
    assert len(rows) == 8
    numbers: dict[str, list[str]] = {}
    for org, _, number, total in rows:
        numbers.setdefault(org, []).append(number)
        assert total == 1100  # 10 EUR + 100 × 0.01
    assert numbers["beta"] == ["BETA-2026-000001", "BETA-2026-000002"]
    assert len(numbers["alpha"]) == len(numbers["gamma"]) == 3
    assert failures == [(*POISONED, 1)]


def _failure_error(url: str) -> str:
    with _pg(url) as conn:
        row = conn.execute("SELECT error FROM close_failures").fetchone()
    assert row is not None
    return str(row[0])


def test_usage_that_overflows_bigint_fails_only_its_period(engine: Engine, database_url: str) -> None:
    _poison_usage(database_url, "1e20")  # 1e20 × 0.01 EUR = 1e20 cents: beyond bigint
    invoices, failed, errors = _close(engine)
    assert (invoices, failed) == (8, 1)
    assert errors[0].startswith("beta/sc2 2026-01-01: invoice_out_of_range:")
    assert "largest storable amount" in _failure_error(database_url)
    _assert_rest_invoiced(database_url)


def test_negative_usage_fails_only_its_period(engine: Engine, database_url: str) -> None:
    """Through the scheduler, whose gauge shows the failing period until it closes."""
    _poison_usage(database_url, "-5")
    registry = CollectorRegistry()
    scheduler = Scheduler(engine, SchedulerConfig(), SchedulerMetrics(registry), lambda: AS_OF)
    summary = scheduler.run_close_job()
    assert (summary.invoices, summary.failed) == (8, 1)
    assert "negative" in _failure_error(database_url)
    _assert_rest_invoiced(database_url)
    assert registry.get_sample_value("valora_close_failing_periods") == 1
    _poison_usage(database_url, "7")
    later = Scheduler(engine, SchedulerConfig(), SchedulerMetrics(registry := CollectorRegistry()),
                      lambda: AS_OF + timedelta(hours=1))
    assert later.run_close_job().invoices == 1
    assert registry.get_sample_value("valora_close_failing_periods") == 0


def test_a_plan_that_no_longer_validates_fails_only_its_subscriptions(engine: Engine, database_url: str) -> None:
    """A stored plan edited (or written before a bound existed) to an amount the catalog now refuses."""
    with _pg(database_url) as conn:
        conn.execute("INSERT INTO plans (organization_id, code, currency, spec) SELECT organization_id, 'huge', "
                     "currency, jsonb_set(spec, '{charges,0,amount}', '\"1e30\"') || '{\"code\": \"huge\"}' "
                     "FROM plans WHERE organization_id = 'beta'")
        conn.execute("UPDATE subscriptions SET plan_code = 'huge' WHERE organization_id = %s AND id = %s", POISONED)
    assert _close(engine)[:2] == (8, 1)
    assert _failure_error(database_url).startswith("invalid_plan: plan 'huge'")
    _assert_rest_invoiced(database_url)


def test_a_write_postgres_refuses_fails_only_its_invoice(engine: Engine, database_url: str) -> None:
    """An inconsistent store (here: the invoice id already taken by another row) is isolated by bisecting."""
    from invoicing.close import invoice_id

    taken = invoice_id(*POISONED, datetime(2026, 1, 1, tzinfo=UTC))
    with _pg(database_url) as conn:
        conn.execute("INSERT INTO invoices (id, organization_id, customer_id, subscription_id, currency, period_start, "
                     "period_end, subtotal_minor, total_minor, status, billing_reason) VALUES (%s, 'beta', 'c1', "
                     "'sc1', 'EUR', '2025-12-01Z', '2026-01-01Z', 0, 0, 'draft', 'period')", (taken,))
    invoices, failed, errors = _close(engine)
    assert (invoices, failed) == (8, 1)
    assert "refused by the database: UniqueViolation" in errors[0]
    with _pg(database_url) as conn:
        conn.execute("DELETE FROM invoices WHERE id = %s", (taken,))
    _assert_rest_invoiced(database_url)


def test_late_usage_that_cannot_be_rated_fails_only_its_period(engine: Engine, database_url: str) -> None:
    with _pg(database_url) as conn:
        conn.execute("UPDATE usage_totals SET closed = true")
        conn.execute("UPDATE subscriptions SET next_period_start = '2026-02-01Z', next_close_at = '2026-03-01Z'")
        conn.execute("INSERT INTO late_usage (organization_id, dedup_key, subscription_id, meter_key, period_start, "
                     "period_end, segment_start, value, aggregation, event_time, event_id) VALUES ('beta', 'e1', "
                     "'sc2', 'calls', '2026-01-01Z', '2026-02-01Z', '2026-01-01Z', -1000, 'sum', '2026-01-20Z', 'e1')")
    march = datetime(2026, 3, 1, 2, tzinfo=UTC)
    summary = close_due(engine, as_of=march, grace=timedelta(hours=1), clock=lambda: march)
    assert (summary.invoices, summary.failed) == (8, 1)
    assert summary.errors[0].startswith("beta/sc2 2026-02-01:")
    with _pg(database_url) as conn:
        assert conn.execute("SELECT billed_invoice_id FROM late_usage").fetchone() == (None,)  # kept for the retry


def test_valora_close_reports_failures_and_exits_non_zero_until_fixed(
    engine: Engine, database_url: str, topic_prefix: str
) -> None:
    _poison_usage(database_url, "-5")
    env = cli_env(None, database_url, topic_prefix)
    first = run_cli(["close", "--as-of", "2026-02-01T02:00:00Z"], env, check=False)
    assert first.returncode == 1
    assert first.stdout.startswith("closed 8 period(s)") and "1 period(s) failing" in first.stdout
    [line] = first.stderr.rstrip().splitlines()
    assert line.startswith("  failed: beta/sc2 2026-01-01: invalid_usage:") and "attempt 1" in line
    # Re-running before the retry time invoices nothing more and still fails: never a silent 0.
    again = run_cli(["close", "--as-of", "2026-02-01T02:00:10Z"], env, check=False)
    assert again.returncode == 1 and again.stdout.startswith("closed 0 period(s)")
    assert "beta/sc2" in again.stderr and "Traceback" not in again.stderr
    _poison_usage(database_url, "7")
    fixed = run_cli(["close", "--as-of", "2026-02-01T02:00:20Z", "--retry-failed"], env)  # before the backoff ends
    assert fixed.stdout.strip() == "closed 1 period(s) as of 2026-02-01T02:00:20+00:00"
    assert run_cli(["close", "--as-of", "2026-02-01T03:00:00Z"], env).stdout.startswith("closed 0 period(s)")
    listed = json.loads(run_cli(["invoices", "list", "--org", "beta", "--json"], env).stdout)
    assert [i["total_minor"] for i in listed if i["subscription"] == "sc2"] == [1007]


def test_close_refuses_an_as_of_in_the_future(engine: Engine, database_url: str, topic_prefix: str) -> None:
    env = cli_env(None, database_url, topic_prefix)
    refused = run_cli(["close", "--as-of", "2100-01-01T00:00:00Z"], env, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("valora: error: --as-of 2100-01-01T00:00:00+00:00 is in the future")
    assert "--allow-future" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    with _pg(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM invoices").fetchone() == (0,)
    future = datetime.now(UTC).replace(microsecond=0) + timedelta(days=62)
    simulated = run_cli(["close", "--as-of", future.isoformat(), "--allow-future"], env)
    cutoff = future - timedelta(hours=1)
    months = (cutoff.year - 2026) * 12 + cutoff.month - 1  # the periods [Jan 2026, the cutoff's month)
    assert simulated.stdout.startswith(f"closed {9 * months} period(s)")


def test_check_as_of_clamps_within_tolerance_and_refuses_beyond() -> None:
    from invoicing.close_safety import AsOfInFuture, check_as_of

    now = datetime(2026, 6, 1, tzinfo=UTC)
    tolerance = timedelta(minutes=5)
    assert check_as_of(now - timedelta(days=3), now, tolerance, allow_future=False) == now - timedelta(days=3)
    assert check_as_of(now + timedelta(minutes=4), now, tolerance, allow_future=False) == now
    with pytest.raises(AsOfInFuture) as caught:
        check_as_of(now + timedelta(minutes=6), now, tolerance, allow_future=False)
    assert caught.value.code == "as_of_in_future"
    assert check_as_of(datetime(2100, 1, 1, tzinfo=UTC), now, tolerance, allow_future=True).year == 2100
