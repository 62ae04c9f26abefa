"""`valora bench close`: invoices per second when closing N subscriptions.

Set-up (not timed): a fresh database, 1,000 organizations on a plan with a flat fee
and three usage charges (per_unit, graduated, volume), N subscriptions spread over
them, and January usage totals for every meter. Timed: `close_due` for January, the
same code `valora close` and the scheduler run, in `valora close`'s batches of 2,000.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import apply_synthetic_catalog
from invoicing.close import close_due
from invoicing.db import make_engine, psycopg_connect_args, recreate_database
from valora.cli import CLOSE_BATCH
from valora.cli_common import services_for

ORGS = 1000


def _seed_subscriptions(db_url: str, subscriptions: int) -> None:
    per_org = -(-subscriptions // ORGS)
    with psycopg.connect(**psycopg_connect_args(db_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers (organization_id, id, name) "
            "SELECT format('org%%s', lpad(o::text, 4, '0')), 'b' || i, 'Bench ' || i "
            "FROM generate_series(0, %s - 1) o, generate_series(0, %s - 1) i WHERE o * %s + i < %s",
            (ORGS, per_org, per_org, subscriptions),
        )
        conn.execute(
            "INSERT INTO subscriptions (organization_id, id, customer_id, plan_code, start_at, billing_anchor, "
            "next_period_start, next_close_at, close_attempts) "
            "SELECT organization_id, 's' || id, id, 'usage', '2026-01-01Z', '2026-01-01Z', '2026-01-01Z', "
            "'2026-02-01Z', 0 FROM customers WHERE id LIKE 'b%%'"
        )
        conn.execute(
            "INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, segment_start, "
            "period_end, quantity, event_count, closed) "
            "SELECT s.organization_id, s.id, mk, '2026-01-01Z', '2026-01-01Z', '2026-02-01Z', "
            "(random() * 200000)::int, 1, false "
            "FROM subscriptions s, unnest(ARRAY['calls', 'tokens', 'peak']) mk WHERE s.id LIKE 'sb%%'"
        )


def run_close_bench(settings: Any, *, subscriptions: int) -> dict[str, Any]:
    _, server_url = services_for(settings)
    db_url = recreate_database(server_url, "valora_bench_close")
    apply_synthetic_catalog(db_url, ORGS, subscriptions_per_org=0)
    _seed_subscriptions(db_url, subscriptions)
    engine = make_engine(db_url)
    as_of = datetime(2026, 2, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    summary = close_due(engine, as_of=as_of, grace=timedelta(hours=1), clock=lambda: as_of, limit=CLOSE_BATCH)
    seconds = time.perf_counter() - started
    with engine.connect() as conn:
        from sqlalchemy import text

        lines = conn.execute(text("SELECT count(*) FROM invoice_lines")).scalar_one()
    engine.dispose()
    return {
        "subscriptions": subscriptions,
        "invoices": summary.invoices,
        "invoice_lines": lines,
        "failed": summary.failed,
        "seconds": round(seconds, 2),
        "invoices_per_s": round(summary.invoices / seconds),
        "goal_seconds_for_100k": 60,
        "projected_seconds_for_100k": round(100_000 / (summary.invoices / seconds), 1),
    }
