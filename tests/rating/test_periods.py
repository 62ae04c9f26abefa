"""Billing periods: anchored, clamped month ends, half-open, negative k."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from rating import Period, period_containing, period_starting, periods_between
from schemas.plans import Interval
from tests.rating.builders import utc

JAN31 = utc(2024, 1, 31, 10)


def starts(periods: list[Period]) -> list[datetime]:
    return [p.start for p in periods]


def test_month_end_anchor_clamps_without_drifting() -> None:
    periods = list(periods_between(JAN31, Interval.MONTH, JAN31, utc(2024, 6, 1)))
    assert starts(periods) == [
        utc(2024, 1, 31, 10),
        utc(2024, 2, 29, 10),  # leap year: clamped to the 29th
        utc(2024, 3, 31, 10),  # back to the 31st, not stuck on the 29th
        utc(2024, 4, 30, 10),
        utc(2024, 5, 31, 10),
    ]
    assert periods[-1].end == utc(2024, 6, 30, 10)


def test_non_leap_february_clamps_to_the_28th() -> None:
    period = period_containing(utc(2025, 1, 31), Interval.MONTH, utc(2025, 3, 1))
    assert period == Period(utc(2025, 2, 28), utc(2025, 3, 31))


def test_instants_before_the_anchor_still_have_a_period() -> None:
    period = period_containing(JAN31, Interval.MONTH, utc(2023, 12, 1))
    assert period == Period(utc(2023, 11, 30, 10), utc(2023, 12, 31, 10))


def test_an_instant_on_a_boundary_belongs_to_the_later_period() -> None:
    boundary = utc(2024, 2, 29, 10)
    period = period_containing(JAN31, Interval.MONTH, boundary)
    assert period.start == boundary
    assert boundary in period
    assert boundary not in period_containing(JAN31, Interval.MONTH, boundary - timedelta(microseconds=1))


@pytest.mark.parametrize(
    ("interval", "count", "t", "expected"),
    [
        (Interval.DAY, 1, utc(2024, 3, 5, 9), (utc(2024, 3, 4, 10), utc(2024, 3, 5, 10))),
        (Interval.DAY, 7, utc(2024, 2, 7, 10), (utc(2024, 2, 7, 10), utc(2024, 2, 14, 10))),
        (Interval.WEEK, 1, utc(2024, 1, 30), (utc(2024, 1, 24, 10), utc(2024, 1, 31, 10))),
        (Interval.WEEK, 2, utc(2024, 2, 20), (utc(2024, 2, 14, 10), utc(2024, 2, 28, 10))),
        (Interval.MONTH, 2, utc(2024, 4, 1), (utc(2024, 3, 31, 10), utc(2024, 5, 31, 10))),
        (Interval.QUARTER, 1, utc(2024, 5, 1), (utc(2024, 4, 30, 10), utc(2024, 7, 31, 10))),
        (Interval.YEAR, 1, utc(2025, 6, 1), (utc(2025, 1, 31, 10), utc(2026, 1, 31, 10))),
        (Interval.YEAR, 1, utc(2020, 6, 1), (utc(2020, 1, 31, 10), utc(2021, 1, 31, 10))),
    ],
)
def test_period_containing(interval: Interval, count: int, t: datetime, expected: tuple[datetime, datetime]) -> None:
    assert period_containing(JAN31, interval, t, count) == Period(*expected)


def test_leap_day_anchor_yearly() -> None:
    leap = utc(2024, 2, 29)
    periods = list(periods_between(leap, Interval.YEAR, leap, utc(2028, 3, 1)))
    assert starts(periods) == [utc(2024, 2, 29), utc(2025, 2, 28), utc(2026, 2, 28), utc(2027, 2, 28), utc(2028, 2, 29)]


def test_other_time_zones_are_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    anchor = datetime(2024, 1, 1, 2, tzinfo=plus_two)  # midnight UTC
    period = period_containing(anchor, Interval.MONTH, datetime(2024, 2, 1, 1, tzinfo=plus_two))
    assert period == Period(utc(2024, 1, 1), utc(2024, 2, 1))
    assert period.start.tzinfo is UTC


def test_period_starting() -> None:
    assert period_starting(JAN31, Interval.MONTH, utc(2024, 2, 29, 10)).end == utc(2024, 3, 31, 10)
    with pytest.raises(ValueError, match="not a period boundary"):
        period_starting(JAN31, Interval.MONTH, utc(2024, 3, 1))


def test_periods_between_overlaps_only() -> None:
    periods = list(periods_between(JAN31, Interval.MONTH, utc(2024, 3, 15), utc(2024, 3, 31, 10)))
    assert periods == [Period(utc(2024, 2, 29, 10), utc(2024, 3, 31, 10))]
    assert list(periods_between(JAN31, Interval.MONTH, utc(2024, 3, 15), utc(2024, 3, 15))) == []


def test_periods_between_rejects_reversed_range_eagerly() -> None:
    with pytest.raises(ValueError, match="before start"):
        periods_between(JAN31, Interval.MONTH, utc(2024, 3, 15), utc(2024, 3, 1))


@pytest.mark.parametrize("count", [0, -1])
def test_interval_count_must_be_positive(count: int) -> None:
    with pytest.raises(ValueError, match="interval_count"):
        period_containing(JAN31, Interval.MONTH, JAN31, count)
    with pytest.raises(ValueError, match="interval_count"):
        periods_between(JAN31, Interval.MONTH, JAN31, JAN31, count)


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2024, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        period_containing(naive, Interval.MONTH, JAN31)
    with pytest.raises(ValueError, match="timezone-aware"):
        period_containing(JAN31, Interval.MONTH, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        Period(naive, JAN31)
    with pytest.raises(ValueError, match="timezone-aware"):
        naive in Period(utc(2024, 1, 1), utc(2024, 2, 1))  # noqa: B015 - the check raises


def test_period_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="must be after start"):
        Period(JAN31, JAN31)


def test_period_length() -> None:
    period = Period(utc(2024, 2, 1), utc(2024, 3, 1))
    assert period.seconds == Decimal(29 * 86_400)
    assert period.microseconds == 29 * 86_400 * 10**6
    odd = Period(utc(2024, 2, 1), utc(2024, 2, 1) + timedelta(seconds=1, microseconds=500_000))
    assert odd.seconds == Decimal("1.5")


def test_contains_is_half_open_and_ignores_non_datetimes() -> None:
    period = Period(utc(2024, 2, 1), utc(2024, 3, 1))
    assert utc(2024, 2, 1) in period
    assert utc(2024, 3, 1) not in period
    assert "2024-02-10" not in period
