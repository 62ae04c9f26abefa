"""Running usage: current-period quantities and amounts so far, and late usage.

Amounts come from `rating.rate_plan`, the function the close uses, so what
`valora usage` shows for a period is what its invoice will say (until more usage
arrives).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select, tuple_
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.close import load_histories
from invoicing.period_rating import PlanHistory, SubscriptionTerms, period_lines
from invoicing.queries import decimal_text, rfc3339
from rating import Period, period_containing


def _rated_period(
    sub: m.Subscription, history: PlanHistory, period: Period, usage: dict[datetime, dict[str, Decimal]]
) -> dict[str, Any]:
    """The period as its close would bill it now (`invoicing.period_rating`, the close's own function)."""
    bill = period_lines(SubscriptionTerms.of(sub), history, period, usage)
    parts = bill.segments
    current = parts[-1] if parts else None
    subtotal = sum(line.amount_minor for line in bill.lines)
    return {
        "organization": sub.organization_id,
        "subscription": sub.id,
        "customer": sub.customer_id,
        "plan": (current.plan if current else history.first).code,
        "currency": history.first.currency,
        "period_start": rfc3339(period.start),
        "period_end": rfc3339(period.end),
        # The usage of the plan in force at the period's end; every plan segment's under "segments".
        "meters": _meters(usage.get(current.key, {}) if current else {}),
        "segments": [
            {
                "plan": part.plan.code,
                "start": rfc3339(part.start),
                "end": rfc3339(part.end),
                "meters": _meters(usage.get(part.key, {})),
            }
            for part in parts
        ],
        "lines": [
            {
                "charge": line.charge,
                "kind": line.kind,
                "quantity": decimal_text(line.quantity),
                "amount_minor": line.amount_minor,
                "description": line.description,
                "service_start": rfc3339(line.service_start),
                "service_end": rfc3339(line.service_end),
            }
            for line in bill.lines
        ],
        "subtotal_minor": subtotal,
        "total_minor": subtotal,
    }


def _meters(quantities: dict[str, Decimal]) -> dict[str, str]:
    return {k: decimal_text(v) for k, v in sorted(quantities.items())}


Usage = dict[tuple[str, str, datetime], dict[datetime, dict[str, Decimal]]]


def _usage_by_key(session: Session, keys: Iterable[tuple[str, str, datetime]]) -> Usage:
    """Quantities per (organization, subscription, period start), then per plan segment and meter."""
    wanted = list(keys)
    out: Usage = defaultdict(lambda: defaultdict(dict))
    if not wanted:
        return out
    rows = session.execute(
        select(
            m.UsageTotal.organization_id,
            m.UsageTotal.subscription_id,
            m.UsageTotal.period_start,
            m.UsageTotal.segment_start,
            m.UsageTotal.meter_key,
            m.UsageTotal.quantity,
        ).where(
            tuple_(m.UsageTotal.organization_id, m.UsageTotal.subscription_id, m.UsageTotal.period_start).in_(wanted)
        )
    )
    for org, sub, ps, segment, meter, qty in rows:
        out[(org, sub, ps)][segment][meter] = qty
    return out


def _period_of(sub: m.Subscription, history: PlanHistory, at: datetime) -> Period:
    plan = history.first  # every plan of a subscription shares one interval (rating.check_compatible)
    return period_containing(sub.billing_anchor, plan.interval, at, plan.interval_count)


def running_totals(
    engine: Engine, organization: str, *, at: datetime, customer: str | None = None, subscription: str | None = None
) -> list[dict[str, Any]]:
    """Quantity and amount so far for each subscription's period containing `at` (or only `subscription`'s)."""
    with Session(engine) as session:
        query = select(m.Subscription).where(m.Subscription.organization_id == organization)
        if customer is not None:
            query = query.where(m.Subscription.customer_id == customer)
        if subscription is not None:
            query = query.where(m.Subscription.id == subscription)
        subs = [
            s
            for s in session.scalars(query.order_by(m.Subscription.id))
            if s.start_at <= at and (s.end_at is None or at < s.end_at)
        ]
        histories = load_histories(session, subs, {})
        periods = {s.id: _period_of(s, histories[(organization, s.id)], at) for s in subs}
        usage = _usage_by_key(session, [(organization, s.id, periods[s.id].start) for s in subs])
        return [
            _rated_period(
                s, histories[(organization, s.id)], periods[s.id], usage[(organization, s.id, periods[s.id].start)]
            )
            for s in subs
        ]


def totals_for(engine: Engine, keys: Iterable[tuple[str, str, datetime]]) -> list[dict[str, Any]]:
    """Rated totals for specific (organization, subscription, period start) keys, for publishing."""
    wanted = sorted(set(keys))
    with Session(engine) as session:
        usage = _usage_by_key(session, wanted)
        subs = (
            {
                (s.organization_id, s.id): s
                for s in session.scalars(
                    select(m.Subscription).where(
                        tuple_(m.Subscription.organization_id, m.Subscription.id).in_(
                            {(org, sub) for org, sub, _ in wanted}
                        )
                    )
                )
            }
            if wanted
            else {}
        )
        histories = load_histories(session, list(subs.values()), {})
        out = []
        for org, sub_id, ps in wanted:
            sub = subs.get((org, sub_id))
            if sub is None:
                continue
            history = histories[(org, sub_id)]
            out.append(_rated_period(sub, history, _period_of(sub, history, ps), usage[(org, sub_id, ps)]))
        return out


def late_usage(engine: Engine, organization: str, customer: str | None = None) -> list[dict[str, Any]]:
    """Usage that arrived after its period was invoiced, with the invoice that bills it (if any yet)."""
    with Session(engine) as session:
        query = (
            select(m.LateUsage, m.Subscription.customer_id)
            .join(
                m.Subscription,
                (m.Subscription.organization_id == m.LateUsage.organization_id)
                & (m.Subscription.id == m.LateUsage.subscription_id),
            )
            .where(m.LateUsage.organization_id == organization)
        )
        if customer is not None:
            query = query.where(m.Subscription.customer_id == customer)
        rows = session.execute(
            query.order_by(
                m.LateUsage.subscription_id, m.LateUsage.period_start, m.LateUsage.meter_key, m.LateUsage.dedup_key
            )
        )
        return [
            {
                "subscription": late.subscription_id,
                "customer": cust,
                "meter": late.meter_key,
                "event": late.dedup_key,
                "period_start": rfc3339(late.period_start),
                "period_end": rfc3339(late.period_end),
                "quantity": decimal_text(late.value),
                "billed_on_invoice": late.billed_invoice_id,
            }
            for late, cust in rows
        ]
