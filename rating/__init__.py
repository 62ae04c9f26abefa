"""Rating: turn a plan and a period's usage into exact, rounded invoice lines.

Pure functions only: the standard library and `schemas`, no clock, no I/O, so every
result is reproducible from its inputs. The pieces, in the order money flows:

    aggregation what a meter's aggregation is: a fold with its merge and billable quantity
    periods     billing periods laid out from an anchor, half-open [start, end)
    timeline    the plan in force at t, and a period's usage windows (plan changes, trial end)
    proration   the active share of a period, as an exact Fraction
    pricing     one function per ChargeModel (flat, per_unit, package, graduated, volume)
    engine      rate_charge / rate_plan: lines with stable line keys, min/max, totals
    plan_change rate_segments / plan_change_adjustment / plan_windows: mid-period plan changes,
                prorated; advance_flat / unused_time_credit: flat fees billed in advance
    money       ISO 4217 exponents and the single half-up rounding to minor units

Errors come from `schemas.errors`: InvalidPlan for a plan that slipped past validation,
InvalidUsage for a bad quantity, InvalidInput for an unknown currency.
"""

from rating.engine import (
    LineKind,
    RatedInvoice,
    RatedLine,
    parse_quantity,
    rate_charge,
    rate_plan,
)
from rating.money import currency_exponent, format_minor, from_minor, to_minor
from rating.periods import Period, period_containing, period_starting, periods_between
from rating.plan_change import (
    PlanSegment,
    WindowedKind,
    WindowedLine,
    advance_flat,
    check_compatible,
    plan_change_adjustment,
    plan_windows,
    rate_segments,
    unused_time_credit,
)
from rating.pricing import PRICING, TierLine
from rating.proration import proration_factor

__all__ = [
    "PRICING",
    "LineKind",
    "Period",
    "PlanSegment",
    "RatedInvoice",
    "RatedLine",
    "TierLine",
    "WindowedKind",
    "WindowedLine",
    "advance_flat",
    "check_compatible",
    "currency_exponent",
    "format_minor",
    "from_minor",
    "parse_quantity",
    "period_containing",
    "period_starting",
    "periods_between",
    "plan_change_adjustment",
    "plan_windows",
    "proration_factor",
    "rate_charge",
    "rate_plan",
    "rate_segments",
    "to_minor",
    "unused_time_credit",
]
