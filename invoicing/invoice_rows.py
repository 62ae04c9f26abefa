"""Invoice rows: the lines a close bills and the bulk write of a batch's invoices.

`write_invoices` numbers a batch gaplessly (one sequence bump per organization, in item
order) and COPYs its invoices, lines and first status-history rows inside the batch's
transaction. With an organization's draft grace period the invoices are written as
unnumbered drafts that the scheduler issues later.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.lifecycle import BillingReason, InvoiceStatus
from invoicing.numbering import format_number, reserve_numbers
from rating import LineKind, Period, RatedLine, TierLine, WindowedLine
from schemas.plans import Plan


@dataclass(frozen=True, slots=True)
class BilledLine:
    """An invoice line as stored: a rated line, or an adjustment the close adds."""

    line_key: str
    charge: str
    kind: LineKind
    quantity: Decimal
    amount: Decimal
    amount_minor: int
    description: str
    service_start: datetime
    service_end: datetime
    details: dict[str, Any] | None = None

    @classmethod
    def from_rated(cls, line: RatedLine, period: Period) -> BilledLine:
        """A line of `rating.rate_plan`, whose service window is the whole period."""
        return cls._priced(line, period.start, period.end)

    @classmethod
    def from_windowed(cls, line: WindowedLine) -> BilledLine:
        """A line of the plan-change and in-advance functions, with its own service window."""
        return cls._priced(line, line.service_start, line.service_end)

    @classmethod
    def _priced(cls, line: RatedLine | WindowedLine, start: datetime, end: datetime) -> BilledLine:
        details = _tier_details(line.tiers)
        return cls(
            line.line_key,
            line.charge,
            line.kind,
            line.quantity,
            line.amount,
            line.amount_minor,
            line.description,
            start,
            end,
            details,
        )


def _tier_details(tiers: tuple[TierLine, ...]) -> dict[str, Any] | None:
    if not tiers:
        return None
    return {
        "tiers": [
            {
                "tier": t.tier,
                "quantity": str(t.quantity),
                "unit_amount": str(t.unit_amount),
                "flat_amount": str(t.flat_amount),
                "amount": str(t.amount),
            }
            for t in tiers
        ]
    }


@dataclass
class ClosingItem:
    """One (subscription, period) being closed in a batch, with the lines it will bill."""

    sub: m.Subscription
    plan: Plan
    period: Period
    invoice_id: str
    lines: list[BilledLine] = field(default_factory=list)
    billing_reason: BillingReason = BillingReason.PERIOD  # or OPENING: the first period's flat fees, billed ahead
    advance_billed_until: datetime | None = None  # the subscription's value once this invoice is written


def _numbers(session: Session, items: list[ClosingItem], orgs: dict[str, m.Organization], year: int) -> dict[str, str]:
    """Gapless numbers for the batch's invoices issued now, in item order within each organization.

    Invoices of an organization with a draft grace period are drafts: they get no number here.
    """
    per_org: dict[str, list[ClosingItem]] = defaultdict(list)
    for item in items:
        if orgs[item.sub.organization_id].draft_grace_s == 0:
            per_org[item.sub.organization_id].append(item)
    firsts = reserve_numbers(session, {org: len(its) for org, its in per_org.items()}, year)
    return {
        item.invoice_id: format_number(orgs[org].invoice_prefix, year, firsts[org] + offset)
        for org, its in per_org.items()
        for offset, item in enumerate(its)
    }


_INVOICE_COLS = (
    "id",
    "organization_id",
    "number",
    "customer_id",
    "subscription_id",
    "currency",
    "period_start",
    "period_end",
    "subtotal_minor",
    "total_minor",
    "status",
    "issued_at",
    "due_at",
    "issue_after",
    "billing_reason",
)
_LINE_COLS = (
    "invoice_id",
    "line_key",
    "position",
    "charge",
    "kind",
    "description",
    "quantity",
    "amount",
    "amount_minor",
    "service_start",
    "service_end",
    "details",
)
_HISTORY_COLS = ("invoice_id", "seq", "from_status", "to_status", "at", "reason", "actor")


def _status_and_dates(
    org: m.Organization, number: str | None, closed_at: datetime
) -> tuple[InvoiceStatus, datetime | None, datetime | None, datetime | None]:
    """(status, issued_at, due_at, issue_after) of a new invoice: issued now when numbered, else a draft."""
    if number is not None:
        return InvoiceStatus.ISSUED, closed_at, closed_at + timedelta(days=org.payment_terms_days), None
    return InvoiceStatus.DRAFT, None, None, closed_at + timedelta(seconds=org.draft_grace_s)


def write_invoices(
    session: Session, items: list[ClosingItem], orgs: dict[str, m.Organization], issued_at: datetime
) -> None:
    """COPY the batch's invoices, lines and first history rows (inside the batch's transaction).

    An organization without a draft grace period gets its invoices issued and numbered now;
    one with a grace gets drafts (no number, no dates) with `issue_after = issued_at + grace`,
    which the scheduler's `issue_drafts` job issues (`invoicing.commands.issue_due_drafts`).
    """
    numbers = _numbers(session, items, orgs, issued_at.year)
    raw = session.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        with cur.copy(f"COPY invoices ({', '.join(_INVOICE_COLS)}) FROM STDIN") as copy:
            for item in items:
                sub, total = item.sub, sum(line.amount_minor for line in item.lines)
                number = numbers.get(item.invoice_id)
                copy.write_row(
                    (
                        item.invoice_id,
                        sub.organization_id,
                        number,
                        sub.customer_id,
                        sub.id,
                        item.plan.currency,
                        item.period.start,
                        item.period.end,
                        total,
                        total,
                        *_status_and_dates(orgs[sub.organization_id], number, issued_at),
                        item.billing_reason,
                    )
                )
        with cur.copy(f"COPY invoice_lines ({', '.join(_LINE_COLS)}) FROM STDIN") as copy:
            for item in items:
                for pos, line in enumerate(item.lines, start=1):
                    copy.write_row(
                        (
                            item.invoice_id,
                            line.line_key,
                            pos,
                            line.charge,
                            line.kind,
                            line.description,
                            line.quantity,
                            line.amount,
                            line.amount_minor,
                            line.service_start,
                            line.service_end,
                            None if line.details is None else json.dumps(line.details),
                        )
                    )
        with cur.copy(f"COPY invoice_status_history ({', '.join(_HISTORY_COLS)}) FROM STDIN") as copy:
            for item in items:
                status = InvoiceStatus.ISSUED if item.invoice_id in numbers else InvoiceStatus.DRAFT
                reason = (
                    "period closed"
                    if item.billing_reason is BillingReason.PERIOD
                    else "subscription opened (billed in advance)"
                )
                copy.write_row((item.invoice_id, 1, None, status, issued_at, reason, "close"))
