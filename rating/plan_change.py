"""Mid-period plan changes: one billing period split between plans, prorated to the second.

A subscription that changes plan inside a billing period has *plan segments*: an ordered run
of (plan, start, end) windows that tile the part of the period it was active for, from
max(period start, active_from) to min(period end, active_until). The caller splits usage by
event time at each change instant and hands each segment its own usage. Two pure functions
price such a period (docs/pricing.md, "Plan changes mid-period", has worked examples):

    rate_segments            what the period owes in arrears: every segment's usage under the plan
                             in force then, and the flat charges of in-arrears plans, each prorated
                             to its segment's share of the period
    plan_change_adjustment   what one change owes for in-advance flat charges, which were billed for
                             the whole period at its start: a credit for the old plan's unused time
                             and a charge for the new plan's remaining time (Stripe's prorations)

Between them every flat charge of every segment is billed exactly once: in arrears by
`rate_segments`, or in advance by the period-start invoice plus one adjustment per change.
Usage is never prorated, and tier tables, free units and first-tier flat fees apply per
segment: each plan prices the usage recorded while it was in force.

A charge's `minimum_amount` and `maximum_amount` are per period and are not prorated for a
partial active window (as in `rate_plan`); when plans share the active time, each segment's
minimum and maximum are scaled by its share of that time, so a period never owes two whole
minimums. With a single segment the lines equal `rate_plan`'s, apart from keys and windows.

Line keys (unique within a period, stable across runs; charge keys contain neither '@' nor ':'):

    <charge>@<start>            the charge for the window starting at <start>, e.g. base@20260416T120000Z
    <charge>@<start>:minimum    its minimum true-up
    <charge>@<change>:credit    the unused-time credit of an in-advance flat charge

<start> is UTC to the second, with microseconds only when they are not zero. A flat charge
for the window starting at t has the key base@t whether it is billed in arrears or in advance;
only one of the two ever bills it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from types import MappingProxyType

from rating.engine import LineKind, parse_quantity
from rating.money import currency_exponent, fraction_to_decimal, to_minor
from rating.periods import Period, as_utc, microseconds_between
from rating.pricing import PRICING, TierLine, fmt
from rating.proration import describe_share, percent_text, proration_factor
from schemas.errors import InvalidInput, InvalidPlan
from schemas.plans import BillingTiming, Charge, ChargeModel, Plan

_ZERO = Decimal(0)


WindowedKind = LineKind  # one kind enum for every line; CREDIT is the only kind that may be negative here


@dataclass(frozen=True, slots=True)
class PlanSegment:
    """A plan in force for `[start, end)`, with the usage recorded in that window.

    `usage` maps meter keys to quantities, as for `rate_plan`; a missing meter used nothing.
    It is copied into a read-only mapping, so a segment cannot change after it is made.

    Raises:
        ValueError: `start` or `end` is naive.
        InvalidInput: the window is empty (`end` is not after `start`).
    """

    plan: Plan
    start: datetime
    end: datetime
    usage: Mapping[str, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        start, end = as_utc(self.start, "segment start"), as_utc(self.end, "segment end")
        if end <= start:
            raise InvalidInput(
                f"plan segment {self.plan.code!r} is empty: it ends {end.isoformat()}, "
                f"not after its start {start.isoformat()}"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "usage", MappingProxyType(dict(self.usage)))


@dataclass(frozen=True, slots=True)
class WindowedLine:
    """One priced line with its own service window `[service_start, service_end)`.

    `exact_amount` is the amount before rounding, as an exact fraction; `amount` shows it as a
    decimal (28 significant digits when it does not terminate) and `amount_minor` is it
    rounded half-up (away from zero), once.

    Raises:
        ValueError: on construction, a negative amount on a line that is not a credit, or a
            positive amount on a credit.
    """

    line_key: str  # see the module docstring for the scheme
    charge: str  # the charge key this line belongs to
    kind: WindowedKind
    plan: str  # the code of the plan the line bills under
    service_start: datetime
    service_end: datetime
    quantity: Decimal  # usage units; the window's share of the period for flat and credit; 1 for minimum
    exact_amount: Fraction  # major units, before rounding
    amount: Decimal  # major units, for display and storage
    amount_minor: int  # the billed amount, in the currency's minor unit
    description: str
    tiers: tuple[TierLine, ...] = ()  # graduated/volume breakdown, informational

    def __post_init__(self) -> None:
        if self.kind is WindowedKind.CREDIT and self.exact_amount > 0:
            raise ValueError(f"line {self.line_key!r}: a credit cannot be positive ({self.exact_amount})")
        if self.kind is not WindowedKind.CREDIT and self.exact_amount < 0:
            raise ValueError(f"line {self.line_key!r}: only credit lines may be negative ({self.exact_amount})")


def rate_segments(
    period: Period, segments: Sequence[PlanSegment], *, paid_from: datetime | None = None
) -> tuple[WindowedLine, ...]:
    """Price what `period` owes in arrears when its plan changed inside it.

    Each segment bills its usage under its own plan, and, when that plan bills in arrears, its
    flat charges times the share of the period the segment covers from `paid_from` on (a trial
    pays no flat fee; None: the whole segment). Flat charges of in-advance plans are
    left out: the period-start invoice billed them, and `plan_change_adjustment` settles each
    change. Lines come in segment order, then the plan's charge order, each true-up after its
    charge, every line carrying its segment as its service window.

    Raises:
        InvalidInput: no segments, or segments that leave a gap, overlap or reach outside `period`.
        InvalidPlan: the segments' plans differ in currency or billing interval.
        InvalidUsage: a usage quantity is negative or not a finite decimal (names the meter).
    """
    _check_segments(period, segments)
    active_us = microseconds_between(segments[0].start, segments[-1].end)
    lines: list[WindowedLine] = []
    for segment in segments:
        flat_from = segment.start if paid_from is None else max(segment.start, as_utc(paid_from, "paid_from"))
        factor = proration_factor(period, flat_from, segment.end)
        commitment = Fraction(microseconds_between(segment.start, segment.end), active_us)
        quantities = {meter: parse_quantity(meter, value) for meter, value in segment.usage.items()}
        in_arrears = segment.plan.billing_timing is BillingTiming.IN_ARREARS
        for charge in segment.plan.charges:
            if charge.model is not ChargeModel.FLAT:
                quantity = quantities.get(charge.meter or "", _ZERO)
                lines.extend(_charge_lines(segment, charge, quantity, Fraction(1), commitment))
            elif in_arrears:
                lines.extend(_charge_lines(segment, charge, _ZERO, factor, commitment))
    return tuple(lines)


def plan_change_adjustment(period: Period, old: Plan, new: Plan, change_at: datetime) -> tuple[WindowedLine, ...]:
    """The lines a plan change at `change_at` adds for flat charges billed in advance.

    An in-advance `old` plan was billed for the whole period at its start, so each of its flat
    charges gets a CREDIT line (negative) for `[change_at, period end)`. An in-advance `new`
    plan gets a FLAT line per flat charge for that same remaining time. An in-arrears plan gets
    no line here; `rate_segments` bills its segment when the period closes. Each amount is the
    charge's full-period amount (its `amount`, held within its minimum and maximum, as the
    period-start invoice billed it) times the remaining share, rounded once per line.

    A change at the period start credits and charges whole periods; a change at the period end
    leaves no time to settle and returns no lines. Credits come first, in the old plan's charge
    order, then the new plan's charges.

    Raises:
        ValueError: `change_at` is naive.
        InvalidInput: `change_at` is outside `[period start, period end]`.
        InvalidPlan: `old` and `new` differ in currency or billing interval.
    """
    change_at = as_utc(change_at, "change_at")
    check_compatible(old, new)
    if not period.start <= change_at <= period.end:
        raise InvalidInput(
            f"plan change at {change_at.isoformat()} is outside the period "
            f"[{period.start.isoformat()}, {period.end.isoformat()})"
        )
    if change_at == period.end:
        return ()
    lines: list[WindowedLine] = []
    if old.billing_timing is BillingTiming.IN_ADVANCE:
        lines.extend(unused_time_credit(old, period, change_at, period.end))
    if new.billing_timing is BillingTiming.IN_ADVANCE:
        lines.extend(advance_flat(new, period, change_at, period.end))
    return tuple(lines)


def advance_flat(plan: Plan, period: Period, start: datetime, end: datetime) -> tuple[WindowedLine, ...]:
    """The flat charges of `plan` for `[start, end)` within `period`, billed before that time is used.

    One FLAT line per flat charge, in charge order: its full-period amount (held within its
    minimum and maximum) times the window's share of the period, rounded once. A window that
    misses the period gives no lines.

    Raises:
        ValueError: `start` or `end` is naive.
    """
    return _remaining_lines(plan, period, start, end, credit=False)


def unused_time_credit(plan: Plan, period: Period, start: datetime, end: datetime) -> tuple[WindowedLine, ...]:
    """CREDIT lines giving back `plan`'s in-advance flat charges for `[start, end)` within `period`.

    The exact negative of `advance_flat` for the same window: what was billed in advance for
    time the subscription will not use (a plan change or a cancel). A window that misses the
    period gives no lines.

    Raises:
        ValueError: `start` or `end` is naive.
    """
    return _remaining_lines(plan, period, start, end, credit=True)


def plan_windows(
    period: Period,
    first: Plan,
    changes: Sequence[tuple[datetime, Plan]],
    *,
    active_from: datetime | None = None,
    active_until: datetime | None = None,
) -> tuple[tuple[Plan, datetime, datetime], ...]:
    """Which plan was in force when inside `period`: (plan, start, end) windows that tile it.

    `first` is the plan the subscription started on and `changes` its plan changes as
    (effective instant, new plan), in time order; the windows are clipped to the active window
    `[active_from, active_until)` (None: unbounded). A change at or before the window's start
    just picks the plan in force; a window that misses the period gives none.

    Raises:
        ValueError: an instant is naive.
        InvalidInput: the changes are not in strictly increasing time order.
    """
    start = period.start if active_from is None else max(period.start, as_utc(active_from, "active_from"))
    end = period.end if active_until is None else min(period.end, as_utc(active_until, "active_until"))
    instants = [as_utc(at, "plan change") for at, _ in changes]
    if any(later <= earlier for earlier, later in pairwise(instants)):
        raise InvalidInput("plan changes must be in strictly increasing time order")
    if end <= start:
        return ()
    current, cuts = first, []
    for at, (_, plan) in zip(instants, changes, strict=True):
        if at <= start:
            current = plan
        elif at < end:
            cuts.append((at, plan))
    windows: list[tuple[Plan, datetime, datetime]] = []
    for at, plan in cuts:
        windows.append((current, start, at))
        current, start = plan, at
    windows.append((current, start, end))
    return tuple(windows)


def _charge_lines(
    segment: PlanSegment, charge: Charge, quantity: Decimal, factor: Fraction, commitment: Fraction
) -> list[WindowedLine]:
    """One charge for one segment: its line, then its minimum true-up if one is owed.

    The engine's `rate_charge` rules, with the maximum and minimum scaled by `commitment`, the
    segment's share of the active time (1 leaves them, and the lines, exactly as the engine's).
    `factor` is the segment's share of the period, taken by flat charges only.
    """
    priced = PRICING[charge.model](charge, quantity, factor)
    exact, detail = priced.amount, priced.detail
    if charge.model is ChargeModel.FLAT and 0 < factor != 1:
        detail += f", {describe_share(factor, microseconds_between(segment.start, segment.end) / factor)}"
    scaled = "" if commitment == 1 else f", scaled to {percent_text(commitment)} for the time on this plan"
    if charge.maximum_amount is not None and exact > (cap := Fraction(charge.maximum_amount) * commitment):
        exact = cap
        detail += f", capped at {fmt(charge.maximum_amount)}{scaled}"
    kind = WindowedKind.FLAT if charge.model is ChargeModel.FLAT else WindowedKind.USAGE
    window, key, label = (segment.start, segment.end), _key(charge, segment.start), _label(charge)
    line = _line(segment.plan, charge, kind, key, window, priced.quantity, exact, f"{label}: {detail}", priced.tiers)
    if charge.minimum_amount is None or exact >= (floor := Fraction(charge.minimum_amount) * commitment):
        return [line]
    billed = Fraction(line.amount_minor, 10 ** currency_exponent(segment.plan.currency))
    if floor - billed <= 0:  # the charge line already rounded up to the minimum
        return [line]
    description = f"{label}: minimum {fmt(charge.minimum_amount)} per period{scaled}, true-up"
    true_up = _line(
        segment.plan, charge, WindowedKind.MINIMUM, f"{key}:minimum", window, Decimal(1), floor - billed, description
    )
    return [line, true_up]


def _remaining_lines(
    plan: Plan, period: Period, start: datetime, end: datetime, *, credit: bool
) -> tuple[WindowedLine, ...]:
    """In-advance flat charges of `plan` for a window of `period`, or their credit."""
    share = proration_factor(period, as_utc(start, "window start"), as_utc(end, "window end"))
    if share == 0:
        return ()
    first = max(period.start, as_utc(start))
    window = (first, min(period.end, as_utc(end)))
    return tuple(_remaining_time(plan, charge, window, share, credit=credit) for charge in _flat_charges(plan))


def _remaining_time(
    plan: Plan, charge: Charge, window: tuple[datetime, datetime], remaining: Fraction, *, credit: bool
) -> WindowedLine:
    """An in-advance flat charge for a window of the period, or its credit."""
    full = _full_period_flat(charge)
    period_us = microseconds_between(*window) / remaining
    share = "" if remaining == 1 else f", {describe_share(remaining, period_us)}"
    detail = f"flat {fmt(fraction_to_decimal(full))}{share}"
    key, label, quantity = _key(charge, window[0]), _label(charge), fraction_to_decimal(remaining)
    if credit:
        description = f"{label}: unused time on plan {plan.code}, {detail}, credited"
        return _line(
            plan, charge, WindowedKind.CREDIT, f"{key}:credit", window, quantity, -full * remaining, description
        )
    description = f"{label}: time on plan {plan.code} billed in advance, {detail}"
    return _line(plan, charge, WindowedKind.FLAT, key, window, quantity, full * remaining, description)


def _line(
    plan: Plan,
    charge: Charge,
    kind: WindowedKind,
    key: str,
    window: tuple[datetime, datetime],
    quantity: Decimal,
    exact: Fraction,
    description: str,
    tiers: tuple[TierLine, ...] = (),
) -> WindowedLine:
    """A line from its exact amount: shown as a decimal, rounded to minor units once, here."""
    return WindowedLine(
        line_key=key,
        charge=charge.key,
        kind=kind,
        plan=plan.code,
        service_start=window[0],
        service_end=window[1],
        quantity=quantity,
        exact_amount=exact,
        amount=fraction_to_decimal(exact),
        amount_minor=to_minor(exact, plan.currency),
        description=description,
        tiers=tiers,
    )


def _check_segments(period: Period, segments: Sequence[PlanSegment]) -> None:
    """Segments are non-empty (checked by PlanSegment), contiguous, inside `period`, one currency."""
    if not segments:
        raise InvalidInput("rate_segments needs at least one plan segment")
    for before, after in pairwise(segments):
        check_compatible(before.plan, after.plan)
        if after.start != before.end:
            problem = "leave a gap" if after.start > before.end else "overlap"
            raise InvalidInput(
                f"plan segments {problem}: {before.plan.code!r} ends {before.end.isoformat()} "
                f"but {after.plan.code!r} starts {after.start.isoformat()}"
            )
    first, last = segments[0], segments[-1]
    if first.start < period.start or last.end > period.end:
        raise InvalidInput(
            f"plan segments [{first.start.isoformat()}, {last.end.isoformat()}) reach outside the period "
            f"[{period.start.isoformat()}, {period.end.isoformat()})"
        )


def check_compatible(old: Plan, new: Plan) -> None:
    """Plans that can share one period: the same currency and the same billing interval.

    A change of interval moves the period grid itself (Stripe resets the billing cycle), which
    is a different operation from splitting one period.
    """
    if old.currency != new.currency:
        raise InvalidPlan(
            f"plan {new.code!r} bills in {new.currency} but plan {old.code!r} in {old.currency}; "
            "one period has one currency"
        )
    if (old.interval, old.interval_count) != (new.interval, new.interval_count):
        raise InvalidPlan(
            f"plan {new.code!r} bills every {new.interval_count} {new.interval} but plan {old.code!r} "
            f"every {old.interval_count} {old.interval}; a change of interval starts a new period"
        )


def _flat_charges(plan: Plan) -> list[Charge]:
    return [charge for charge in plan.charges if charge.model is ChargeModel.FLAT]


def _full_period_flat(charge: Charge) -> Fraction:
    """What a flat charge bills for a whole period: its amount, capped, then lifted to its minimum.

    This is what the period-start invoice billed (`rate_charge`: the flat line plus any true-up).
    """
    amount = PRICING[ChargeModel.FLAT](charge, _ZERO, Fraction(1)).amount
    if charge.maximum_amount is not None:
        amount = min(amount, Fraction(charge.maximum_amount))
    if charge.minimum_amount is not None:
        amount = max(amount, Fraction(charge.minimum_amount))
    return amount


def _key(charge: Charge, start: datetime) -> str:
    """'<charge>@<UTC start>', e.g. 'base@20260416T120000Z' (microseconds only when not zero)."""
    stamp = f"{start:%Y%m%dT%H%M%S}" + (f".{start:%f}" if start.microsecond else "")
    return f"{charge.key}@{stamp}Z"


def _label(charge: Charge) -> str:
    return charge.description or charge.key
