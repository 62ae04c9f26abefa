"""Billing periods: half-open UTC windows laid end to end from a billing anchor.

Period boundaries are `anchor + k·step` for every integer k (negative k too, so an instant
before the anchor still has a period). Month, quarter and year steps are always counted
from the anchor itself, clamping the day to the month's last day: an anchor on 31 January
gives 28 (or 29) February, then 31 March, never drifting to the 28th. The anchor's time of
day is kept. Periods are `[start, end)`, so an instant exactly on a boundary belongs to the
period that starts there.

All datetimes must be timezone-aware; they are converted to UTC before any arithmetic, so a
month step means a UTC calendar month.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from schemas.plans import Interval

_MONTHS_PER_STEP = {Interval.MONTH: 1, Interval.QUARTER: 3, Interval.YEAR: 12}
_FIXED_STEP = {Interval.DAY: timedelta(days=1), Interval.WEEK: timedelta(weeks=1)}


def as_utc(value: datetime, name: str = "datetime") -> datetime:
    """`value` converted to UTC.

    Raises:
        ValueError: `value` is naive; a billing instant without a zone is ambiguous.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def microseconds_between(start: datetime, end: datetime) -> int:
    """Exact length of `[start, end)` in integer microseconds (negative if end < start)."""
    delta = end - start
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open UTC window `[start, end)`.

    Raises:
        ValueError: on construction, if either end is naive or `end` is not after `start`.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        start, end = as_utc(self.start, "period start"), as_utc(self.end, "period end")
        if end <= start:
            raise ValueError(f"period end {end.isoformat()} must be after start {start.isoformat()}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @property
    def microseconds(self) -> int:
        """Length in integer microseconds: the exact unit proration divides by."""
        return microseconds_between(self.start, self.end)

    @property
    def seconds(self) -> Decimal:
        """Length in seconds, exact (whole for anchored periods, fractional only if built so)."""
        # Exact: any datetime span has far fewer than 28 significant digits of microseconds.
        return Decimal(self.microseconds) / Decimal(1_000_000)

    def __contains__(self, t: object) -> bool:
        """Whether instant `t` falls in `[start, end)`; a naive `t` raises ValueError."""
        if not isinstance(t, datetime):
            return False
        return self.start <= as_utc(t, "instant") < self.end


def _add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by `months` calendar months, the day clamped to the month's end."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def _boundary(anchor: datetime, interval: Interval, k: int, count: int) -> datetime:
    """The k-th period boundary: `anchor + k·count·interval`, always measured from the anchor."""
    if interval in _FIXED_STEP:
        return anchor + _FIXED_STEP[interval] * (k * count)
    return _add_months(anchor, k * count * _MONTHS_PER_STEP[interval])


def _index_containing(anchor: datetime, interval: Interval, t: datetime, count: int) -> int:
    """The k with `boundary(k) <= t < boundary(k + 1)`."""
    if interval in _FIXED_STEP:
        step_us = microseconds_between(anchor, anchor + _FIXED_STEP[interval] * count)
        return microseconds_between(anchor, t) // step_us
    months = (t.year - anchor.year) * 12 + (t.month - anchor.month)
    k = months // (count * _MONTHS_PER_STEP[interval])
    # boundary(k) falls in t's month or earlier and boundary(k + 1) in a later month, so
    # k is right unless boundary(k) is later in the same month than t: then it is k − 1.
    if _boundary(anchor, interval, k, count) > t:
        k -= 1
    return k


def _check_count(interval_count: int) -> None:
    if interval_count < 1:
        raise ValueError(f"interval_count must be at least 1, got {interval_count}")


def _period_at(anchor: datetime, interval: Interval, k: int, count: int) -> Period:
    return Period(_boundary(anchor, interval, k, count), _boundary(anchor, interval, k + 1, count))


def period_containing(anchor: datetime, interval: Interval, t: datetime, interval_count: int = 1) -> Period:
    """The period of the `anchor`/`interval` grid that contains instant `t`.

    An instant exactly on a boundary belongs to the later period (periods are half-open).

    Raises:
        ValueError: a naive datetime, or `interval_count` below 1.
    """
    _check_count(interval_count)
    anchor, t = as_utc(anchor, "anchor"), as_utc(t, "instant")
    k = _index_containing(anchor, interval, t, interval_count)
    return _period_at(anchor, interval, k, interval_count)


def period_starting(anchor: datetime, interval: Interval, start: datetime, interval_count: int = 1) -> Period:
    """The period that starts exactly at `start`.

    Raises:
        ValueError: `start` is not a boundary of the grid, a datetime is naive, or
            `interval_count` is below 1.
    """
    period = period_containing(anchor, interval, start, interval_count)
    if period.start != start:
        raise ValueError(
            f"{as_utc(start).isoformat()} is not a period boundary "
            f"(the period containing it starts {period.start.isoformat()})"
        )
    return period


def periods_between(
    anchor: datetime,
    interval: Interval,
    start: datetime,
    end: datetime,
    interval_count: int = 1,
) -> Iterator[Period]:
    """The periods overlapping `[start, end)`, in order; none when `end == start`.

    The first and last periods are whole periods of the grid, so they may reach outside
    `[start, end)`; clip them yourself (proration does) if you need the overlap.

    Raises:
        ValueError: `end` before `start`, a naive datetime, or `interval_count` below 1.
    """
    _check_count(interval_count)
    anchor = as_utc(anchor, "anchor")
    start, end = as_utc(start, "start"), as_utc(end, "end")
    if end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
    return _walk(anchor, interval, start, end, interval_count)


def _walk(anchor: datetime, interval: Interval, start: datetime, end: datetime, count: int) -> Iterator[Period]:
    """Generator behind `periods_between`, split out so argument errors raise eagerly."""
    if start == end:  # an empty range overlaps nothing, not even the period around it
        return
    k = _index_containing(anchor, interval, start, count)
    while (boundary := _boundary(anchor, interval, k, count)) < end:
        yield Period(boundary, _boundary(anchor, interval, k + 1, count))
        k += 1
