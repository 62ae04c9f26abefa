"""rate_charge / rate_plan: lines, keys, order, minimums, caps, usage validation."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from rating import PRICING, LineKind, Period, RatedLine, parse_quantity, rate_charge, rate_plan
from schemas.errors import InvalidPlan, InvalidUsage
from schemas.plans import Charge, ChargeModel
from tests.rating.builders import STRIPE_FLAT_RATE_TIERS, charge, plan, tiers, utc

D = Decimal
APRIL = Period(utc(2026, 4, 1), utc(2026, 5, 1))


def keys(lines: tuple[RatedLine, ...]) -> list[str]:
    return [line.line_key for line in lines]


def test_registry_covers_every_model() -> None:
    assert set(PRICING) == set(ChargeModel)


def test_invoice_lines_follow_charge_order_with_true_up_after_its_charge() -> None:
    pro = plan(
        {"key": "base", "model": "flat", "amount": "49", "description": "Platform fee"},
        {
            "key": "api",
            "model": "per_unit",
            "meter": "api_calls",
            "unit_amount": "0.002",
            "free_units": "1000",
            "minimum_amount": "30",
            "description": "API calls",
        },
        {"key": "gb", "model": "graduated", "meter": "storage", "tiers": STRIPE_FLAT_RATE_TIERS},
    )
    invoice = rate_plan(pro, {"api_calls": D(12_000), "storage": D(12), "unused": D(5)}, APRIL)
    assert keys(invoice.lines) == ["base", "api", "api:minimum", "gb"]
    assert [line.kind for line in invoice.lines] == [LineKind.FLAT, LineKind.USAGE, LineKind.MINIMUM, LineKind.USAGE]
    assert [line.amount_minor for line in invoice.lines] == [4900, 2200, 800, 11100]
    assert invoice.subtotal_minor == invoice.total_minor == 4900 + 2200 + 800 + 11100
    assert invoice.currency == "USD"
    assert invoice.period == APRIL
    base, api, minimum, _ = invoice.lines
    assert base.quantity == 1
    assert base.description == "Platform fee: flat 49"
    assert api.description == "API calls: 12,000 units (1,000 free) × 0.002"
    assert minimum.description == "API calls: minimum 30 per period, true-up"
    assert (minimum.charge, minimum.quantity, minimum.amount) == ("api", D(1), D(8))


def test_rating_twice_gives_identical_lines() -> None:
    pro = plan({"key": "api", "model": "volume", "meter": "m", "tiers": STRIPE_FLAT_RATE_TIERS})
    assert rate_plan(pro, {"m": D(7)}, APRIL) == rate_plan(pro, {"m": D(7)}, APRIL)


def test_missing_meter_means_zero_usage() -> None:
    pro = plan({"key": "api", "model": "per_unit", "meter": "m", "unit_amount": "1"})
    (line,) = rate_plan(pro, {}, APRIL).lines
    assert (line.quantity, line.amount_minor) == (D(0), 0)


def test_usage_is_not_prorated_but_flat_is() -> None:
    pro = plan(
        {"key": "base", "model": "flat", "amount": "30"},
        {"key": "api", "model": "per_unit", "meter": "m", "unit_amount": "1"},
    )
    invoice = rate_plan(pro, {"m": D(10)}, APRIL, active_from=utc(2026, 4, 21))
    assert [line.amount_minor for line in invoice.lines] == [1000, 1000]
    assert invoice.lines[0].description == "base: flat 30, prorated 10 of 30 days"


def test_minimum_true_up_and_charge_add_up_to_the_minimum() -> None:
    api = charge(model="per_unit", meter="m", unit_amount="0.001", minimum_amount="10")
    line, true_up = rate_charge(api, D(5), "USD")  # 0.005 rounds to 0.01
    assert (line.amount_minor, true_up.amount_minor) == (1, 999)
    assert true_up.amount == D("9.99")


def test_no_true_up_when_rounding_already_reaches_the_minimum() -> None:
    api = charge(model="per_unit", meter="m", unit_amount="0.001", minimum_amount="10")
    (line,) = rate_charge(api, D(9_995), "USD")  # exactly 9.995 < 10, billed 10.00
    assert line.amount_minor == 1000


def test_no_true_up_at_or_above_the_minimum() -> None:
    api = charge(model="per_unit", meter="m", unit_amount="1", minimum_amount="10")
    assert len(rate_charge(api, D(10), "USD")) == 1
    assert len(rate_charge(api, D(11), "USD")) == 1


def test_minimum_is_not_prorated() -> None:
    base = charge(model="flat", amount="30", minimum_amount="30")
    line, true_up = rate_charge(base, D(0), "USD", factor=Fraction(1, 3))
    assert (line.amount_minor, true_up.amount_minor) == (1000, 2000)


def test_maximum_caps_the_exact_amount() -> None:
    api = charge(model="per_unit", meter="m", unit_amount="0.3", maximum_amount="100.004")
    (line,) = rate_charge(api, D(1000), "USD")
    assert line.amount == D("100.004")
    assert line.amount_minor == 10000
    assert line.description == "c: 1,000 units × 0.3, capped at 100.004"


def test_maximum_not_reached() -> None:
    api = charge(model="per_unit", meter="m", unit_amount="1", maximum_amount="100")
    (line,) = rate_charge(api, D(99), "USD")
    assert line.description == "c: 99 units × 1"


def test_package_description_and_free_units() -> None:
    gb = charge(model="package", meter="m", package_size="20", package_amount="10", free_units="5")
    (line,) = rate_charge(gb, D("45.5"), "USD")  # 40.5 billable -> 3 packages
    assert line.amount_minor == 3000
    assert line.description == "c: 45.5 units (5 free) → 3 × 10 per 20 units"
    (none,) = rate_charge(gb, D(5), "USD")
    assert none.amount_minor == 0


def test_per_unit_free_units_never_go_negative() -> None:
    api = charge(model="per_unit", meter="m", unit_amount="1", free_units="100")
    (line,) = rate_charge(api, D(40), "USD")
    assert line.amount == 0


def test_graduated_splits_fractional_quantities_exactly() -> None:
    gb = charge(model="graduated", meter="m", tiers=STRIPE_FLAT_RATE_TIERS)
    (line,) = rate_charge(gb, D("5.5"), "USD")
    assert [(t.quantity, t.amount) for t in line.tiers] == [(D(5), D(35)), (D("0.5"), D(22))]
    assert line.amount == 57
    assert line.description == "c: 5.5 units, graduated over 2 tier(s)"


def test_graduated_up_to_is_inclusive() -> None:
    gb = charge(model="graduated", meter="m", tiers=STRIPE_FLAT_RATE_TIERS)
    (line,) = rate_charge(gb, D(5), "USD")
    assert [t.tier for t in line.tiers] == [1]
    assert line.amount == 35


def test_graduated_zero_width_first_tier() -> None:
    """A first tier 'up to 0' covers only zero usage: its flat fee is always billed."""
    gb = charge(model="graduated", meter="m", tiers=tiers((0, 0, 5), (None, 2, 0)))
    (zero,) = rate_charge(gb, D(0), "USD")
    (three,) = rate_charge(gb, D(3), "USD")
    assert (zero.amount, three.amount) == (D(5), D(11))


def test_volume_up_to_is_inclusive_and_description() -> None:
    fonts = charge(model="volume", meter="m", tiers=STRIPE_FLAT_RATE_TIERS)
    (five,) = rate_charge(fonts, D(5), "USD")
    assert five.tiers[0].tier == 1
    assert five.description == "c: 5 units, all at tier 1 × 5 + 10"
    plain = charge(model="volume", meter="m", tiers=tiers((None, 2, 0)))
    (line,) = rate_charge(plain, D(3), "USD")
    assert line.description == "c: 3 units, all at tier 1 × 2"


def test_huge_numbers_stay_exact() -> None:
    big = "123456789012345678901234567890.123456789"
    price = "999999999999.123456789012345678"  # the largest price a plan takes, with 18 decimals
    api = charge(model="per_unit", meter="m", unit_amount=price)
    (line,) = rate_charge(api, D(big), "USD")
    # 69 significant digits: far past the default 28-digit context, yet not rounded.
    assert Fraction(line.amount) == Fraction(D(big)) * Fraction(D(price))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (D(-1), "quantity -1 is negative"),
        ("-0.5", "quantity -0.5 is negative"),
        (1.5, "quantity 1.5 is not a finite decimal"),
        (True, "quantity True is not a finite decimal"),
        (D("NaN"), "is not a finite decimal"),
        (D("Infinity"), "is not a finite decimal"),
        ("NaN", "is not a finite decimal"),
        ("1_000", "is not a finite decimal"),
        ("twelve", "is not a finite decimal"),
        (None, "is not a finite decimal"),
    ],
)
def test_bad_usage_names_the_meter(value: Any, message: str) -> None:
    pro = plan({"key": "api", "model": "per_unit", "meter": "api_calls", "unit_amount": "1"})
    with pytest.raises(InvalidUsage, match=rf"^meter 'api_calls': .*{message}") as info:
        rate_plan(pro, {"api_calls": value}, APRIL)
    assert info.value.code == "invalid_usage"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(D("1.50"), D("1.50")), (7, D(7)), (" 12 ", D(12)), ("1e3", D(1000)), (".5", D("0.5"))],
)
def test_parse_quantity_accepts_exact_numbers(value: object, parsed: Decimal) -> None:
    assert parse_quantity("m", value) == parsed


def test_rate_charge_validates_its_quantity() -> None:
    with pytest.raises(InvalidUsage, match="meter 'm'"):
        rate_charge(charge(model="per_unit", meter="m", unit_amount="1"), D(-2), "USD")


def test_flat_charges_ignore_quantity() -> None:
    (line,) = rate_charge(charge(model="flat", amount="5"), D(-3), "USD")
    assert (line.quantity, line.amount_minor) == (D(1), 500)


@pytest.mark.parametrize("factor", [Fraction(-1, 2), Fraction(3, 2)])
def test_factor_must_be_a_share(factor: Fraction) -> None:
    with pytest.raises(ValueError, match="outside"):
        rate_charge(charge(model="flat", amount="5"), D(0), "USD", factor=factor)


def test_usage_charges_refuse_proration() -> None:
    with pytest.raises(ValueError, match="usage charges are not prorated"):
        rate_charge(charge(model="per_unit", meter="m", unit_amount="1"), D(1), "USD", factor=Fraction(1, 2))


@pytest.mark.parametrize(
    ("model", "missing"),
    [
        ("flat", "amount"),
        ("per_unit", "unit_amount"),
        ("package", "package_size"),
        ("graduated", "tiers"),
        ("volume", "tiers"),
    ],
)
def test_unvalidated_charges_fail_loudly(model: str, missing: str) -> None:
    """A Charge built with model_construct skips validation; pricing still refuses it."""
    broken = Charge.model_construct(key="x", model=ChargeModel(model), meter="m", free_units=D(0), tiers=None)
    for name in (
        "amount",
        "unit_amount",
        "package_size",
        "package_amount",
        "minimum_amount",
        "maximum_amount",
        "description",
    ):
        object.__setattr__(broken, name, None)
    with pytest.raises(InvalidPlan, match=f"charge 'x': a {model} charge needs {missing}"):
        rate_charge(broken, D(1), "USD")
