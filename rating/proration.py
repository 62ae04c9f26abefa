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
