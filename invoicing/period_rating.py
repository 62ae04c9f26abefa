"""What one billing period of a subscription bills: the lines of the invoice its close writes.

The close (`invoicing.close`) and the running totals (`invoicing.usage`) both call
`period_lines`, so what `valora usage` shows for a period is what its invoice will say.
It reads nothing from the database: the subscription row, its plan history and the
period's usage per plan segment come in, lines come out.

A period bills, in this order:

1. what it owes in arrears: usage (always) and in-arrears flat charges, per plan segment
   when the plan changed inside it (`rating.rate_segments`), else `rating.rate_plan` as is;
2. for every plan change inside it, the in-advance settlement: the unused time of an
   in-advance old plan credited, the remaining time of an in-advance new plan charged;
3. when a cancel ends the subscription inside it, the unused in-advance time credited;
4. when the subscription goes on and the plan in force at the period's end bills in
   advance, the next period's flat charges, billed ahead (service window: the next period).

`advance_billed_until` on the subscription says up to when in-advance flat charges have been
billed, so credits give back exactly what was billed and nothing else. A period whose
in-advance fee was never billed ahead (a subscription from before in-advance billing was
honoured) bills it on its own invoice rather than losing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from itertools import pairwise

from invoicing import models as m
from invoicing.invoice_rows import BilledLine
from invoicing.subscriptions import paid_from
from rating import (
    Period,
    PlanSegment,
    WindowedLine,
    advance_flat,
    period_containing,
    plan_windows,
    rate_plan,
    rate_segments,
    unused_time_credit,
)
from schemas.plans import BillingTiming, Plan

_ADVANCE = BillingTiming.IN_ADVANCE


@dataclass(frozen=True, slots=True)
class PlanHistory:
    """The plan a subscription started on and its changes, as (effective instant, new plan) in time order."""

    first: Plan
    changes: tuple[tuple[datetime, Plan], ...] = ()

    def plan_at(self, t: datetime) -> Plan:
        """The plan in force at t: the last change at or before t, else the first plan."""
        plan = self.first
        for at, changed in self.changes:
            if at > t:
                break
            plan = changed
        return plan


@dataclass(frozen=True, slots=True)
class Segment:
    """A plan window of a period; `key` is the `segment_start` its usage is stored under."""

    plan: Plan
    start: datetime
    end: datetime
    key: datetime


@dataclass
class PeriodBill:
    lines: list[BilledLine] = field(default_factory=list)
    advance_billed_until: datetime | None = None  # the subscription's new value
    segments: list[Segment] = field(default_factory=list)  # the period's plan windows, as rated


def segments(sub: m.Subscription, history: PlanHistory, period: Period) -> list[Segment]:
    """The period's plan windows inside the active window, with their usage keys.

    The first window's usage is stored under the period's start (as when no plan changed),
    each later one under the change instant that began it (the worker's rule).
    """
    windows = plan_windows(period, history.first, history.changes, active_from=sub.start_at, active_until=sub.end_at)
    return [
        Segment(plan, start, end, period.start if i == 0 else start) for i, (plan, start, end) in enumerate(windows)
    ]


def trial_usage_free(sub: m.Subscription, plan: Plan, period_start: datetime) -> bool:
    """Whether the usage of the period starting at `period_start` is not billed because of the trial.

    True for every period that starts before the trial's end when the plan does not bill
    trial usage, including a period that straddles the trial's end (see `invoicing.close`).
    """
    return sub.trial_end is not None and not plan.trial_usage_billed and period_start < sub.trial_end


def period_lines(
    sub: m.Subscription,
    history: PlanHistory,
    period: Period,
    usage: Mapping[datetime, Mapping[str, Decimal]],
) -> PeriodBill:
    """The lines the close of `period` bills; `usage` maps segment keys to meter quantities.

    Raises:
        InvalidUsage: a usage quantity is negative or not a finite decimal.
    """
    parts = segments(sub, history, period)
    bill = PeriodBill(advance_billed_until=sub.advance_billed_until, segments=parts)
    if not parts:
        return bill
    if len(parts) == 1 and parts[0].plan.billing_timing is not _ADVANCE:
        only = parts[0]
        quantities = _billed_usage(sub, only, period, usage)
        rated = rate_plan(only.plan, quantities, period, active_from=paid_from(sub), active_until=sub.end_at)
        bill.lines = [BilledLine.from_rated(line, period) for line in rated.lines]
    else:
        plan_segments = [PlanSegment(p.plan, p.start, p.end, _billed_usage(sub, p, period, usage)) for p in parts]
        windowed = rate_segments(period, plan_segments, paid_from=paid_from(sub))
        bill.lines = [BilledLine.from_windowed(line) for line in windowed]
        bill.lines += [BilledLine.from_windowed(line) for line in _settle_in_advance(sub, parts, period)]
    if sub.end_at is None or sub.end_at > period.end:  # the subscription goes on: the next period ahead
        following = period_containing(
            sub.billing_anchor, history.first.interval, period.end, history.first.interval_count
        )
        ahead = _billed_ahead(sub, history.plan_at(period.end), following)
        if ahead is not None:
            lines, bill.advance_billed_until = ahead
            bill.lines += lines
    return bill


def _billed_usage(
    sub: m.Subscription, part: Segment, period: Period, usage: Mapping[datetime, Mapping[str, Decimal]]
) -> Mapping[str, Decimal]:
    return {} if trial_usage_free(sub, part.plan, period.start) else usage.get(part.key, {})


def _settle_in_advance(sub: m.Subscription, parts: list[Segment], period: Period) -> list[WindowedLine]:
    """Catch-up, plan-change and cancel settlements of in-advance flat charges inside `period`."""
    lines: list[WindowedLine] = []
    cover_end = parts[-1].end  # the active window's end inside the period
    first = parts[0]
    first_paid = max(first.start, paid_from(sub))
    abu = sub.advance_billed_until
    billed_to = min(abu, period.end) if abu is not None and abu > period.start else None
    if first.plan.billing_timing is _ADVANCE and (billed_to is None or billed_to <= first_paid):
        lines += advance_flat(first.plan, period, first_paid, cover_end)  # never billed ahead: bill it now
        billed_to = cover_end
    for old, new in pairwise(parts):
        at = max(new.start, paid_from(sub))
        if old.plan.billing_timing is _ADVANCE and billed_to is not None:
            lines += unused_time_credit(old.plan, period, at, billed_to)
        if new.plan.billing_timing is _ADVANCE:
            lines += advance_flat(new.plan, period, at, cover_end)
            billed_to = cover_end
        else:
            billed_to = None
    last = parts[-1]
    if last.plan.billing_timing is _ADVANCE and billed_to is not None and billed_to > cover_end:
        lines += unused_time_credit(last.plan, period, max(cover_end, paid_from(sub)), billed_to)
    return lines


def _billed_ahead(sub: m.Subscription, plan: Plan, period: Period) -> tuple[list[BilledLine], datetime] | None:
    """`plan`'s in-advance flat charges for the paid part of `period`, and where that part ends.

    The paid part starts at the period's start or the trial's end and stops at the
    subscription's end; None when it is empty or `plan` bills in arrears.
    """
    start = max(period.start, paid_from(sub))
    end = period.end if sub.end_at is None else min(period.end, sub.end_at)
    if end <= start or plan.billing_timing is not _ADVANCE:
        return None
    return [BilledLine.from_windowed(line) for line in advance_flat(plan, period, start, end)], end


def opening_lines(sub: m.Subscription, history: PlanHistory, period: Period) -> PeriodBill:
    """The opening invoice of an in-advance subscription: its first period's flat charges, billed ahead."""
    ahead = _billed_ahead(sub, history.plan_at(max(period.start, paid_from(sub))), period)
    if ahead is None:
        return PeriodBill(advance_billed_until=sub.advance_billed_until)
    lines, until = ahead
    return PeriodBill(lines=lines, advance_billed_until=until)
