"""Period close: rate every billing period that has ended and write its invoice.

A period [start, end) is due once `end <= as_of - grace`. Each (subscription,
period) closes in its own transaction, which:

1. claims the subscription row (`FOR UPDATE SKIP LOCKED`, so concurrent closers
   never double-bill and never wait on each other),
2. skips the period if its invoice exists (re-running a close changes nothing),
3. marks the period's usage totals closed (creating zero rows for unused meters)
   and reads the final quantities in the same statement, so an event the worker
   commits afterwards is diverted to late usage instead of being lost,
4. rates with `rating.rate_plan`, adds adjustment lines for late usage of earlier
   periods, and inserts the invoice with the next gapless number.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from invoicing import models as m
from rating import RatedLine, from_minor, rate_charge, rate_plan
from rating.periods import Period, period_containing
from schemas.plans import Plan, load_plan


@dataclass(frozen=True, slots=True)
class BilledLine:
    """An invoice line as stored: a rated line, or an adjustment the close adds."""

    line_key: str
    charge: str
    kind: str
    quantity: Decimal
    amount: Decimal
    amount_minor: int
    description: str
    service_start: datetime
    service_end: datetime
    details: dict[str, Any] | None = None

    @classmethod
    def from_rated(cls, line: RatedLine, period: Period) -> BilledLine:
        details = {"tiers": [{k: str(v) for k, v in asdict(t).items()} for t in line.tiers]} if line.tiers else None
        return cls(
            line.line_key,
            line.charge,
            line.kind.value,
            line.quantity,
            line.amount,
            line.amount_minor,
            line.description,
            period.start,
            period.end,
            details,
        )


@dataclass
class CloseSummary:
    invoices: int = 0
    skipped_existing: int = 0
    skipped_locked: int = 0
    invoice_ids: list[str] = field(default_factory=list)


def invoice_id(org: str, subscription: str, period_start: datetime) -> str:
    """Deterministic id: the same (subscription, period) always names the same invoice."""
    digest = hashlib.sha256(f"{org}\x1f{subscription}\x1f{period_start.isoformat()}".encode()).hexdigest()
    return f"in_{digest[:24]}"


def due_periods(sub: m.Subscription, plan: Plan, cutoff: datetime) -> Iterator[Period]:
    """Periods of a subscription that ended at or before the cutoff, oldest first."""
    period = period_containing(sub.billing_anchor, plan.interval, sub.start_at, plan.interval_count)
    while period.end <= cutoff and (sub.end_at is None or period.start < sub.end_at):
        yield period
        period = period_containing(sub.billing_anchor, plan.interval, period.end, plan.interval_count)


def close_due(
    engine: Engine, *, as_of: datetime, grace: timedelta, clock: Callable[[], datetime], organization: str | None = None
) -> CloseSummary:
    """Close every due period of every subscription (optionally of one organization)."""
    cutoff = as_of - grace
    summary = CloseSummary()
    with Session(engine) as session:
        query = select(m.Subscription).order_by(m.Subscription.organization_id, m.Subscription.id)
        if organization is not None:
            query = query.where(m.Subscription.organization_id == organization)
        subs = list(session.scalars(query))
        plans = {(p.organization_id, p.code): load_plan(p.spec) for p in session.scalars(select(m.Plan))}
        done = set(
            session.execute(
                select(m.Invoice.subscription_id, m.Invoice.organization_id, m.Invoice.period_start)
            ).tuples()
        )
    for sub in subs:
        plan = plans[(sub.organization_id, sub.plan_code)]
        for period in due_periods(sub, plan, cutoff):
            if (sub.id, sub.organization_id, period.start) in done:
                summary.skipped_existing += 1
                continue
            outcome = close_period(engine, sub.organization_id, sub.id, period, issued_at=clock())
            if outcome is None:
                summary.skipped_locked += 1
            elif outcome == "exists":
                summary.skipped_existing += 1
            else:
                summary.invoices += 1
                summary.invoice_ids.append(outcome)
    return summary


def _close_totals(session: Session, sub: m.Subscription, plan: Plan, period: Period) -> dict[str, Decimal]:
    meters = sorted({ch.meter for ch in plan.charges if ch.meter})
    if not meters:
        return {}
    rows = session.execute(
        text(
            "INSERT INTO usage_totals AS t (organization_id, subscription_id, meter_key, period_start, period_end, "
            "quantity, event_count, closed) SELECT :org, :sub, mk, :ps, :pe, 0, 0, true "
            "FROM unnest(CAST(:meters AS text[])) AS mk "
            "ON CONFLICT (organization_id, subscription_id, meter_key, period_start) DO UPDATE SET closed = true "
            "RETURNING meter_key, quantity"
        ),
        {"org": sub.organization_id, "sub": sub.id, "ps": period.start, "pe": period.end, "meters": meters},
    )
    return {mk: q for mk, q in rows.tuples()}


def _late_lines(session: Session, sub: m.Subscription, plan: Plan, inv_id: str) -> list[BilledLine]:
    """Adjustment lines for usage that arrived after its period was invoiced.

    The adjustment is what the late usage adds to the charge's billed amount in its own
    period: billed(final + late) − billed(final), in minor units, so tiers, free units
    and minimums stay exact and the two invoices together equal one on-time invoice.
    """
    late = (
        session.execute(
            text(
                "UPDATE late_usage SET billed_invoice_id = :inv "
                "WHERE organization_id = :org AND subscription_id = :sub AND billed_invoice_id IS NULL "
                "RETURNING meter_key, period_start, period_end, value"
            ),
            {"inv": inv_id, "org": sub.organization_id, "sub": sub.id},
        )
        .tuples()
        .all()
    )
    grouped: dict[tuple[datetime, datetime, str], Decimal] = defaultdict(Decimal)
    for meter, ps, pe, value in late:
        grouped[(ps, pe, meter)] += value
    lines: list[BilledLine] = []
    for (ps, pe, meter), extra in sorted(grouped.items()):
        base = session.scalar(
            select(m.UsageTotal.quantity).where(
                m.UsageTotal.organization_id == sub.organization_id,
                m.UsageTotal.subscription_id == sub.id,
                m.UsageTotal.meter_key == meter,
                m.UsageTotal.period_start == ps,
            )
        ) or Decimal(0)
        for charge in plan.charges:
            if charge.meter != meter:
                continue
            before = sum(line.amount_minor for line in rate_charge(charge, base, plan.currency))
            after = sum(line.amount_minor for line in rate_charge(charge, base + extra, plan.currency))
            lines.append(
                BilledLine(
                    line_key=f"late:{ps:%Y%m%dT%H%M%S}:{charge.key}",
                    charge=charge.key,
                    kind="adjustment",
                    quantity=extra,
                    amount=from_minor(after - before, plan.currency),
                    amount_minor=after - before,
                    description=f"Late usage for {ps:%Y-%m-%d} – {pe:%Y-%m-%d}: {extra} more {meter}",
                    service_start=ps,
                    service_end=pe,
                )
            )
    return lines


def _next_number(session: Session, org: m.Organization, year: int) -> str:
    seq = session.execute(
        text(
            "INSERT INTO invoice_sequences (organization_id, year, last_number) VALUES (:org, :year, 1) "
            "ON CONFLICT (organization_id, year) DO UPDATE SET last_number = invoice_sequences.last_number + 1 "
            "RETURNING last_number"
        ),
        {"org": org.id, "year": year},
    ).scalar_one()
    return f"{org.invoice_prefix}-{year}-{seq:06d}"


def close_period(engine: Engine, org_id: str, sub_id: str, period: Period, *, issued_at: datetime) -> str | None:
    """Close one period; returns the invoice id, "exists", or None when another closer holds it."""
    with Session(engine) as session, session.begin():
        sub = session.scalars(
            select(m.Subscription)
            .where(m.Subscription.organization_id == org_id, m.Subscription.id == sub_id)
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if sub is None:
            return None
        inv_id = invoice_id(org_id, sub_id, period.start)
        if session.get(m.Invoice, inv_id) is not None:
            return "exists"
        org = session.get_one(m.Organization, org_id)
        plan = load_plan(session.get_one(m.Plan, (org_id, sub.plan_code)).spec)
        usage = _close_totals(session, sub, plan, period)
        rated = rate_plan(plan, usage, period, active_from=sub.start_at, active_until=sub.end_at)
        lines = [BilledLine.from_rated(line, period) for line in rated.lines]
        lines += _late_lines(session, sub, plan, inv_id)
        subtotal = sum(line.amount_minor for line in lines)
        session.add(
            m.Invoice(
                id=inv_id,
                organization_id=org_id,
                number=_next_number(session, org, issued_at.year),
                customer_id=sub.customer_id,
                subscription_id=sub_id,
                status="issued",
                currency=plan.currency,
                period_start=period.start,
                period_end=period.end,
                issued_at=issued_at,
                due_at=issued_at + timedelta(days=org.payment_terms_days),
                subtotal_minor=subtotal,
                total_minor=subtotal,
            )
        )
        session.flush()
        session.add_all(_line_rows(inv_id, lines, period))
        session.add(
            m.InvoiceStatusChange(
                invoice_id=inv_id,
                seq=1,
                from_status=None,
                to_status="issued",
                at=issued_at,
                reason="period closed",
                actor="close",
            )
        )
    return inv_id


def _line_rows(inv_id: str, lines: list[BilledLine], period: Period) -> list[m.InvoiceLine]:
    return [
        m.InvoiceLine(
            invoice_id=inv_id,
            line_key=line.line_key,
            position=pos,
            charge=line.charge,
            kind=line.kind,
            description=line.description,
            quantity=line.quantity,
            amount=line.amount,
            amount_minor=line.amount_minor,
            service_start=line.service_start,
            service_end=line.service_end,
            details=line.details,
        )
        for pos, line in enumerate(lines, start=1)
    ]
