"""Plan changes: move a subscription to another plan from an instant on, prorated to the second.

`change_plan` records that the subscription bills under `plan` from `at` on. Nothing is
re-priced at once: the close of the period containing `at` splits it into plan segments,
rates each segment's usage under the plan then in force, prorates flat charges to the
second, and settles in-advance flat charges (credit for the old plan's unused time, charge
for the new plan's remaining time; `invoicing.period_rating`). `at` may be in the future
(a change scheduled for the renewal, say); the history is append-only and in time order.

What keeps the usage split exact. The worker stores usage per plan segment, routed with
its catalog snapshot. A change takes `PLAN_CHANGE_LOCK` exclusively; every worker batch
takes it shared and refuses to commit when a change newer than its snapshot exists
(`streams.sink`), so each batch is routed wholly before or wholly after a change. A change
is refused when usage at or after `at` is already counted (only events stamped ahead of
the clock can be), and when the period containing `at` is already invoiced: counted usage
is never moved between segments.

Errors:

    ValoraError
    ├── InvalidInput (ValueError)                 code "invalid_input"  (a naive `at` or `now`)
    ├── InvalidPlan (ValueError)                  code "invalid_plan"   (another currency or interval)
    ├── PlanChangeRefused (ValueError)            code "plan_change_refused"
    ├── PlanNotFound (LookupError)                code "plan_not_found"
    └── SubscriptionNotFound (LookupError)        code "subscription_not_found"
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.lifecycle import SubscriptionStatus, require_aware
from invoicing.queries import rfc3339
from invoicing.subscriptions import SubscriptionNotFound, get_subscription
from rating import check_compatible
from schemas.errors import ValoraError
from schemas.plans import load_plan

# pg_advisory_xact_lock key shared by plan changes (exclusive) and worker batches (shared): "VALORA".
PLAN_CHANGE_LOCK = 0x56414C4F5241

_CHANGEABLE = frozenset({SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE})


class PlanChangeRefused(ValoraError, ValueError):
    """The change cannot be made as asked; the message says why and what would work."""

    code = "plan_change_refused"


class PlanNotFound(ValoraError, LookupError):
    """The organization has no plan with this code."""

    code = "plan_not_found"


def change_plan(
    engine: Engine,
    org: str,
    sub_id: str,
    plan_code: str,
    *,
    at: datetime,
    now: datetime,
    actor: str,
    reason: str,
) -> dict[str, Any]:
    """Bill `sub_id` under `plan_code` from `at` on; returns the subscription's JSON.

    Raises:
        SubscriptionNotFound, PlanNotFound, InvalidPlan, PlanChangeRefused, InvalidInput:
            see the module docstring; nothing is written.
    """
    require_aware(at)
    require_aware(now)
    at = at.astimezone(UTC)
    with Session(engine) as session, session.begin():
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PLAN_CHANGE_LOCK})
        sub = session.get(m.Subscription, (org, sub_id), with_for_update=True)
        if sub is None:
            raise SubscriptionNotFound(f"no subscription {sub_id!r} in organization {org!r}")
        target = session.get(m.Plan, (org, plan_code))
        if target is None:
            raise PlanNotFound(f"organization {org!r} has no plan {plan_code!r}")
        history = list(
            session.scalars(
                select(m.PlanChange)
                .where(m.PlanChange.organization_id == org, m.PlanChange.subscription_id == sub_id)
                .order_by(m.PlanChange.effective_at)
            )
        )
        current = history[-1].to_plan if history else sub.plan_code
        _check_change(session, sub, history, current, plan_code, at)
        check_compatible(load_plan(session.get_one(m.Plan, (org, current)).spec), load_plan(target.spec))
        session.add(
            m.PlanChange(
                organization_id=org,
                subscription_id=sub_id,
                effective_at=at,
                from_plan=current,
                to_plan=plan_code,
                requested_at=now.astimezone(UTC),
                actor=actor,
                reason=reason,
            )
        )
    return get_subscription(engine, org, sub_id)


def _check_change(
    session: Session, sub: m.Subscription, history: list[m.PlanChange], current: str, plan_code: str, at: datetime
) -> None:
    """Refuse a change that would rewrite what is already counted or invoiced (see the module docstring)."""
    where = f"subscription {sub.id!r}"
    if SubscriptionStatus(sub.status) not in _CHANGEABLE:
        raise PlanChangeRefused(f"{where} is {sub.status}; only a live subscription can change plan")
    if at < sub.start_at or (sub.end_at is not None and at >= sub.end_at):
        ends = f", ends {rfc3339(sub.end_at)}" if sub.end_at is not None else ""
        raise PlanChangeRefused(f"{rfc3339(at)} is outside {where}'s life (starts {rfc3339(sub.start_at)}{ends})")
    # Checked before "already on that plan": `current` is the plan after the last change, which is
    # not the plan in force at an earlier `at`, and the real reason is the change scheduled later.
    if history and at <= history[-1].effective_at:
        last = history[-1]
        raise PlanChangeRefused(
            f"{where} already has a change to plan {last.to_plan!r} at {rfc3339(last.effective_at)}; "
            "a new change must take effect after it"
        )
    if plan_code == current:
        raise PlanChangeRefused(f"{where} is already on plan {plan_code!r} at {rfc3339(at)}")
    if at < sub.next_period_start or sub.next_close_at is None:
        raise PlanChangeRefused(f"the period of {where} containing {rfc3339(at)} is already invoiced")
    counted = session.scalar(
        select(func.max(m.UsageTotal.latest_time)).where(
            m.UsageTotal.organization_id == sub.organization_id,
            m.UsageTotal.subscription_id == sub.id,
            m.UsageTotal.latest_time >= at,
        )
    )
    if counted is not None:
        raise PlanChangeRefused(
            f"usage of {where} at {rfc3339(counted)} is already counted; a change must take effect after it"
        )
