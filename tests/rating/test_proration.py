"""Proration factors: exact active share of a period, clipped to it."""

from __future__ import annotations

from datetime import timedelta, timezone
from fractions import Fraction

import pytest

from rating import Period, proration_factor
from rating.proration import describe_share, percent_text
from tests.rating.builders import utc

APRIL = Period(utc(2026, 4, 1), utc(2026, 5, 1))  # 30 days


@pytest.mark.parametrize(
    ("active_from", "active_until", "factor"),
    [
        (None, None, Fraction(1)),
        (utc(2026, 4, 16), None, Fraction(1, 2)),
        (None, utc(2026, 4, 11), Fraction(1, 3)),
        (utc(2026, 4, 11), utc(2026, 4, 21), Fraction(1, 3)),
        (utc(2026, 3, 1), utc(2026, 6, 1), Fraction(1)),  # clipped both sides
        (utc(2026, 5, 1), None, Fraction(0)),  # starts when the period ends
        (None, utc(2026, 4, 1), Fraction(0)),  # ends when it starts
        (utc(2026, 4, 20), utc(2026, 4, 10), Fraction(0)),  # empty window
        (utc(2026, 4, 30, 23, 59, 59), None, Fraction(1, 30 * 86_400)),  # the last second
    ],
)
def test_proration_factor(active_from, active_until, factor) -> None:  # type: ignore[no-untyped-def]
    assert proration_factor(APRIL, active_from, active_until) == factor


def test_microsecond_precision() -> None:
    start = utc(2026, 4, 16) + timedelta(microseconds=1)
    assert proration_factor(APRIL, start, None) == Fraction(15 * 86_400 * 10**6 - 1, 30 * 86_400 * 10**6)


def test_other_time_zones_are_converted() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert proration_factor(APRIL, utc(2026, 4, 16).astimezone(plus_two), None) == Fraction(1, 2)


def test_naive_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        proration_factor(APRIL, utc(2026, 4, 16).replace(tzinfo=None), None)


def test_a_share_reads_in_days_of_its_period_never_as_a_raw_fraction() -> None:
    january_us = 31 * 86_400 * 10**6
    assert describe_share(Fraction(16, 31), january_us) == "prorated 16 of 31 days"
    # Active to the microsecond (about 30 days and 2.5 hours of January): two decimals, not a fraction.
    to_the_second = Fraction(2601162412679, 2678400000000)
    assert describe_share(to_the_second, january_us) == "prorated 30.11 of 31 days"
    assert describe_share(Fraction(1, 2), 31 * 86_400 * 10**6) == "prorated 15.5 of 31 days"
    assert describe_share(Fraction(1, 3)) == "prorated 33.33% of the period"
    assert describe_share(Fraction(2, 3)) == "prorated 66.67% of the period"  # half-up
    assert percent_text(Fraction(1, 2)) == "50%"
