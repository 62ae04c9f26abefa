"""Mid-period plan changes: rate_segments (in arrears) and plan_change_adjustment (in advance)."""

from __future__ import annotations

from datetime import timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating import (
    Period,
    PlanSegment,
    RatedLine,
    WindowedKind,
    WindowedLine,
    advance_flat,
    plan_change_adjustment,
    plan_windows,
    proration_factor,
    rate_plan,
    rate_segments,
    to_minor,
    unused_time_credit,
)
from schemas.errors import InvalidInput, InvalidPlan, InvalidUsage
from schemas.plans import Plan, load_plan
from tests.rating.builders import STRIPE_FONT_TIERS, utc

D = Decimal
APRIL = Period(utc(2026, 4, 1), utc(2026, 5, 1))  # 30 days
MAY = Period(utc(2026, 5, 1), utc(2026, 6, 1))  # 31 days
CREDIT, FLAT, USAGE, MINIMUM = WindowedKind.CREDIT, WindowedKind.FLAT, WindowedKind.USAGE, WindowedKind.MINIMUM
ADVANCE, ARREARS = "in_advance", "in_arrears"


def make_plan(code: str, *charges: dict[str, Any], timing: str = ARREARS, **fields: Any) -> Plan:
    fields.setdefault("currency", "USD")
    return load_plan({"code": code, "billing_timing": timing, "charges": list(charges), **fields})


def flat(amount: Any, key: str = "base", **fields: Any) -> dict[str, Any]:
    return {"key": key, "model": "flat", "amount": str(amount), **fields}


def per_unit(unit_amount: str, key: str = "api", **fields: Any) -> dict[str, Any]:
    return {"key": key, "model": "per_unit", "meter": "calls", "unit_amount": unit_amount, **fields}


def summary(lines: tuple[WindowedLine, ...]) -> list[tuple[str, WindowedKind, int]]:
    return [(line.line_key, line.kind, line.amount_minor) for line in lines]


# Stripe, "Prorations": "If a customer upgrades from a 10 USD monthly plan to a 20 USD option
# halfway through the billing period, the customer is billed an additional 5 USD":
# -5 USD for unused time on the original plan, +10 USD for the remaining time on the new one.
# https://docs.stripe.com/billing/subscriptions/prorations
BASIC = make_plan("basic", flat(10, description="Subscription"), timing=ADVANCE)
PREMIUM = make_plan("premium", flat(20, description="Subscription"), timing=ADVANCE)


def test_stripe_upgrade_halfway_through_a_30_day_month() -> None:
    lines = plan_change_adjustment(APRIL, BASIC, PREMIUM, utc(2026, 4, 16))
    assert summary(lines) == [("base@20260416T000000Z:credit", CREDIT, -500), ("base@20260416T000000Z", FLAT, 1000)]
    assert sum(line.amount_minor for line in lines) == 500
    credit, charge = lines
    assert (credit.exact_amount, charge.exact_amount) == (Fraction(-5), Fraction(10))
    assert (credit.amount, charge.amount, credit.quantity) == (D(-5), D(10), D("0.5"))
    assert (credit.plan, charge.plan) == ("basic", "premium")
    assert {(line.service_start, line.service_end) for line in lines} == {(utc(2026, 4, 16), APRIL.end)}
    assert credit.description == "Subscription: unused time on plan basic, flat 10, prorated 15 of 30 days, credited"
    assert charge.description == "Subscription: time on plan premium billed in advance, flat 20, prorated 15 of 30 days"


def test_stripe_upgrade_at_the_midpoint_of_a_31_day_month_to_the_second() -> None:
    midpoint = utc(2026, 5, 16, 12)  # 15.5 days of 31: 1,339,200 of 2,678,400 seconds
    lines = plan_change_adjustment(MAY, BASIC, PREMIUM, midpoint)
    assert summary(lines) == [("base@20260516T120000Z:credit", CREDIT, -500), ("base@20260516T120000Z", FLAT, 1000)]
    assert [line.exact_amount for line in lines] == [Fraction(-5), Fraction(10)]
    # One second later the exact amounts move (10 × 1/2,678,400 per second) but still round to the cent.
    later = plan_change_adjustment(MAY, BASIC, PREMIUM, midpoint + timedelta(seconds=1))
    assert [line.exact_amount for line in later] == [
        Fraction(-5) + Fraction(10, 2_678_400),
        Fraction(10) - Fraction(20, 2_678_400),
    ]
    assert [line.amount_minor for line in later] == [-500, 1000]


def test_stripe_example_over_the_whole_period_bills_each_plan_for_its_half() -> None:
    advance_invoice = rate_plan(BASIC, {}, APRIL)  # billed on 1 April for all of April
    adjustment = plan_change_adjustment(APRIL, BASIC, PREMIUM, utc(2026, 4, 16))
    assert advance_invoice.total_minor + sum(line.amount_minor for line in adjustment) == 500 + 1000


def test_stripe_example_in_arrears_bills_each_segment_its_share() -> None:
    basic, premium = make_plan("basic", flat(10)), make_plan("premium", flat(20))
    lines = rate_segments(
        APRIL, [PlanSegment(basic, APRIL.start, utc(2026, 4, 16)), PlanSegment(premium, utc(2026, 4, 16), APRIL.end)]
    )
    assert summary(lines) == [("base@20260401T000000Z", FLAT, 500), ("base@20260416T000000Z", FLAT, 1000)]
    assert [(line.service_start, line.service_end) for line in lines] == [
        (APRIL.start, utc(2026, 4, 16)),
        (utc(2026, 4, 16), APRIL.end),
    ]
    assert [line.description for line in lines] == [
        "base: flat 10, prorated 15 of 30 days",
        "base: flat 20, prorated 15 of 30 days",
    ]


MIXED = make_plan(
    "mixed",
    flat("49.99", description="Platform fee"),
    per_unit("0.002", free_units="1000", minimum_amount="30", description="API calls"),
    {"key": "fonts", "model": "graduated", "meter": "fonts", "tiers": STRIPE_FONT_TIERS},
)


def engine_view(line: RatedLine | WindowedLine) -> tuple[Any, ...]:
    return (line.charge, str(line.kind), line.quantity, line.amount, line.amount_minor, line.description, line.tiers)


@pytest.mark.parametrize(
    ("active_from", "active_until"),
    [(None, None), (utc(2026, 4, 16), None), (utc(2026, 4, 11), utc(2026, 4, 21))],
)
def test_a_single_segment_rates_like_rate_plan(active_from: Any, active_until: Any) -> None:
    """A change at the period start (or end) leaves one plan for the active time: rate_plan's lines."""
    usage = {"calls": D(12_000), "fonts": D(6)}
    start, end = active_from or APRIL.start, active_until or APRIL.end
    lines = rate_segments(APRIL, [PlanSegment(MIXED, start, end, usage)])
    expected = rate_plan(MIXED, usage, APRIL, active_from=active_from, active_until=active_until).lines
    assert [engine_view(line) for line in lines] == [engine_view(line) for line in expected]
    stamp = f"{start:%Y%m%dT%H%M%S}Z"
    assert [line.line_key for line in lines] == [
        f"base@{stamp}",
        f"api@{stamp}",
        f"api@{stamp}:minimum",
        f"fonts@{stamp}",
    ]
    assert {(line.service_start, line.service_end) for line in lines} == {(start, end)}


def test_a_change_at_the_period_end_adjusts_nothing_and_at_the_start_swaps_whole_periods() -> None:
    assert plan_change_adjustment(APRIL, BASIC, PREMIUM, APRIL.end) == ()
    lines = plan_change_adjustment(APRIL, BASIC, PREMIUM, APRIL.start)
    assert summary(lines) == [("base@20260401T000000Z:credit", CREDIT, -1000), ("base@20260401T000000Z", FLAT, 2000)]
    assert [line.description for line in lines] == [
        "Subscription: unused time on plan basic, flat 10, credited",
        "Subscription: time on plan premium billed in advance, flat 20",
    ]


def test_usage_is_rated_per_segment_so_graduated_tiers_restart() -> None:
    fonts = make_plan("fonts", {"key": "fonts", "model": "graduated", "meter": "fonts", "tiers": STRIPE_FONT_TIERS})
    mid = utc(2026, 4, 16)
    lines = rate_segments(
        APRIL,
        [PlanSegment(fonts, APRIL.start, mid, {"fonts": D(6)}), PlanSegment(fonts, mid, APRIL.end, {"fonts": D(6)})],
    )
    # 6 units are 35 + 6.50 in each segment; 12 units in one period would be 35 + 32.50 + 12 = 79.50.
    assert [line.amount_minor for line in lines] == [4150, 4150]
    assert [len(line.tiers) for line in lines] == [2, 2]
    assert rate_plan(fonts, {"fonts": D(12)}, APRIL).total_minor == 7950


def test_each_segment_prices_its_usage_under_its_own_plan_and_usage_is_not_prorated() -> None:
    old = make_plan("old", flat(30), per_unit("0.002"))
    new = make_plan("new", flat(60), per_unit("0.001"))
    lines = rate_segments(
        APRIL,
        [
            PlanSegment(old, APRIL.start, utc(2026, 4, 11), {"calls": D(1000)}),
            PlanSegment(new, utc(2026, 4, 11), APRIL.end, {"calls": D(1000), "other": D(5)}),
        ],
    )
    assert [(line.plan, line.kind, line.amount_minor) for line in lines] == [
        ("old", FLAT, 1000),  # 30 × 1/3
        ("old", USAGE, 200),  # 1,000 × 0.002, not prorated
        ("new", FLAT, 4000),  # 60 × 2/3
        ("new", USAGE, 100),
    ]


def test_in_advance_flat_charges_are_left_to_the_advance_invoice_and_the_adjustment() -> None:
    old = make_plan("old", flat(10), per_unit("1"), timing=ADVANCE)
    new = make_plan("new", flat(20), per_unit("2"), timing=ARREARS)
    mid = utc(2026, 4, 16)
    lines = rate_segments(
        APRIL, [PlanSegment(old, APRIL.start, mid, {"calls": D(3)}), PlanSegment(new, mid, APRIL.end, {"calls": D(3)})]
    )
    assert summary(lines) == [
        ("api@20260401T000000Z", USAGE, 300),
        ("base@20260416T000000Z", FLAT, 1000),
        ("api@20260416T000000Z", USAGE, 600),
    ]
    # The in-advance old plan is credited for its unused half; the in-arrears new plan is charged above.
    assert summary(plan_change_adjustment(APRIL, old, new, mid)) == [("base@20260416T000000Z:credit", CREDIT, -500)]


def test_adjustments_follow_each_plans_timing() -> None:
    mid = utc(2026, 4, 16)
    arrears, advance = make_plan("a", flat(10)), make_plan("b", flat(20), flat(4, key="support"), timing=ADVANCE)
    assert plan_change_adjustment(APRIL, arrears, arrears, mid) == ()
    assert summary(plan_change_adjustment(APRIL, arrears, advance, mid)) == [
        ("base@20260416T000000Z", FLAT, 1000),
        ("support@20260416T000000Z", FLAT, 200),
    ]
    assert summary(plan_change_adjustment(APRIL, advance, arrears, mid)) == [
        ("base@20260416T000000Z:credit", CREDIT, -1000),
        ("support@20260416T000000Z:credit", CREDIT, -200),
    ]


def test_in_advance_amounts_are_the_full_period_flat_held_within_minimum_and_maximum() -> None:
    capped = make_plan("capped", flat(10, maximum_amount="8"), timing=ADVANCE)
    lifted = make_plan("lifted", flat(10, minimum_amount="12"), timing=ADVANCE)
    assert rate_plan(capped, {}, APRIL).total_minor == 800
    assert rate_plan(lifted, {}, APRIL).total_minor == 1200
    lines = plan_change_adjustment(APRIL, capped, lifted, utc(2026, 4, 16))
    assert [line.amount_minor for line in lines] == [-400, 600]
    assert lines[0].description == "base: unused time on plan capped, flat 8, prorated 15 of 30 days, credited"


def test_minimum_and_maximum_are_shared_by_time_on_each_plan() -> None:
    """Per period, not prorated for a partial active window, but split between the plans."""
    capped = make_plan("capped", per_unit("1", minimum_amount="30", maximum_amount="100"))
    # Active from 11 April: 10 days on each plan, so each segment carries half the commitment.
    segments = [
        PlanSegment(capped, utc(2026, 4, 11), utc(2026, 4, 21), {"calls": D(5)}),
        PlanSegment(capped, utc(2026, 4, 21), APRIL.end, {"calls": D(500)}),
    ]
    lines = rate_segments(APRIL, segments)
    assert summary(lines) == [
        ("api@20260411T000000Z", USAGE, 500),
        ("api@20260411T000000Z:minimum", MINIMUM, 1000),  # 30 × 1/2 − 5
        ("api@20260421T000000Z", USAGE, 5000),  # 500 capped at 100 × 1/2
    ]
    assert lines[1].description == "api: minimum 30 per period, scaled to 50% for the time on this plan, true-up"
    assert lines[1].quantity == 1
    assert lines[2].description == "api: 500 units × 1, capped at 100, scaled to 50% for the time on this plan"


def test_no_true_up_when_rounding_already_reaches_the_scaled_minimum() -> None:
    thin = make_plan("thin", per_unit("0.001", minimum_amount="10"))
    mid = utc(2026, 4, 16)
    lines = rate_segments(
        APRIL, [PlanSegment(thin, APRIL.start, mid, {"calls": D(4995)}), PlanSegment(thin, mid, APRIL.end)]
    )
    # 4.995 is below 10 × 1/2 but bills 5.00; the empty second half needs the whole 5.00.
    assert summary(lines) == [
        ("api@20260401T000000Z", USAGE, 500),
        ("api@20260416T000000Z", USAGE, 0),
        ("api@20260416T000000Z:minimum", MINIMUM, 500),
    ]


def test_credits_round_half_up_away_from_zero_like_charges() -> None:
    one_yen = make_plan("one", flat(1), timing=ADVANCE, currency="JPY")
    lines = plan_change_adjustment(APRIL, one_yen, one_yen, utc(2026, 4, 16))
    assert [(line.exact_amount, line.amount_minor) for line in lines] == [(Fraction(-1, 2), -1), (Fraction(1, 2), 1)]


def test_line_keys_stay_unique_across_several_changes_and_show_microseconds() -> None:
    a, b = make_plan("a", flat(10), per_unit("1")), make_plan("b", flat(20), per_unit("1"))
    t1, t2 = utc(2026, 4, 10, 8, 30, 15), utc(2026, 4, 20) + timedelta(microseconds=250)
    lines = rate_segments(
        APRIL, [PlanSegment(a, APRIL.start, t1), PlanSegment(b, t1, t2), PlanSegment(a, t2, APRIL.end)]
    )
    keys = [line.line_key for line in lines]
    assert keys == [
        "base@20260401T000000Z",
        "api@20260401T000000Z",
        "base@20260410T083015Z",
        "api@20260410T083015Z",
        "base@20260420T000000.000250Z",
        "api@20260420T000000.000250Z",
    ]
    assert (
        rate_segments(APRIL, [PlanSegment(a, APRIL.start, t1), PlanSegment(b, t1, t2), PlanSegment(a, t2, APRIL.end)])
        == lines
    )


def test_segments_are_converted_to_utc_and_their_usage_is_read_only() -> None:
    plus_two = timezone(timedelta(hours=2))
    usage = {"calls": D(1)}
    segment = PlanSegment(MIXED, utc(2026, 4, 16).astimezone(plus_two), APRIL.end, usage)
    usage["calls"] = D(99)
    assert segment.start == utc(2026, 4, 16)
    assert segment.start.tzinfo is not None and segment.start.utcoffset() == timedelta(0)
    assert segment.usage == {"calls": D(1)}
    with pytest.raises(TypeError):
        segment.usage["calls"] = D(2)  # type: ignore[index]
    assert PlanSegment(MIXED, APRIL.start, APRIL.end).usage == {}


B = make_plan("b", flat(20))
EUR = make_plan("eur", flat(20), currency="EUR")
YEARLY = make_plan("yearly", flat(20), interval="year")
MID = utc(2026, 4, 16)


@pytest.mark.parametrize(
    ("segments", "error", "message"),
    [
        ([], InvalidInput, "needs at least one plan segment"),
        ([PlanSegment(B, APRIL.start, MID), PlanSegment(B, utc(2026, 4, 17), APRIL.end)], InvalidInput, "leave a gap"),
        ([PlanSegment(B, APRIL.start, MID), PlanSegment(B, utc(2026, 4, 15), APRIL.end)], InvalidInput, "overlap"),
        ([PlanSegment(B, utc(2026, 3, 31), MID)], InvalidInput, "reach outside the period"),
        ([PlanSegment(B, MID, utc(2026, 5, 2))], InvalidInput, "reach outside the period"),
        (
            [PlanSegment(B, APRIL.start, MID), PlanSegment(EUR, MID, APRIL.end)],
            InvalidPlan,
            "one period has one currency",
        ),
        ([PlanSegment(B, APRIL.start, MID), PlanSegment(YEARLY, MID, APRIL.end)], InvalidPlan, "starts a new period"),
        ([PlanSegment(make_plan("u", per_unit("1")), APRIL.start, MID, {"calls": D(-1)})], InvalidUsage, "'calls'"),
    ],
)
def test_bad_segments_are_rejected_with_one_line(
    segments: list[PlanSegment], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as raised:
        rate_segments(APRIL, segments)
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_messages_name_the_plans_and_instants() -> None:
    late = PlanSegment(make_plan("c", flat(1)), utc(2026, 4, 17), APRIL.end)
    with pytest.raises(InvalidInput) as raised:
        rate_segments(APRIL, [PlanSegment(B, APRIL.start, MID), late])
    assert str(raised.value) == (
        "plan segments leave a gap: 'b' ends 2026-04-16T00:00:00+00:00 but 'c' starts 2026-04-17T00:00:00+00:00"
    )
    with pytest.raises(InvalidPlan) as currency:
        plan_change_adjustment(APRIL, B, EUR, MID)
    assert str(currency.value) == "plan 'eur' bills in EUR but plan 'b' in USD; one period has one currency"
    with pytest.raises(InvalidPlan) as interval:
        plan_change_adjustment(APRIL, B, YEARLY, MID)
    assert str(interval.value) == (
        "plan 'yearly' bills every 1 year but plan 'b' every 1 month; a change of interval starts a new period"
    )


def test_empty_or_naive_segments_and_changes_are_rejected() -> None:
    with pytest.raises(InvalidInput, match="plan segment 'b' is empty"):
        PlanSegment(B, MID, MID)
    with pytest.raises(ValueError, match="segment start must be timezone-aware"):
        PlanSegment(B, MID.replace(tzinfo=None), APRIL.end)
    with pytest.raises(ValueError, match="change_at must be timezone-aware"):
        plan_change_adjustment(APRIL, BASIC, PREMIUM, MID.replace(tzinfo=None))
    for outside in (utc(2026, 3, 31, 23, 59, 59), APRIL.end + timedelta(microseconds=1)):
        with pytest.raises(InvalidInput, match="is outside the period"):
            plan_change_adjustment(APRIL, BASIC, PREMIUM, outside)


def test_only_credit_lines_may_be_negative() -> None:
    (line,) = rate_segments(APRIL, [PlanSegment(B, APRIL.start, APRIL.end)])
    fields: dict[str, Any] = {name: getattr(line, name) for name in WindowedLine.__dataclass_fields__}
    with pytest.raises(ValueError, match="only credit lines may be negative"):
        WindowedLine(**{**fields, "exact_amount": Fraction(-1)})
    with pytest.raises(ValueError, match="a credit cannot be positive"):
        WindowedLine(**{**fields, "kind": CREDIT})
    assert WindowedLine(**{**fields, "kind": CREDIT, "exact_amount": Fraction(0)}).kind is CREDIT


# --- properties -------------------------------------------------------------------------

prices = st.decimals(min_value=0, max_value=10_000, places=2)
currencies = st.sampled_from(["USD", "JPY", "BHD"])
periods = st.sampled_from(
    [APRIL, MAY, Period(utc(2028, 2, 1), utc(2028, 3, 1)), Period(utc(2026, 1, 1), utc(2027, 1, 1))]
)


@st.composite
def instants(draw: st.DrawFn, period: Period, count: int) -> list[Any]:
    """`count` distinct sorted instants in [period.start, period.end], to the microsecond."""
    offsets = draw(st.lists(st.integers(0, period.microseconds), min_size=count, max_size=count, unique=True))
    return [period.start + timedelta(microseconds=offset) for offset in sorted(offsets)]


def inside(period: Period) -> Period:
    """The instants strictly inside `period`, where a change leaves both segments non-empty."""
    return Period(period.start + timedelta(microseconds=1), period.end - timedelta(microseconds=1))


@given(st.data(), periods, st.integers(1, 5), currencies)
def test_segments_tile_the_active_time_and_flat_lines_prorate_exactly(
    data: st.DataObject, period: Period, count: int, currency: str
) -> None:
    bounds = data.draw(instants(period, count + 1))
    amounts = data.draw(st.lists(prices, min_size=count, max_size=count))
    plans = [make_plan(f"p{i}", flat(amount), currency=currency) for i, amount in enumerate(amounts)]
    segments = [PlanSegment(p, start, end) for p, (start, end) in zip(plans, pairwise(bounds), strict=True)]
    lines = rate_segments(period, segments)
    shares = [proration_factor(period, segment.start, segment.end) for segment in segments]
    assert sum(shares) == proration_factor(period, bounds[0], bounds[-1])
    assert [line.exact_amount for line in lines] == [Fraction(a) * s for a, s in zip(amounts, shares, strict=True)]
    assert all(line.amount_minor == to_minor(line.exact_amount, currency) for line in lines)  # rounded once, per line
    assert [(line.service_start, line.service_end) for line in lines] == [(s.start, s.end) for s in segments]
    assert len({line.line_key for line in lines}) == len(lines)


@given(periods, prices, prices, st.data())
def test_two_in_arrears_segments_sum_exactly_to_each_plans_share(
    period: Period, old_amount: Decimal, new_amount: Decimal, data: st.DataObject
) -> None:
    (change_at,) = data.draw(instants(inside(period), 1))
    old, new = make_plan("old", flat(old_amount)), make_plan("new", flat(new_amount))
    lines = rate_segments(period, [PlanSegment(old, period.start, change_at), PlanSegment(new, change_at, period.end)])
    first, second = proration_factor(period, None, change_at), proration_factor(period, change_at, None)
    assert first + second == 1
    assert sum(line.exact_amount for line in lines) == Fraction(old_amount) * first + Fraction(new_amount) * second


@given(periods, prices, prices, currencies, st.data())
def test_in_advance_credit_and_charge_net_to_the_price_difference_for_the_remaining_time(
    period: Period, old_amount: Decimal, new_amount: Decimal, currency: str, data: st.DataObject
) -> None:
    (change_at,) = data.draw(instants(period, 1))
    old = make_plan("old", flat(old_amount), timing=ADVANCE, currency=currency)
    new = make_plan("new", flat(new_amount), timing=ADVANCE, currency=currency)
    lines = plan_change_adjustment(period, old, new, change_at)
    remaining = proration_factor(period, change_at, None)
    if remaining == 0:
        assert lines == ()
        return
    credit, charge = lines
    exact = (Fraction(new_amount) - Fraction(old_amount)) * remaining
    assert credit.exact_amount + charge.exact_amount == exact
    minor = Fraction(1, 10 ** {"USD": 2, "JPY": 0, "BHD": 3}[currency])
    assert abs((credit.amount_minor + charge.amount_minor) * minor - exact) <= minor  # half a unit per line
    assert credit.amount_minor == -to_minor(Fraction(old_amount) * remaining, currency)
    assert charge.amount_minor == to_minor(charge.exact_amount, currency)


@given(periods, prices, prices, st.sampled_from([ADVANCE, ARREARS]), st.sampled_from([ADVANCE, ARREARS]), st.data())
def test_every_flat_charge_is_billed_exactly_once_whatever_the_timing(
    period: Period, old_amount: Decimal, new_amount: Decimal, old_timing: str, new_timing: str, data: st.DataObject
) -> None:
    (change_at,) = data.draw(instants(inside(period), 1))
    old, new = (
        make_plan("old", flat(old_amount), timing=old_timing),
        make_plan("new", flat(new_amount), timing=new_timing),
    )
    billed_in_advance = Fraction(old_amount) if old_timing == ADVANCE else Fraction(0)  # the period-start invoice
    adjustment = plan_change_adjustment(period, old, new, change_at)
    in_arrears = rate_segments(
        period, [PlanSegment(old, period.start, change_at), PlanSegment(new, change_at, period.end)]
    )
    total = billed_in_advance + sum(line.exact_amount for line in (*adjustment, *in_arrears))
    first, second = proration_factor(period, None, change_at), proration_factor(period, change_at, None)
    assert total == Fraction(old_amount) * first + Fraction(new_amount) * second
    keys = [line.line_key for line in (*adjustment, *in_arrears)]
    assert len(set(keys)) == len(keys)


# --- plan_windows, advance_flat, unused_time_credit, paid_from --------------------------------------

ARREARS_10 = make_plan("a10", flat(10), per_unit("0.01"))
ARREARS_20 = make_plan("a20", flat(20), per_unit("0.02"))


def test_plan_windows_split_the_active_part_of_the_period_at_each_change() -> None:
    changes = [(utc(2026, 3, 20), ARREARS_20), (utc(2026, 4, 10), ARREARS_10), (utc(2026, 4, 20), ARREARS_20)]
    windows = plan_windows(APRIL, ARREARS_10, changes, active_until=utc(2026, 4, 25))
    assert [(p.code, s, e) for p, s, e in windows] == [
        ("a20", APRIL.start, utc(2026, 4, 10)),  # the March change is in force when April starts
        ("a10", utc(2026, 4, 10), utc(2026, 4, 20)),
        ("a20", utc(2026, 4, 20), utc(2026, 4, 25)),
    ]
    assert [(p.code, s) for p, s, _ in plan_windows(APRIL, ARREARS_10, [])] == [("a10", APRIL.start)]
    # A change at the active window's start, or after its end, makes no cut.
    late_start = plan_windows(APRIL, ARREARS_10, [(utc(2026, 4, 5), ARREARS_20)], active_from=utc(2026, 4, 5))
    assert [(p.code, s, e) for p, s, e in late_start] == [("a20", utc(2026, 4, 5), APRIL.end)]
    assert plan_windows(APRIL, ARREARS_10, [], active_from=APRIL.end) == ()


def test_plan_windows_refuse_changes_out_of_order() -> None:
    with pytest.raises(InvalidInput, match="strictly increasing"):
        plan_windows(APRIL, ARREARS_10, [(utc(2026, 4, 9), ARREARS_20), (utc(2026, 4, 9), ARREARS_10)])


def test_advance_flat_and_its_credit_are_exact_negatives_for_any_window() -> None:
    charged = advance_flat(BASIC, APRIL, utc(2026, 4, 11), utc(2026, 4, 21))  # 10 of 30 days
    credited = unused_time_credit(BASIC, APRIL, utc(2026, 4, 11), utc(2026, 4, 21))
    assert summary(charged) == [("base@20260411T000000Z", FLAT, 333)]
    assert summary(credited) == [("base@20260411T000000Z:credit", CREDIT, -333)]
    assert charged[0].exact_amount == -credited[0].exact_amount == Fraction(10, 3)
    # Clipped to the period; a window outside it bills nothing.
    whole = advance_flat(BASIC, APRIL, utc(2026, 3, 1), utc(2026, 6, 1))
    assert [(line.service_start, line.service_end, line.amount_minor) for line in whole] == [
        (APRIL.start, APRIL.end, 1000)
    ]
    assert advance_flat(BASIC, APRIL, MAY.start, MAY.end) == ()
    assert unused_time_credit(BASIC, APRIL, utc(2026, 4, 30), utc(2026, 4, 2)) == ()


def test_rate_segments_bill_no_flat_fee_before_paid_from() -> None:
    segments = [
        PlanSegment(ARREARS_10, APRIL.start, utc(2026, 4, 16), {"calls": D(100)}),
        PlanSegment(ARREARS_20, utc(2026, 4, 16), APRIL.end, {"calls": D(100)}),
    ]
    # A trial until the 11th: the first plan's flat fee covers 5 of its 15 days.
    lines = rate_segments(APRIL, segments, paid_from=utc(2026, 4, 11))
    assert summary(lines) == [
        ("base@20260401T000000Z", FLAT, 167),  # $10 × 5/30
        ("api@20260401T000000Z", USAGE, 100),
        ("base@20260416T000000Z", FLAT, 1000),  # $20 × 15/30
        ("api@20260416T000000Z", USAGE, 200),
    ]
    fully_trial = rate_segments(APRIL, segments, paid_from=APRIL.end)
    assert [line.amount_minor for line in fully_trial if line.kind is FLAT] == [0, 0]
