"""A cancel back-dated over invoiced periods credits the time after its end automatically."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from invoicing.cancel_credits import TimedLine, plan_unused_time
from invoicing.close import close_due
from invoicing.commands import get_invoice
from invoicing.credit_notes import LineBalance
from invoicing.queries import list_invoices
from invoicing.subscriptions import cancel_now

pytestmark = pytest.mark.integration

JAN1, FEB1, MAR1 = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 2, 3))


def _timed(amount: int, start: datetime, end: datetime, kind: str = "flat", credited: int = 0) -> TimedLine:
    return TimedLine(LineBalance("base", "Base", amount, credited), kind, start, end)


def test_unused_time_is_the_share_of_each_flat_window_after_the_end() -> None:
    end = datetime(2026, 1, 24, tzinfo=UTC)
    lines = [
        _timed(1497, datetime(2026, 1, 16, tzinfo=UTC), FEB1),  # 8 of 16 days: 748.5 → 749
        _timed(500, JAN1, FEB1, kind="usage"),  # usage is not time
        _timed(2900, FEB1, MAR1, credited=1000),  # wholly after: what remains of it
        _timed(300, JAN1, datetime(2026, 1, 10, tzinfo=UTC)),  # wholly before
    ]
    planned = plan_unused_time(lines, end, remaining_minor=10_000)
    assert [p.amount_minor for p in planned] == [749, 1900]
    assert [p.amount_minor for p in plan_unused_time(lines, end, remaining_minor=1000)] == [749, 251]


def test_back_dated_cancel_credits_the_invoiced_time_after_it(engine: Engine, issued_id: str) -> None:
    close_due(engine, as_of=MAR1 + timedelta(hours=1), grace=timedelta(hours=1), clock=lambda: MAR1)
    january = get_invoice(engine, issued_id)
    assert [line["amount_minor"] for line in january["lines"] if line["charge"] == "base"] == [1497]  # 16 of 31 days
    sub = cancel_now(
        engine, "acme", "sub_1", now=datetime(2026, 1, 24, tzinfo=UTC), actor="ops", reason="closed on the 24th"
    )
    assert sub["status"] == "ended" and len(sub["credit_notes_issued"]) == 2
    assert get_invoice(engine, issued_id)["credited_minor"] == 749  # 8 of the 16 billed days
    [february] = [
        i for i in (get_invoice(engine, i) for i in _invoice_ids(engine)) if i["period_start"] == "2026-02-01T00:00:00Z"
    ]
    assert february["credited_minor"] == february["total_minor"] - sum(
        line["amount_minor"] for line in february["lines"] if line["kind"] != "flat"
    )


def _invoice_ids(engine: Engine) -> list[str]:
    return [i["id"] for i in list_invoices(engine, "acme")]
