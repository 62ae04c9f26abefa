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
from invoicing.close import paid_from, trial_usage_free
from invoicing.queries import decimal_text, rfc3339
from rating import Period, period_containing, rate_plan
from schemas.plans import Plan, load_plan


def _rated_period(sub: m.Subscription, plan: Plan, period: Period, usage: dict[str, Decimal]) -> dict[str, Any]:
    billed_usage = {} if trial_usage_free(sub, plan, period.start) else usage  # the close's trial rules
    rated = rate_plan(plan, billed_usage, period, active_from=paid_from(sub), active_until=sub.end_at)
    return {
        "organization": sub.organization_id,
        "subscription": sub.id,
        "customer": sub.customer_id,
        "plan": plan.code,
        "currency": plan.currency,
        "period_start": rfc3339(period.start),
        "period_end": rfc3339(period.end),
        "meters": {k: decimal_text(v) for k, v in sorted(usage.items())},
        "lines": [
            {
                "charge": line.charge,
                "kind": line.kind.value,
                "quantity": decimal_text(line.quantity),
                "amount_minor": line.amount_minor,
                "description": line.description,
            }
            for line in rated.lines
        ],
        "subtotal_minor": rated.subtotal_minor,
        "total_minor": rated.total_minor,
    }


def _usage_by_key(
    session: Session, keys: Iterable[tuple[str, str, datetime]]
) -> dict[tuple[str, str, datetime], dict[str, Decimal]]:
    wanted = list(keys)
    out: dict[tuple[str, str, datetime], dict[str, Decimal]] = defaultdict(dict)
    if not wanted:
        return out
    rows = session.execute(
        select(
            m.UsageTotal.organization_id,
            m.UsageTotal.subscription_id,
            m.UsageTotal.period_start,
            m.UsageTotal.meter_key,
            m.UsageTotal.quantity,
        ).where(
            tuple_(m.UsageTotal.organization_id, m.UsageTotal.subscription_id, m.UsageTotal.period_start).in_(wanted)
        )
    )
    for org, sub, ps, meter, qty in rows:
        out[(org, sub, ps)][meter] = qty
    return out


def running_totals(
    engine: Engine, organization: str, *, at: datetime, customer: str | None = None
) -> list[dict[str, Any]]:
    """Quantity and amount so far for each subscription's period containing `at`."""
    with Session(engine) as session:
        query = select(m.Subscription).where(m.Subscription.organization_id == organization)
        if customer is not None:
            query = query.where(m.Subscription.customer_id == customer)
        subs = [
            s
            for s in session.scalars(query.order_by(m.Subscription.id))
            if s.start_at <= at and (s.end_at is None or at < s.end_at)
        ]
        plans = {
            p.code: load_plan(p.spec)
            for p in session.scalars(select(m.Plan).where(m.Plan.organization_id == organization))
        }
        periods = {
            s.id: period_containing(
                s.billing_anchor, plans[s.plan_code].interval, at, plans[s.plan_code].interval_count
            )
            for s in subs
        }
        usage = _usage_by_key(session, [(organization, s.id, periods[s.id].start) for s in subs])
        return [
            _rated_period(s, plans[s.plan_code], periods[s.id], usage[(organization, s.id, periods[s.id].start)])
            for s in subs
        ]


def totals_for(engine: Engine, keys: Iterable[tuple[str, str, datetime]]) -> list[dict[str, Any]]:
    """Rated totals for specific (organization, subscription, period start) keys, for publishing."""
    wanted = sorted(set(keys))
    with Session(engine) as session:
        usage = _usage_by_key(session, wanted)
        subs = {
            (s.organization_id, s.id): s
            for s in session.scalars(
                select(m.Subscription).where(
                    tuple_(m.Subscription.organization_id, m.Subscription.id).in_(
                        {(org, sub) for org, sub, _ in wanted}
                    )
                )
            )
        }
        plan_keys = {(s.organization_id, s.plan_code) for s in subs.values()}
        plans = (
            {
                (p.organization_id, p.code): load_plan(p.spec)
                for p in session.scalars(
                    select(m.Plan).where(tuple_(m.Plan.organization_id, m.Plan.code).in_(plan_keys))
                )
            }
            if plan_keys
            else {}
        )
        out = []
        for org, sub_id, ps in wanted:
            sub = subs.get((org, sub_id))
            if sub is None:
                continue
            plan = plans[(org, sub.plan_code)]
            period = period_containing(sub.billing_anchor, plan.interval, ps, plan.interval_count)
            out.append(_rated_period(sub, plan, period, usage[(org, sub_id, ps)]))
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
