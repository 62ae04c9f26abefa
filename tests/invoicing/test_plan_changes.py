"""Plan changes mid-period and in-advance flat fees, through the close, against real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from invoicing.catalog import InvalidCatalog, apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.commands import get_invoice
from invoicing.db import make_engine, upgrade
from invoicing.plan_changes import PlanChangeRefused, PlanNotFound, change_plan
from invoicing.queries import list_invoices
from invoicing.subscriptions import SubscriptionNotFound, cancel_now, get_subscription
from invoicing.usage import running_totals
from schemas.errors import InvalidPlan


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _plan(code: str, timing: str, flat: str, unit: str | None = None, **extra: Any) -> dict[str, Any]:
    charges: list[dict[str, Any]] = [{"key": "base", "model": "flat", "amount": flat, "description": "Subscription"}]
    if unit is not None:
        charges.append({"key": "api", "meter": "api_calls", "model": "per_unit", "unit_amount": unit})
    return {
        "organization": "acme",
        "code": code,
        "currency": "USD",  # an organization's plans share its currency
        "interval": extra.pop("interval", "month"),
        "billing_timing": timing,
        "charges": charges,
        **extra,
    }


def _sub(sub_id: str, plan: str, start: str = "2026-04-01T00:00:00Z", **extra: Any) -> dict[str, Any]:
    return {"organization": "acme", "id": sub_id, "customer": "cus_1", "plan": plan, "start": start, **extra}


CATALOG: dict[str, Any] = {
    "organizations": [{"id": "acme", "name": "Acme Inc", "currency": "USD"}],
    "meters": [{"organization": "acme", "key": "api_calls", "event_type": "api_request", "aggregation": "count"}],
    "plans": [
        # Stripe's proration example: $10/month changed to $20/month, billed in advance.
        _plan("basic", "in_advance", "10"),
        _plan("premium", "in_advance", "20"),
        # Hybrid plans billed in arrears: a flat fee and metered calls at different prices.
        _plan("starter", "in_arrears", "30", "0.01"),
        _plan("scale", "in_arrears", "90", "0.002"),
        _plan("yearly", "in_arrears", "300", "0.01", interval="year"),
    ],
    "customers": [{"organization": "acme", "id": "cus_1", "name": "Globex"}],
    "subscriptions": [_sub("adv", "basic"), _sub("arr", "starter")],
}
NOW = utc(2026, 4, 1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url, pool_size=4)
    try:
        upgrade(eng)
        apply_catalog(eng, parse_catalog(CATALOG))
        yield eng
    finally:
        eng.dispose()


def _change(engine: Engine, sub: str, plan: str, at: datetime) -> dict[str, Any]:
    return change_plan(engine, "acme", sub, plan, at=at, now=NOW, actor="test", reason="upgrade")


def _close(engine: Engine, as_of: datetime) -> list[dict[str, Any]]:
    summary = close_due(engine, as_of=as_of, grace=timedelta(hours=1), clock=lambda: as_of)
    assert summary.failed == 0, summary.errors
    return [get_invoice(engine, i) for i in summary.invoice_ids]


def _usage(database_url: str, sub: str, segment: str, calls: int, latest: str) -> None:
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, segment_start, "
            "period_end, quantity, event_count, latest_time, closed) "
            "VALUES ('acme', %s, 'api_calls', '2026-04-01Z', %s, '2026-05-01Z', %s, %s, %s, false)",
            (sub, segment, calls, calls, latest),
        )


def _lines(invoice: dict[str, Any]) -> list[tuple[str, str, int, str, str]]:
    return [
        (line["line_key"], line["kind"], line["amount_minor"], line["service_start"][:10], line["service_end"][:10])
        for line in invoice["lines"]
    ]


def test_stripe_upgrade_halfway_bills_minus_5_and_plus_10_on_the_next_invoice(engine: Engine) -> None:
    # The in-advance subscription's opening invoice bills April ahead, once its start has passed the grace.
    [opening] = [i for i in _close(engine, utc(2026, 4, 1, 1)) if i["subscription"] == "adv"]
    assert _lines(opening) == [("base@20260401T000000Z", "flat", 1000, "2026-04-01", "2026-05-01")]
    assert _close(engine, utc(2026, 4, 1, 1)) == []  # re-running changes nothing

    sub = _change(engine, "adv", "premium", utc(2026, 4, 16))  # halfway through 30-day April
    assert [(c["from"], c["to"], c["effective_at"]) for c in sub["plan_changes"]] == [
        ("basic", "premium", "2026-04-16T00:00:00Z")
    ]
    [april] = [i for i in _close(engine, utc(2026, 5, 1, 1)) if i["subscription"] == "adv"]
    assert _lines(april) == [
        ("base@20260416T000000Z:credit", "credit", -500, "2026-04-16", "2026-05-01"),  # unused basic time
        ("base@20260416T000000Z", "flat", 1000, "2026-04-16", "2026-05-01"),  # remaining premium time
        ("base@20260501T000000Z", "flat", 2000, "2026-05-01", "2026-06-01"),  # May on premium, in advance
    ]
    assert april["total_minor"] == 2500  # net +$5.00 for the change, plus May ahead


def test_in_arrears_change_splits_flat_fees_and_usage_at_the_instant(engine: Engine, database_url: str) -> None:
    at = utc(2026, 4, 11)  # 10 of 30 days on starter, 20 on scale
    _usage(database_url, "arr", "2026-04-01Z", 1000, "2026-04-10T23:00:00Z")
    _change(engine, "arr", "scale", at)
    _usage(database_url, "arr", "2026-04-11Z", 5000, "2026-04-30T00:00:00Z")
    running = {r["subscription"]: r for r in running_totals(engine, "acme", at=utc(2026, 4, 30))}["arr"]
    [april] = [i for i in _close(engine, utc(2026, 5, 1, 1)) if i["subscription"] == "arr"]
    assert _lines(april) == [
        ("base@20260401T000000Z", "flat", 1000, "2026-04-01", "2026-04-11"),  # $30 × 10/30
        ("api@20260401T000000Z", "usage", 1000, "2026-04-01", "2026-04-11"),  # 1000 × $0.01
        ("base@20260411T000000Z", "flat", 6000, "2026-04-11", "2026-05-01"),  # $90 × 20/30
        ("api@20260411T000000Z", "usage", 1000, "2026-04-11", "2026-05-01"),  # 5000 × $0.002
    ]
    # The running totals are the close's own lines.
    assert running["total_minor"] == april["total_minor"] == 9000
    assert [s["plan"] for s in running["segments"]] == ["starter", "scale"]
    assert running["plan"] == "scale" and running["meters"] == {"api_calls": "5000"}
    # May is on scale alone, billed as an ordinary period.
    [may] = [i for i in _close(engine, utc(2026, 6, 1, 1)) if i["subscription"] == "arr"]
    assert [(line["line_key"], line["amount_minor"]) for line in may["lines"]] == [("base", 9000), ("api", 0)]


def test_cancel_now_credits_the_unused_in_advance_time(engine: Engine) -> None:
    _close(engine, utc(2026, 4, 1, 1))  # the opening invoice: April's $10 ahead
    cancel_now(engine, "acme", "adv", now=utc(2026, 4, 25), actor="test", reason="leaving")
    [final] = [i for i in _close(engine, utc(2026, 4, 25, 1)) if i["subscription"] == "adv"]
    assert _lines(final) == [("base@20260425T000000Z:credit", "credit", -200, "2026-04-25", "2026-05-01")]  # 6/30
    assert get_subscription(engine, "acme", "adv")["status"] == "ended"


def test_an_in_advance_trial_opens_when_the_trial_ends(engine: Engine) -> None:
    catalog = {**CATALOG, "subscriptions": [_sub("trial", "basic", trial_end="2026-04-11T00:00:00Z")]}
    apply_catalog(engine, parse_catalog(catalog))
    assert get_subscription(engine, "acme", "trial")["next_close_at"] == "2026-04-11T00:00:00Z"
    [opening] = [i for i in _close(engine, utc(2026, 4, 11, 1)) if i["subscription"] == "trial"]
    assert [(line["amount_minor"], line["service_start"][:10]) for line in opening["lines"]] == [(1000, "2026-04-11")]
    # The trial anchors periods on its end: the first paid month is billed whole, ahead.


def test_refused_changes_name_the_reason_and_write_nothing(engine: Engine, database_url: str) -> None:
    with pytest.raises(PlanNotFound):
        _change(engine, "arr", "nope", utc(2026, 4, 10))
    with pytest.raises(SubscriptionNotFound):
        _change(engine, "ghost", "scale", utc(2026, 4, 10))
    with pytest.raises(PlanChangeRefused, match="already on plan 'starter'"):
        _change(engine, "arr", "starter", utc(2026, 4, 10))
    with pytest.raises(InvalidPlan, match="a change of interval starts a new period"):
        _change(engine, "arr", "yearly", utc(2026, 4, 10))
    with pytest.raises(PlanChangeRefused, match="outside"):
        _change(engine, "arr", "scale", utc(2026, 3, 10))
    _usage(database_url, "arr", "2026-04-01Z", 10, "2026-04-12T00:00:00Z")
    with pytest.raises(PlanChangeRefused, match="already counted"):
        _change(engine, "arr", "scale", utc(2026, 4, 12))  # usage at that instant is counted: no re-split
    assert get_subscription(engine, "acme", "arr")["plan_changes"] == []
    _change(engine, "arr", "scale", utc(2026, 4, 20))
    with pytest.raises(PlanChangeRefused, match="must take effect after it"):
        _change(engine, "arr", "starter", utc(2026, 4, 15))
    # The plan of the later change, asked for earlier: the reason is that later change, not "already on it".
    with pytest.raises(PlanChangeRefused, match="already has a change to plan 'scale' at 2026-04-20T00:00:00Z"):
        _change(engine, "arr", "scale", utc(2026, 4, 15))
    _close(engine, utc(2026, 5, 1, 1))
    with pytest.raises(PlanChangeRefused, match="already invoiced"):
        _change(engine, "arr", "starter", utc(2026, 4, 25))
    assert len(get_subscription(engine, "acme", "arr")["plan_changes"]) == 1


def test_the_same_inputs_give_the_same_invoices(engine: Engine, database_url: str) -> None:
    _usage(database_url, "arr", "2026-04-01Z", 1000, "2026-04-10T23:00:00Z")
    _change(engine, "arr", "scale", utc(2026, 4, 11))
    _change(engine, "adv", "premium", utc(2026, 4, 16))
    _close(engine, utc(2026, 5, 1, 1))
    first = list_invoices(engine, "acme")
    assert _close(engine, utc(2026, 5, 1, 1)) == []
    assert list_invoices(engine, "acme") == first


def test_the_catalog_may_correct_a_plan_until_it_is_billed(engine: Engine) -> None:
    moved = {**CATALOG, "subscriptions": [_sub("arr", "scale")]}
    apply_catalog(engine, parse_catalog(moved))  # nothing billed yet: a correction
    assert get_subscription(engine, "acme", "arr")["plan"] == "scale"
    _close(engine, utc(2026, 5, 1, 1))
    with pytest.raises(InvalidCatalog, match="valora subscriptions change-plan acme arr --plan starter"):
        apply_catalog(engine, parse_catalog({**CATALOG, "subscriptions": [_sub("arr", "starter")]}))
    assert get_subscription(engine, "acme", "arr")["plan"] == "scale"
