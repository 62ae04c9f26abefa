"""Credit notes for the time after a back-dated cancel.

A cancel whose end lies before periods that are already invoiced (`valora subscriptions
cancel ORG SUB --at T` with T in the past) leaves no final invoice to settle them: the close's
cursor is already past T. So the cancel itself, in its transaction, credits what those
invoices billed for time after T: every flat line (in arrears, or billed in advance) whose
service window reaches past T gets a credit note line for its amount times the share of its
window after T, rounded half up, never more than what remains of the line or the invoice.
One credit note per invoice (`invoicing.credit_notes`, the same numbering and caps).

Usage lines are left alone: the usage was recorded while the subscription was live. Drafts
are not credited (void and re-close them by hand); void and uncollectible invoices owe
nothing to credit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.credit_notes import CREDITABLE, LineBalance, PlannedLine, _credited_minor, _line_balances, _write
from rating import LineKind
from rating.periods import microseconds_between


@dataclass(frozen=True, slots=True)
class TimedLine:
    """An invoice line with its service window, as the unused-time planner sees it."""

    balance: LineBalance
    kind: str
    service_start: datetime
    service_end: datetime


def plan_unused_time(lines: Sequence[TimedLine], end: datetime, *, remaining_minor: int) -> list[PlannedLine]:
    """Credit note lines giving back what flat lines billed for time at or after `end` (pure).

    Each flat line reaching past `end` is credited its amount × (window after `end`) / (window),
    half up, capped by what remains of it and of the invoice (`remaining_minor`), in line order.
    """
    planned: list[PlannedLine] = []
    for line in lines:
        if (
            line.kind != LineKind.FLAT
            or line.service_end <= max(end, line.service_start)
            or line.balance.amount_minor <= 0
        ):
            continue
        whole = microseconds_between(line.service_start, line.service_end)
        after = microseconds_between(max(line.service_start, end), line.service_end)
        owed = (2 * line.balance.amount_minor * after + whole) // (2 * whole)  # half up, both positive
        take = min(owed, line.balance.remaining_minor, remaining_minor)
        if take > 0:
            description = f"Unused time from {end:%Y-%m-%d %H:%M} UTC: {line.balance.description}"
            planned.append(PlannedLine(description, take, line.balance))
            remaining_minor -= take
    return planned


def credit_time_after(
    session: Session,
    sub: m.Subscription,
    end: datetime,
    billed: tuple[datetime, datetime | None],
    *,
    now: datetime,
    actor: str,
) -> list[str]:
    """Issue a credit note on each issued or paid invoice of `sub` that billed time after `end`; their numbers.

    `billed` is the time flat fees were billed for before the cancel: from the subscription's
    paid start (its start, or its trial's end) to its old end (None: open). A line's window is
    narrowed to it, since a prorated flat line carries its whole period as its window. Runs
    inside the cancel's transaction; each invoice row is locked first, as
    `invoicing.credit_notes.credit_invoice` does.
    """
    billed_from, billed_until = billed
    invoices = session.scalars(
        select(m.Invoice)
        .where(
            m.Invoice.organization_id == sub.organization_id,
            m.Invoice.subscription_id == sub.id,
            m.Invoice.status.in_([s.value for s in CREDITABLE]),
            m.Invoice.period_end > end,
        )
        .order_by(m.Invoice.period_start, m.Invoice.id)
        .with_for_update()
    ).all()
    numbers: list[str] = []
    for inv in invoices:
        balances = {b.line_key: b for b in _line_balances(session, inv.id)}
        rows = session.execute(
            select(m.InvoiceLine.line_key, m.InvoiceLine.kind, m.InvoiceLine.service_start, m.InvoiceLine.service_end)
            .where(m.InvoiceLine.invoice_id == inv.id)
            .order_by(m.InvoiceLine.position)
        ).all()
        credited = _credited_minor(session, inv.id)
        timed = [
            TimedLine(
                balances[key], kind, max(start, billed_from), stop if billed_until is None else min(stop, billed_until)
            )
            for key, kind, start, stop in rows
        ]
        planned = plan_unused_time(timed, end, remaining_minor=inv.total_minor - credited)
        if planned:
            reason = f"subscription canceled as of {end:%Y-%m-%d %H:%M} UTC: unused time credited"
            note_id = _write(session, inv, planned, credited, now=now, actor=actor, reason=reason)
            numbers.append(session.get_one(m.CreditNote, note_id).number)
    return numbers
