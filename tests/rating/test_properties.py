"""Hypothesis properties of pricing, rounding, proration and periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rating import (
    Period,
    format_minor,
    from_minor,
    period_containing,
    periods_between,
    proration_factor,
    rate_charge,
    to_minor,
)
from rating.money import currency_exponent
from schemas.plans import CURRENCY_EXPONENTS, Charge, Interval

D = Decimal

quantities = st.decimals(min_value=0, max_value=10_000, places=3)
prices = st.decimals(min_value=0, max_value=100, places=4)


@st.composite
def tier_tables(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1–5 tiers: strictly ascending bounds, any non-negative prices, last one open."""
    bounds = sorted(draw(st.sets(st.decimals(min_value=0, max_value=5_000, places=2), max_size=4)))
    rows: list[dict[str, Any]] = []
    for bound in [*bounds, None]:
        rows.append({"up_to": bound, "unit_amount": draw(prices), "flat_amount": draw(prices)})
    return rows


@st.composite
def volume_tables_without_cliffs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Volume tiers whose total never drops when crossing a boundary.

    Volume totals are q × unit_i + flat_i. Just past bound b the next tier bills more than
    b × unit_{i+1} + flat_{i+1}, so the total cannot fall there iff
    b × unit_i + flat_i <= b × unit_{i+1} + flat_{i+1}. We draw (often decreasing) unit
    prices and raise each next flat fee just enough to keep that true, plus a random extra.
    """
    rows = draw(tier_tables())
    for previous, row in pairwise(rows):
        bound = previous["up_to"]
        needed = bound * previous["unit_amount"] + previous["flat_amount"] - bound * row["unit_amount"]
        row["flat_amount"] = max(needed, D(0)) + draw(prices)
    return rows


def amount(model: str, table: list[dict[str, Any]], quantity: Decimal) -> Decimal:
    charge = Charge.model_validate({"key": "c", "model": model, "meter": "m", "tiers": table})
    (line,) = rate_charge(charge, quantity, "USD")
    return line.amount


@given(tier_tables(), quantities, quantities)
def test_graduated_never_decreases_as_quantity_grows(table: Any, a: Decimal, b: Decimal) -> None:
    low, high = sorted((a, b))
    assert amount("graduated", table, low) <= amount("graduated", table, high)


@given(volume_tables_without_cliffs(), quantities, quantities)
def test_volume_never_decreases_on_tables_without_cliffs(table: Any, a: Decimal, b: Decimal) -> None:
    """Volume pricing is NOT monotone in general (Stripe: 5 × 5 = 25 > 6 × 4 = 24; see
    test_published_examples). It is monotone within a tier, and across the whole table when
    no boundary is a cliff, which is what this property checks."""
    low, high = sorted((a, b))
    assert amount("volume", table, low) <= amount("volume", table, high)


@given(tier_tables(), quantities, quantities)
def test_volume_never_decreases_within_one_tier(table: Any, a: Decimal, b: Decimal) -> None:
    charge = Charge.model_validate({"key": "c", "model": "volume", "meter": "m", "tiers": table})
    low, high = sorted((a, b))
    (low_line,) = rate_charge(charge, low, "USD")
    (high_line,) = rate_charge(charge, high, "USD")
    if low_line.tiers[0].tier == high_line.tiers[0].tier:
        assert low_line.amount <= high_line.amount


@given(tier_tables(), quantities)
def test_graduated_amount_is_the_sum_of_its_tiers(table: Any, quantity: Decimal) -> None:
    charge = Charge.model_validate({"key": "c", "model": "graduated", "meter": "m", "tiers": table})
    (line,) = rate_charge(charge, quantity, "USD")
    assert line.amount == sum(t.amount for t in line.tiers)
    assert sum(t.quantity for t in line.tiers) == quantity
    assert line.tiers[0].tier == 1


@given(
    st.one_of(
        st.decimals(min_value=-(10**9), max_value=10**9, places=6).map(Fraction),
        st.fractions(min_value=-(10**9), max_value=10**9),
    ),
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_rounding_moves_an_amount_by_at_most_half_a_minor_unit(value: Fraction, currency: str) -> None:
    minor = to_minor(value, currency)
    unit = Fraction(1, 10 ** currency_exponent(currency))
    assert abs(Fraction(from_minor(minor, currency)) - value) <= unit / 2
    assert D(format_minor(minor, currency)) == from_minor(minor, currency)


@given(prices, quantities, st.sampled_from(["USD", "JPY", "BHD", "CLF"]))
def test_rated_lines_round_by_at_most_half_a_minor_unit(price: Decimal, quantity: Decimal, currency: str) -> None:
    charge = Charge.model_validate({"key": "c", "model": "per_unit", "meter": "m", "unit_amount": price})
    (line,) = rate_charge(charge, quantity, currency)
    unit = Fraction(1, 10 ** currency_exponent(currency))
    assert abs(Fraction(from_minor(line.amount_minor, currency)) - Fraction(line.amount)) <= unit / 2


instants = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))
intervals = st.sampled_from(list(Interval))
counts = st.integers(min_value=1, max_value=4)


@given(instants, st.integers(min_value=1, max_value=10**13), instants)
def test_complementary_windows_add_up_to_one(start: datetime, length_us: int, split: datetime) -> None:
    period = Period(start, start + timedelta(microseconds=length_us))
    before = proration_factor(period, None, split)
    after = proration_factor(period, split, None)
    assert before + after == 1
    assert 0 <= before <= 1


@given(instants, intervals, counts, instants, st.integers(min_value=0, max_value=400 * 86_400))
def test_periods_tile_with_no_gaps(
    anchor: datetime, interval: Interval, count: int, start: datetime, span_s: int
) -> None:
    end = start + timedelta(seconds=span_s)
    periods = list(periods_between(anchor, interval, start, end, count))
    if span_s == 0:
        assert periods == []
        return
    assert start in periods[0]
    assert periods[-1].end >= end
    for earlier, later in pairwise(periods):
        assert earlier.end == later.start
    for period in periods:
        assert period_containing(anchor, interval, period.start, count) == period


@given(instants, intervals, counts, instants)
def test_every_instant_is_in_exactly_one_period(anchor: datetime, interval: Interval, count: int, t: datetime) -> None:
    period = period_containing(anchor, interval, t, count)
    assert t in period
    before = period_containing(anchor, interval, period.start - timedelta(microseconds=1), count)
    after = period_containing(anchor, interval, period.end, count)
    assert before.end == period.start
    assert after.start == period.end
    assert t not in before
    assert t not in after
