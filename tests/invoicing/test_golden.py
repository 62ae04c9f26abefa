"""Golden invoices: the same persisted inputs give byte-identical invoice JSON.

Representative cases: a hybrid plan (flat + usage with free units and a minimum),
tiered usage (graduated with flat fees, volume, package) in JPY and BHD, a prorated
start, a late-usage adjustment on the next invoice, and a plan change mid-period from
an in-arrears plan to an in-advance one. Each run builds them in two
fresh databases through the real close and compares the JSON with each other and with
tests/golden/invoices.json. Regenerate on purpose with `pytest --update-golden`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.db import make_engine, upgrade
from invoicing.plan_changes import change_plan
from invoicing.queries import list_invoices

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "invoices.json"
ORGS = {"hybrid": "USD", "tiered": "JPY", "dinar": "BHD", "switch": "USD"}

CATALOG: dict[str, Any] = {
    "organizations": [{"id": org, "name": org.title(), "currency": cur, "payment_terms_days": 10}
                      for org, cur in ORGS.items()],
    "meters": [{"organization": org, "key": key, "event_type": key, "aggregation": "sum", "value_property": "n"}
               for org in ORGS for key in ("calls", "gb", "seats", "sms")],
    "plans": [
        {"organization": "hybrid", "code": "pro", "currency": "USD", "interval": "month", "charges": [
            {"key": "base", "model": "flat", "amount": "49.00"},
            {"key": "calls", "meter": "calls", "model": "per_unit", "unit_amount": "0.002", "free_units": "1000",
             "minimum_amount": "10"},
        ]},
        {"organization": "tiered", "code": "grid", "currency": "JPY", "interval": "month", "charges": [
            {"key": "gb", "meter": "gb", "model": "graduated", "tiers": [
                {"up_to": "5", "unit_amount": "700", "flat_amount": "1000"}, {"up_to": None, "unit_amount": "650"}]},
            {"key": "seats", "meter": "seats", "model": "volume", "tiers": [
                {"up_to": "10", "unit_amount": "1200"}, {"up_to": None, "unit_amount": "1000", "flat_amount": "500"}]},
            {"key": "sms", "meter": "sms", "model": "package", "package_size": "100", "package_amount": "500"},
        ]},
        {"organization": "dinar", "code": "basic", "currency": "BHD", "interval": "month", "charges": [
            {"key": "base", "model": "flat", "amount": "12.345"},
            {"key": "calls", "meter": "calls", "model": "per_unit", "unit_amount": "0.0015"},
        ]},
        # A plan change mid-January from an in-arrears plan to one billed in advance.
        {"organization": "switch", "code": "lite", "currency": "USD", "interval": "month", "charges": [
            {"key": "base", "model": "flat", "amount": "20"},
            {"key": "calls", "meter": "calls", "model": "per_unit", "unit_amount": "0.01"},
        ]},
        {"organization": "switch", "code": "plus", "currency": "USD", "interval": "month",
         "billing_timing": "in_advance", "charges": [
            {"key": "base", "model": "flat", "amount": "50"},
            {"key": "calls", "meter": "calls", "model": "per_unit", "unit_amount": "0.005"},
        ]},
    ],
    "customers": [{"organization": org, "id": "c1", "name": "First"} for org in ORGS],
    "subscriptions": [
        {"organization": "hybrid", "id": "s1", "customer": "c1", "plan": "pro", "start": "2026-01-01T00:00:00Z"},
        {"organization": "tiered", "id": "s1", "customer": "c1", "plan": "grid", "start": "2026-01-01T00:00:00Z"},
        # Starts on the 10th with a month-start anchor: January's flat fee is prorated 22/31.
        {"organization": "dinar", "id": "s1", "customer": "c1", "plan": "basic", "start": "2026-01-10T00:00:00Z",
         "billing_anchor": "2026-01-01T00:00:00Z"},
        {"organization": "switch", "id": "s1", "customer": "c1", "plan": "lite", "start": "2026-01-01T00:00:00Z"},
    ],
}
USAGE = [("hybrid", "calls", "3500"), ("tiered", "gb", "12.5"), ("tiered", "seats", "12"),
         ("tiered", "sms", "250"), ("dinar", "calls", "1234"), ("switch", "calls", "400")]
SWITCH_AT = datetime(2026, 1, 15, 12, tzinfo=UTC)  # lite for 14.5 of January's 31 days, plus for 16.5
CLOSES = [datetime(2026, 2, 1, 1, tzinfo=UTC), datetime(2026, 3, 1, 1, tzinfo=UTC)]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _build(engine: Engine, url: str) -> str:
    """Catalog, January usage, the January close, late January usage, the February close."""
    apply_catalog(engine, parse_catalog(json.loads(json.dumps(CATALOG))))
    change_plan(engine, "switch", "s1", "plus", at=SWITCH_AT, now=SWITCH_AT, actor="golden", reason="upgrade")
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        for org, meter, qty in USAGE:
            conn.execute("INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, "
                         "segment_start, period_end, quantity, event_count, closed) VALUES (%s, 's1', %s, "
                         "'2026-01-01Z', '2026-01-01Z', '2026-02-01Z', %s, 1, false)", (org, meter, qty))
        conn.execute("INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, "
                     "segment_start, period_end, quantity, event_count, closed) VALUES ('switch', 's1', 'calls', "
                     "'2026-01-01Z', %s, '2026-02-01Z', 600, 1, false)", (SWITCH_AT,))
    close_due(engine, as_of=CLOSES[0], grace=timedelta(hours=1), clock=lambda: CLOSES[0])
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("INSERT INTO late_usage (organization_id, dedup_key, subscription_id, meter_key, period_start, "
                     "period_end, segment_start, value, aggregation, event_time, event_id) VALUES ('tiered', "
                     "'late-1', 's1', 'sms', '2026-01-01Z', '2026-02-01Z', '2026-01-01Z', 60, 'sum', "
                     "'2026-01-31Z', 'late-1')")
    close_due(engine, as_of=CLOSES[1], grace=timedelta(hours=1), clock=lambda: CLOSES[1])
    return json.dumps({org: list_invoices(engine, org) for org in ORGS}, indent=1, sort_keys=False) + "\n"


def test_golden_invoices(engine: Engine, database_url: str, pg_admin_url: str,
                         request: pytest.FixtureRequest) -> None:
    first = _build(engine, database_url)
    # A second, independent database from the same inputs gives the same bytes.
    with psycopg.connect(pg_admin_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS valora_golden_twin WITH (FORCE)")
        admin.execute("CREATE DATABASE valora_golden_twin")
    twin_url = database_url.rsplit("/", 1)[0] + "/valora_golden_twin"
    twin = make_engine(twin_url)
    try:
        upgrade(twin)
        assert _build(twin, twin_url) == first
    finally:
        twin.dispose()
        with psycopg.connect(pg_admin_url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS valora_golden_twin WITH (FORCE)")
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(first)
    assert GOLDEN.exists(), "no golden file yet: run `pytest tests/invoicing/test_golden.py --update-golden`"
    assert first == GOLDEN.read_text(), "invoice JSON changed; if intended, rerun with --update-golden and review"
