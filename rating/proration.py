"""Proration: the share of a billing period a subscription was active for.

The factor is exact: active microseconds inside the period divided by the period's
microseconds, as a `Fraction`. It is only turned into money (and rounded) by the engine,
once, when a flat line is made, so 10 days of a 30-day month is exactly 1/3, not 0.3333.
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction

from rating.periods import Period, as_utc, microseconds_between


def proration_factor(period: Period, active_from: datetime | None, active_until: datetime | None) -> Fraction:
    """Active share of `period`: |[active_from, active_until) ∩ period| / |period|.

    `None` means unbounded on that side (active since before / until after the period).
    The window is clipped to the period, so the factor is always between 0 and 1; a window
    that misses the period, or is empty, gives 0.

    Raises:
        ValueError: `active_from` or `active_until` is naive.
    """
    start = period.start if active_from is None else max(period.start, as_utc(active_from))
    end = period.end if active_until is None else min(period.end, as_utc(active_until))
    active_us = max(microseconds_between(start, end), 0)
    return Fraction(active_us, period.microseconds)


_DAY_US = 86_400_000_000


def describe_share(share: Fraction, period_us: int | Fraction | None = None) -> str:
    """A proration share as a customer reads it: "prorated 16 of 31 days".

    `period_us` is the period's length; without it the share is a percentage ("prorated
    51.61% of the period"). Days that are not whole show two decimals: the description
    only explains the line, whose amount is computed from the exact share.
    """
    if period_us is None:
        return f"prorated {percent_text(share)} of the period"
    total = Fraction(period_us) / _DAY_US
    return f"prorated {_decimal_text(share * total)} of {_decimal_text(total)} days"


def percent_text(share: Fraction) -> str:
    """A share as a percentage with at most two decimals: 1/3 is "33.33%"."""
    return f"{_decimal_text(share * 100)}%"


def _decimal_text(value: Fraction) -> str:
    """A whole number as is, anything else rounded half-up to two decimals ("30.11")."""
    if value.denominator == 1:
        return str(value.numerator)
    hundredths = (value * 100 + Fraction(1, 2)) // 1
    whole, cents = divmod(int(hundredths), 100)
    return f"{whole}.{cents:02d}".rstrip("0").rstrip(".")
