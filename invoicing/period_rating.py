"""What one billing period of a subscription bills: the lines of the invoice its close writes.

The close (`invoicing.close`) and the running totals (`invoicing.usage`) both call
`period_lines`, so what `valora usage` shows for a period is what its invoice will say.
It reads nothing from the database: plain frozen values come in (`SubscriptionTerms`, the
plan history, the period's usage per usage window) and lines come out, so it is tested
without one (tests/invoicing/test_late_money.py).

A period bills, in this order:

1. what it owes in arrears: usage (always) and in-arrears flat charges, per usage window
   (`rating.timeline.usage_windows`: cut at plan changes, and at `trial_end` when the plan
   does not bill trial usage) with `rating.rate_segments`, or `rating.rate_plan` as is when
   one in-arrears window bills;
2. for every plan change inside it, the in-advance settlement: the unused time of an
   in-advance old plan credited, the remaining time of an in-advance new plan charged;
3. when a cancel ends the subscription inside it, the unused in-advance time credited;
4. when the subscription goes on and the plan in force at the period's end bills in
   advance, the next period's flat charges, billed ahead (service window: the next period).

`advance_billed_until` on the subscription says up to when in-advance flat charges have been
billed, so credits give back exactly what was billed and nothing else. A period whose
in-advance fee was never billed ahead (a subscription from before in-advance billing was
honoured) bills it on its own invoice rather than losing it.

`late_lines` prices usage that arrived after the period's invoice: the period's arrears
lines rated from the usage billed so far and from it with the late usage folded in; the
difference, per charge and window, is the adjustment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from itertools import pairwise

from invoicing import models as m
from invoicing.html import billing_window
from invoicing.invoice_rows import BilledLine
from rating import (
    LineKind,
    Period,
    PlanSegment,
    WindowedLine,
    advance_flat,
    from_minor,
    period_containing,
    plan_windows,
    rate_plan,
    rate_segments,
    unused_time_credit,
)
from rating.aggregation import EXACT_SUM
from rating.timeline import PlanHistory, UsageWindow, usage_windows
from schemas.plans import BillingTiming, Plan

_ADVANCE = BillingTiming.IN_ADVANCE

__all__ = ["PeriodBill", "PlanHistory", "SubscriptionTerms", "late_lines", "opening_lines", "period_lines", "segments"]


@dataclass(frozen=True, slots=True)
class SubscriptionTerms:
    """What rating a period needs to know about a subscription: plain frozen values, no ORM row."""

    start_at: datetime
    end_at: datetime | None
    trial_end: datetime | None
    billing_anchor: datetime
    advance_billed_until: datetime | None = None

    @classmethod
    def of(cls, sub: m.Subscription) -> SubscriptionTerms:
        return cls(sub.start_at, sub.end_at, sub.trial_end, sub.billing_anchor, sub.advance_billed_until)

    @property
    def paid_from(self) -> datetime:
        """Where flat charges start: the subscription's start, or its trial's end (a trial pays no flat fee)."""
        return self.start_at if self.trial_end is None else max(self.start_at, self.trial_end)


Segment = UsageWindow  # a usage window of a period: the unit usage is stored and rated in


@dataclass
class PeriodBill:
    lines: list[BilledLine] = field(default_factory=list)
    advance_billed_until: datetime | None = None  # the subscription's new value
    segments: list[Segment] = field(default_factory=list)  # the period's usage windows, as rated


def segments(sub: SubscriptionTerms, history: PlanHistory, period: Period) -> list[Segment]:
    """The period's usage windows inside the active window (`rating.timeline.usage_windows`)."""
    return list(
        usage_windows(history, period, active_from=sub.start_at, active_until=sub.end_at, trial_end=sub.trial_end)
    )


UsageBySegment = Mapping[datetime, Mapping[str, Decimal]]  # segment key → meter → quantity


def period_lines(sub: SubscriptionTerms, history: PlanHistory, period: Period, usage: UsageBySegment) -> PeriodBill:
    """The lines the close of `period` bills; `usage` maps segment keys to meter quantities.

    Raises:
        InvalidUsage: a usage quantity is negative or not a finite decimal.
    """
    parts = segments(sub, history, period)
    bill = PeriodBill(advance_billed_until=sub.advance_billed_until, segments=parts)
    if not parts:
        return bill
    bill.lines = _arrears_lines(sub, parts, period, usage)
    # In-advance settlements follow the plan windows: a trial's end changes no plan, in-arrears plans settle nothing.
    windows = plan_windows(period, history.first, history.changes, active_from=sub.start_at, active_until=sub.end_at)
    plans = [Segment(plan, start, end, start) for plan, start, end in windows]
    bill.lines += [BilledLine.from_windowed(line) for line in _settle_in_advance(sub, plans, period)]
    if sub.end_at is None or sub.end_at > period.end:  # the subscription goes on: the next period ahead
        following = period_containing(
            sub.billing_anchor, history.first.interval, period.end, history.first.interval_count
        )
        ahead = _billed_ahead(sub, history.plan_at(period.end), following)
        if ahead is not None:
            lines, bill.advance_billed_until = ahead
            bill.lines += lines
    return bill


def _arrears_lines(
    sub: SubscriptionTerms, parts: list[Segment], period: Period, usage: UsageBySegment
) -> list[BilledLine]:
    """What the period owes in arrears: usage of every window it bills, and in-arrears flat fees.

    The windows rated are those that bill usage (a free trial's window pays neither usage nor
    a flat fee, so it adds no line), or every window, with no usage for the free ones, when
    none bills usage or they are not contiguous. One in-arrears window: `rate_plan` as is;
    otherwise `rate_segments`.
    """
    billed = [p for p in parts if p.usage_billed]
    if billed and all(a.end == b.start for a, b in pairwise(billed)):
        parts = billed
    if len(parts) == 1 and parts[0].plan.billing_timing is not _ADVANCE:
        only = parts[0]
        rated = rate_plan(
            only.plan, _billed_usage(only, usage), period, active_from=sub.paid_from, active_until=sub.end_at
        )
        return [BilledLine.from_rated(line, period) for line in rated.lines]
    plan_segments = [PlanSegment(p.plan, p.start, p.end, _billed_usage(p, usage)) for p in parts]
    return [BilledLine.from_windowed(line) for line in rate_segments(period, plan_segments, paid_from=sub.paid_from)]


def _billed_usage(part: Segment, usage: UsageBySegment) -> Mapping[str, Decimal]:
    return usage.get(part.key, {}) if part.usage_billed else {}


def late_lines(
    sub: SubscriptionTerms,
    history: PlanHistory,
    period: Period,
    billed: UsageBySegment,
    with_late: UsageBySegment,
) -> list[BilledLine]:
    """Adjustment lines for usage of `period` that arrived after its invoice: billed(all) − billed(before).

    `billed` is the usage the earlier invoices billed (per segment key and meter), `with_late`
    the same with the late usage folded in (`rating.aggregation`). The period's arrears lines
    are rated from both, and every charge whose amount or quantity moved gets one line per
    window with the difference, so tiers, free units, minimums and trial windows stay exact
    and the invoices together equal one on-time invoice. A late value that does not move
    the quantity (below the billed max, older than the billed latest, a unique value already
    counted) adds no line.
    """
    parts = segments(sub, history, period)
    if not parts:
        return []
    before = _amounts(_arrears_lines(sub, parts, period, billed))
    after = _amounts(_arrears_lines(sub, parts, period, with_late))
    first = min(start for _, start in after)
    late_window = billing_window(period.start.isoformat(), period.end.isoformat())  # as the invoice page shows it
    out: list[BilledLine] = []
    for (charge, start), (qty, minor, end) in sorted(after.items()):
        old_qty, old_minor, _ = before.get((charge, start), (Decimal(0), 0, end))
        with localcontext(EXACT_SUM):
            extra = qty - old_qty
        if extra == 0 and minor == old_minor:
            continue
        suffix = "" if start == first else f"@{start:%Y%m%dT%H%M%S}"
        meter = _meter(history, charge, start)
        out.append(
            BilledLine(
                line_key=f"late:{period.start:%Y%m%dT%H%M%S}:{charge}{suffix}",
                charge=charge,
                kind=LineKind.ADJUSTMENT,
                quantity=extra,
                amount=from_minor(minor - old_minor, history.first.currency),
                amount_minor=minor - old_minor,
                description=f"Late usage for {late_window}: {extra} more {meter}",
                service_start=start,
                service_end=end,
            )
        )
    return out


def _amounts(lines: Iterable[BilledLine]) -> dict[tuple[str, datetime], tuple[Decimal, int, datetime]]:
    """Every charge per (charge, window start): usage quantity, billed minor units (with its true-up), window end.

    Flat lines are rated alike from both usages, so they never differ and add no line.
    """
    out: dict[tuple[str, datetime], tuple[Decimal, int, datetime]] = {}
    for line in lines:
        key = (line.charge, line.service_start)
        qty, minor, _ = out.get(key, (Decimal(0), 0, line.service_end))
        out[key] = (line.quantity if line.kind == "usage" else qty, minor + line.amount_minor, line.service_end)
    return out


def _meter(history: PlanHistory, charge: str, at: datetime) -> str:
    """The meter of `charge` under the plan in force at `at`."""
    return next((c.meter or c.key for c in history.plan_at(at).charges if c.key == charge), charge)


def _settle_in_advance(sub: SubscriptionTerms, parts: list[Segment], period: Period) -> list[WindowedLine]:
    """Catch-up, plan-change and cancel settlements of in-advance flat charges inside `period`."""
    lines: list[WindowedLine] = []
    cover_end = parts[-1].end  # the active window's end inside the period
    first = parts[0]
    first_paid = max(first.start, sub.paid_from)
    abu = sub.advance_billed_until
    billed_to = min(abu, period.end) if abu is not None and abu > period.start else None
    if first.plan.billing_timing is _ADVANCE and (billed_to is None or billed_to <= first_paid):
        lines += advance_flat(first.plan, period, first_paid, cover_end)  # never billed ahead: bill it now
        billed_to = cover_end
    for old, new in pairwise(parts):
        at = max(new.start, sub.paid_from)
        if old.plan.billing_timing is _ADVANCE and billed_to is not None:
            lines += unused_time_credit(old.plan, period, at, billed_to)
        if new.plan.billing_timing is _ADVANCE:
            lines += advance_flat(new.plan, period, at, cover_end)
            billed_to = cover_end
        else:
            billed_to = None
    last = parts[-1]
    if last.plan.billing_timing is _ADVANCE and billed_to is not None and billed_to > cover_end:
        lines += unused_time_credit(last.plan, period, max(cover_end, sub.paid_from), billed_to)
    return lines


def _billed_ahead(sub: SubscriptionTerms, plan: Plan, period: Period) -> tuple[list[BilledLine], datetime] | None:
    """`plan`'s in-advance flat charges for the paid part of `period`, and where that part ends.

    The paid part starts at the period's start or the trial's end and stops at the
    subscription's end; None when it is empty or `plan` bills in arrears.
    """
    start = max(period.start, sub.paid_from)
    end = period.end if sub.end_at is None else min(period.end, sub.end_at)
    if end <= start or plan.billing_timing is not _ADVANCE:
        return None
    return [BilledLine.from_windowed(line) for line in advance_flat(plan, period, start, end)], end


def opening_lines(sub: SubscriptionTerms, history: PlanHistory, period: Period) -> PeriodBill:
    """The opening invoice of an in-advance subscription: its first period's flat charges, billed ahead."""
    ahead = _billed_ahead(sub, history.plan_at(max(period.start, sub.paid_from)), period)
    if ahead is None:
        return PeriodBill(advance_billed_until=sub.advance_billed_until)
    lines, until = ahead
    return PeriodBill(lines=lines, advance_billed_until=until)
