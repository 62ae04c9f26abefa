"""Period close: rate every billing period that has ended and write its invoice.

Each subscription carries a cursor: `next_period_start` and `next_close_at` (when
that period is due). A period is due once `next_close_at <= cutoff`, where
`cutoff = as_of − late grace`. Closing works in batches, each one transaction that:

1. claims up to `limit` due subscriptions with `FOR UPDATE SKIP LOCKED`, so any
   number of closers (CLI runs, schedulers) can run at once without waiting on each
   other or invoicing a period twice;
2. marks the claimed periods' usage totals closed (creating zero rows for unused
   meters) and reads their final quantities in the same statement, so an event the
   worker commits afterwards becomes late usage instead of being lost;
3. rates each period with `invoicing.period_rating.period_lines` (`rating.rate_plan`, or
   per plan segment when the plan changed inside the period, plus in-advance flat fees and
   their credits; an in-advance subscription's opening invoice first bills its first
   period ahead), adds adjustment lines for late usage of earlier periods, and writes
   the invoices with the next gapless numbers (or, for an organization with a
   `draft_grace_s`, as unnumbered drafts the scheduler issues later);
4. advances each cursor by one period and, when no period is left, applies the
   lifecycle's `period_end_reached` (canceled, or cancel scheduled → ended).

A period is due at its end, or at the subscription's `end_at` when a cancel cuts it
short (`invoicing.subscriptions.cursor_due_at`), so a final invoice is written as soon
as the grace has passed. The invoice keeps the billing period's dates; flat charges are
prorated to the active window `[max(start_at, trial_end), end_at)` within it.

Trials: flat charges are never billed before `trial_end`. When the plan does not bill
trial usage (`trial_usage_billed: false`), usage is kept apart at `trial_end` like at a plan
change (`rating.timeline.usage_windows`): the trial's window is rated with no usage and the
rest of a period that straddles the trial's end bills its own usage. Late usage of a trial
window stays unbilled.

A period that cannot be closed does not block the batch (`invoicing.close_safety`): a plan
that no longer loads, a rating error, amounts beyond what the store holds, or a write
Postgres refuses each fail only that subscription's period, which gets a `close_failures`
record and a retry time with exponential backoff, while the rest is invoiced.
Re-running a close changes nothing: the cursor and the unique
(organization, subscription, period_start) key both say the period is done.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, select, text, tuple_
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.close_safety import (
    check_storable,
    load_histories_isolated,
    per_item_isolated,
    record_failure,
    unbill_late_usage,
    write_isolated,
)
from invoicing.invoice_rows import BilledLine, ClosingItem
from invoicing.late_usage import late_lines_for
from invoicing.lifecycle import BillingReason
from invoicing.period_rating import PlanHistory, SubscriptionTerms, opening_lines, period_lines, segments
from invoicing.subscriptions import cursor_due_at, record_period_end
from rating import Period, period_containing
from schemas.plans import Plan, load_plan


@dataclass
class CloseSummary:
    invoices: int = 0
    failed: int = 0
    ended: int = 0
    batches: int = 0
    invoice_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, other: CloseSummary) -> None:
        self.invoices += other.invoices
        self.failed += other.failed
        self.ended += other.ended
        self.batches += other.batches
        self.invoice_ids += other.invoice_ids
        self.errors += other.errors


def invoice_id(
    org: str, subscription: str, period_start: datetime, billing_reason: BillingReason = BillingReason.PERIOD
) -> str:
    """Deterministic id: the same (subscription, period, billing reason) always names the same invoice."""
    name = f"{org}\x1f{subscription}\x1f{period_start.isoformat()}"
    if billing_reason is not BillingReason.PERIOD:
        name += f"\x1f{billing_reason}"
    return f"in_{hashlib.sha256(name.encode()).hexdigest()[:24]}"


def _claim(
    session: Session, cutoff: datetime, now: datetime, limit: int, organization: str | None
) -> list[m.Subscription]:
    query = (
        session.query(m.Subscription)
        .filter(m.Subscription.next_close_at <= cutoff)
        .filter((m.Subscription.close_retry_at.is_(None)) | (m.Subscription.close_retry_at <= now))
    )
    if organization is not None:
        query = query.filter(m.Subscription.organization_id == organization)
    return (
        query.order_by(m.Subscription.next_close_at, m.Subscription.organization_id, m.Subscription.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .all()
    )


Usage = dict[tuple[str, str], dict[datetime, dict[str, Decimal]]]  # (org, sub) → segment start → meter → qty


def _close_totals(session: Session, items: list[ClosingItem], histories: dict[tuple[str, str], PlanHistory]) -> Usage:
    """Mark the items' usage rows closed and return their final quantities per (org, subscription).

    Every plan segment of the period gets a row per meter its plan bills (zero if unused), so
    an event the worker commits afterwards finds the row closed and becomes late usage.
    """
    rows = [
        (i.sub.organization_id, i.sub.id, meter, i.period.start, part.key, i.period.end)
        for i in items
        for part in segments(SubscriptionTerms.of(i.sub), histories[(i.sub.organization_id, i.sub.id)], i.period)
        for meter in sorted({ch.meter for ch in part.plan.charges if ch.meter})
    ]
    usage: Usage = defaultdict(lambda: defaultdict(dict))
    if not rows:
        return usage
    cols = [list(col) for col in zip(*rows, strict=True)]
    result = session.execute(
        text(
            "INSERT INTO usage_totals AS t (organization_id, subscription_id, meter_key, period_start, segment_start, "
            "period_end, quantity, event_count, closed) SELECT o, s, mk, ps, ss, pe, 0, 0, true FROM "
            "unnest(CAST(:o AS text[]), CAST(:s AS text[]), CAST(:mk AS text[]), CAST(:ps AS timestamptz[]), "
            "CAST(:ss AS timestamptz[]), CAST(:pe AS timestamptz[])) AS u(o, s, mk, ps, ss, pe) "
            "ON CONFLICT (organization_id, subscription_id, meter_key, period_start, segment_start) "
            "DO UPDATE SET closed = true RETURNING organization_id, subscription_id, segment_start, meter_key, quantity"
        ),
        {"o": cols[0], "s": cols[1], "mk": cols[2], "ps": cols[3], "ss": cols[4], "pe": cols[5]},
    )
    for org, sub, segment, meter, qty in result:
        usage[(org, sub)][segment][meter] = qty
    return usage


def load_histories(
    session: Session, subs: list[m.Subscription], plan_cache: dict[tuple[str, str], Plan]
) -> dict[tuple[str, str], PlanHistory]:
    """Each subscription's plan history: the plan it started on and its plan changes, in time order.

    Loads the plans it needs into `plan_cache` (a cache the caller may keep across batches).
    """
    if not subs:
        return {}
    keys = [(s.organization_id, s.id) for s in subs]
    changes: dict[tuple[str, str], list[m.PlanChange]] = defaultdict(list)
    for change in session.scalars(
        select(m.PlanChange)
        .where(tuple_(m.PlanChange.organization_id, m.PlanChange.subscription_id).in_(keys))
        .order_by(m.PlanChange.effective_at)
    ):
        changes[(change.organization_id, change.subscription_id)].append(change)
    wanted = {(s.organization_id, s.plan_code) for s in subs}
    _load_plans(session, plan_cache, wanted | {(c.organization_id, c.to_plan) for cs in changes.values() for c in cs})
    return {
        (s.organization_id, s.id): PlanHistory(
            plan_cache[(s.organization_id, s.plan_code)],
            tuple(
                (c.effective_at, plan_cache[(c.organization_id, c.to_plan)]) for c in changes[(s.organization_id, s.id)]
            ),
        )
        for s in subs
    }


def _load_plans(session: Session, plan_cache: dict[tuple[str, str], Plan], wanted: set[tuple[str, str]]) -> None:
    missing = wanted - set(plan_cache)
    if missing:
        for row in session.query(m.Plan).filter(tuple_(m.Plan.organization_id, m.Plan.code).in_(missing)):
            plan_cache[(row.organization_id, row.code)] = load_plan(row.spec)


def _advance(sub: m.Subscription, plan: Plan, period: Period) -> None:
    """Move the cursor from the just-closed `period` to the next one (periods tile: it starts at the end).

    `period` is passed in rather than derived from `next_close_at`, which is `end_at`, not the
    period's end, when a cancel cut the period short.
    """
    sub.next_period_start = period.end
    sub.next_close_at = cursor_due_at(sub, plan, sub.end_at)
    sub.close_attempts = 0
    sub.close_retry_at = None


def close_batch(
    engine: Engine,
    *,
    cutoff: datetime,
    issued_at: datetime,
    now: datetime,
    limit: int = 500,
    organization: str | None = None,
    statement_timeout_ms: int | None = None,
    plans: dict[tuple[str, str], Plan] | None = None,
) -> CloseSummary:
    """Claim and close up to `limit` due periods in one transaction (see the module docstring)."""
    summary = CloseSummary(batches=1)
    plan_cache = plans if plans is not None else {}
    with Session(engine) as session, session.begin():
        if statement_timeout_ms is not None:
            session.execute(text(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"))
        subs = _claim(session, cutoff, now, limit, organization)
        if not subs:
            summary.batches = 0
            return summary
        orgs = {
            o.id: o
            for o in session.query(m.Organization).filter(m.Organization.id.in_({s.organization_id for s in subs}))
        }
        histories, unloadable = load_histories_isolated(
            session, subs, lambda sess, some: load_histories(sess, some, plan_cache)
        )
        items, finished = _closing_items(session, subs, plan_cache, unloadable, now, summary)
        periods = [i for i in items if i.billing_reason is BillingReason.PERIOD]
        usage = _close_totals(session, periods, histories)
        late, late_failed = per_item_isolated(session, periods, lambda some: late_lines_for(session, some, histories))
        for item in periods:
            if item.invoice_id in late_failed:
                summary.errors.append(
                    record_failure(session, item.sub, item.period.start, late_failed[item.invoice_id], now)
                )
                summary.failed += 1
        items = [i for i in items if i.invoice_id not in late_failed]
        rated = _rate_items(session, items, histories, usage, late, now, summary)
        written = _write(session, items, rated, orgs, issued_at, now, summary)
        for item in written:
            item.sub.advance_billed_until = item.advance_billed_until
            if item.billing_reason is BillingReason.OPENING:
                item.sub.opening_pending = False
                item.sub.next_close_at = cursor_due_at(item.sub, item.plan, item.sub.end_at)
                item.sub.close_attempts, item.sub.close_retry_at = 0, None
                continue
            _advance(item.sub, item.plan, item.period)
            if item.sub.next_close_at is None:
                finished.append((item.sub, f"final invoice {item.invoice_id} written"))
        record_period_end(session, finished, issued_at)
        stored = [i for i in written if i.lines or i.billing_reason is BillingReason.PERIOD]  # an empty opening: none
        summary.invoices = len(stored)
        summary.invoice_ids = [i.invoice_id for i in stored]
    return summary


def _closing_items(
    session: Session,
    subs: list[m.Subscription],
    plan_cache: dict[tuple[str, str], Plan],
    unloadable: dict[tuple[str, str], Exception],
    now: datetime,
    summary: CloseSummary,
) -> tuple[list[ClosingItem], list[tuple[m.Subscription, str]]]:
    """The period (or opening invoice) each claimed subscription closes now, and those with none left.

    A subscription whose plans did not load, or whose period grid leaves the calendar, fails alone.
    """
    items: list[ClosingItem] = []
    finished: list[tuple[m.Subscription, str]] = []
    for sub in subs:
        try:
            if (sub.organization_id, sub.id) in unloadable:
                raise unloadable[(sub.organization_id, sub.id)]
            plan = plan_cache[(sub.organization_id, sub.plan_code)]
            if sub.end_at is not None and sub.next_period_start >= sub.end_at:
                sub.next_close_at = None
                summary.ended += 1
                finished.append((sub, "no period left to invoice"))
                continue
            period = period_containing(sub.billing_anchor, plan.interval, sub.next_period_start, plan.interval_count)
        except (ValueError, ArithmeticError, LookupError) as exc:
            summary.errors.append(record_failure(session, sub, sub.next_period_start, exc, now))
            summary.failed += 1
            continue
        reason = BillingReason.OPENING if sub.opening_pending else BillingReason.PERIOD
        items.append(
            ClosingItem(sub, plan, period, invoice_id(sub.organization_id, sub.id, period.start, reason), [], reason)
        )
    return items, finished


def _write(
    session: Session,
    items: list[ClosingItem],
    rated: list[ClosingItem],
    orgs: dict[str, m.Organization],
    issued_at: datetime,
    now: datetime,
    summary: CloseSummary,
) -> list[ClosingItem]:
    """Write the rated items' invoices; returns the items written (an empty opening needs no row).

    An invoice Postgres refuses fails its period alone. Late usage the batch attached to an
    item that was not written is given back, so that period's retry bills it.
    """
    to_write = [i for i in rated if i.lines or i.billing_reason is BillingReason.PERIOD]
    refused = write_isolated(session, to_write, orgs, issued_at)
    for item, exc in refused:
        summary.errors.append(record_failure(session, item.sub, item.period.start, exc, now))
    summary.failed += len(refused)
    refused_ids = {item.invoice_id for item, _ in refused}
    written = [i for i in rated if i.invoice_id not in refused_ids]
    written_ids = {i.invoice_id for i in written}
    unbill_late_usage(session, sorted(i.invoice_id for i in items if i.invoice_id not in written_ids))
    return written


def _rate_items(
    session: Session,
    items: list[ClosingItem],
    histories: dict[tuple[str, str], PlanHistory],
    usage: Usage,
    late: dict[str, list[BilledLine]],
    now: datetime,
    summary: CloseSummary,
) -> list[ClosingItem]:
    """Rate each item into its lines; a failure is recorded for a retry and left out."""
    rated: list[ClosingItem] = []
    for item in items:
        sub = item.sub
        history = histories[(sub.organization_id, sub.id)]
        try:
            if item.billing_reason is BillingReason.OPENING:
                bill = opening_lines(SubscriptionTerms.of(sub), history, item.period)
            else:
                bill = period_lines(
                    SubscriptionTerms.of(sub), history, item.period, usage[(sub.organization_id, sub.id)]
                )
            lines = bill.lines + late.get(item.invoice_id, [])
            check_storable(lines, item.plan.currency)
        except Exception as exc:  # one poison item must not block the rest: record it, retry later
            summary.errors.append(record_failure(session, sub, item.period.start, exc, now))
            summary.failed += 1
            continue
        item.lines = lines
        item.advance_billed_until = bill.advance_billed_until
        rated.append(item)
    return rated


def close_due(
    engine: Engine,
    *,
    as_of: datetime,
    grace: timedelta,
    clock: Callable[[], datetime],
    organization: str | None = None,
    limit: int = 500,
) -> CloseSummary:
    """Close every period due at `as_of`, batch after batch, until none is left to claim now."""
    total = CloseSummary()
    plans: dict[tuple[str, str], Plan] = {}
    while True:
        now = clock()
        batch = close_batch(
            engine, cutoff=as_of - grace, issued_at=now, now=now, limit=limit, organization=organization, plans=plans
        )
        total.add(batch)
        if batch.batches == 0 or (batch.invoices == 0 and batch.ended == 0):
            return total
