"""Published pricing examples, reproduced to the cent.

Each table row is (what, charge fields, quantity, currency, expected amount_minor), so a
reviewer can check a row against its source without reading any code.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from rating import Period, format_minor, rate_charge, rate_plan
from tests.rating.builders import (
    STRIPE_FLAT_RATE_TIERS,
    STRIPE_FONT_TIERS,
    charge,
    plan,
    tiers,
    utc,
)

D = Decimal

EXAMPLES: list[tuple[str, dict[str, Any], str, str, int]] = [
    # Stripe, "Set up tiered pricing", tiers 1-5 at 7 USD, 6-10 at 6.5 USD, 11+ at 6 USD:
    # https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing
    ("stripe volume 1", {"model": "volume", "tiers": STRIPE_FONT_TIERS}, "1", "USD", 700),
    ("stripe volume 5", {"model": "volume", "tiers": STRIPE_FONT_TIERS}, "5", "USD", 3500),
    ("stripe volume 6", {"model": "volume", "tiers": STRIPE_FONT_TIERS}, "6", "USD", 3900),
    ("stripe volume 20", {"model": "volume", "tiers": STRIPE_FONT_TIERS}, "20", "USD", 12000),
    ("stripe volume 25", {"model": "volume", "tiers": STRIPE_FONT_TIERS}, "25", "USD", 15000),
    ("stripe graduated 1", {"model": "graduated", "tiers": STRIPE_FONT_TIERS}, "1", "USD", 700),
    ("stripe graduated 5", {"model": "graduated", "tiers": STRIPE_FONT_TIERS}, "5", "USD", 3500),
    ("stripe graduated 6", {"model": "graduated", "tiers": STRIPE_FONT_TIERS}, "6", "USD", 4150),
    ("stripe graduated 20", {"model": "graduated", "tiers": STRIPE_FONT_TIERS}, "20", "USD", 12750),
    ("stripe graduated 25", {"model": "graduated", "tiers": STRIPE_FONT_TIERS}, "25", "USD", 15750),
    # Same page, "Add a flat rate": quantity 12 is 12 × 3 + 30 = 66 USD by volume and
    # (5 × 5 + 10) + (5 × 4 + 20) + (2 × 3 + 30) = 111 USD graduated; at quantity 0 both
    # bill the first tier's flat rate, 10 USD.
    ("stripe flat volume 12", {"model": "volume", "tiers": STRIPE_FLAT_RATE_TIERS}, "12", "USD", 6600),
    ("stripe flat graduated 12", {"model": "graduated", "tiers": STRIPE_FLAT_RATE_TIERS}, "12", "USD", 11100),
    ("stripe flat volume 0", {"model": "volume", "tiers": STRIPE_FLAT_RATE_TIERS}, "0", "USD", 1000),
    ("stripe flat graduated 0", {"model": "graduated", "tiers": STRIPE_FLAT_RATE_TIERS}, "0", "USD", 1000),
    # OpenMeter package pricing (https://openmeter.io/docs/billing/product-catalog/pricing-models):
    # 10 USD per package of 20 units; a started package is a whole one. (Figures as given in
    # the Valora brief; the stored excerpt of that page did not reach the package section.)
    ("openmeter package 20.1", {"model": "package", "package_size": "20", "package_amount": "10"}, "20.1", "USD", 2000),
    ("openmeter package 20", {"model": "package", "package_size": "20", "package_amount": "10"}, "20", "USD", 1000),
    ("openmeter package 0", {"model": "package", "package_size": "20", "package_amount": "10"}, "0", "USD", 0),
    # Zero-decimal and three-decimal currencies: one half-up rounding per line.
    ("JPY half up", {"model": "per_unit", "unit_amount": "0.5"}, "3", "JPY", 2),
    ("JPY below half", {"model": "per_unit", "unit_amount": "0.49"}, "1", "JPY", 0),
    ("BHD half up", {"model": "per_unit", "unit_amount": "0.0005"}, "3", "BHD", 2),
    ("BHD exact", {"model": "per_unit", "unit_amount": "1.005"}, "1", "BHD", 1005),
]


@pytest.mark.parametrize(
    ("fields", "quantity", "currency", "expected_minor"),
    [row[1:] for row in EXAMPLES],
    ids=[row[0] for row in EXAMPLES],
)
def test_published_example(fields: dict[str, Any], quantity: str, currency: str, expected_minor: int) -> None:
    (line,) = rate_charge(charge(meter="m", **fields), D(quantity), currency)
    assert line.amount_minor == expected_minor


def test_stripe_graduated_flat_rate_tier_breakdown() -> None:
    (line,) = rate_charge(charge(model="graduated", meter="fonts", tiers=STRIPE_FLAT_RATE_TIERS), D(12), "USD")
    assert [(t.tier, t.quantity, t.amount) for t in line.tiers] == [
        (1, D(5), D(35)),
        (2, D(5), D(40)),
        (3, D(2), D(36)),
    ]


def test_volume_pricing_can_fall_at_a_tier_boundary() -> None:
    """Stripe's older tiers page shows volume totals going down: with 1-5 at 5 USD and
    6-10 at 4 USD, 5 units cost 25 USD and 6 units cost 24 USD.
    https://stripe.com/docs/billing/subscriptions/tiers
    """
    volume = charge(model="volume", meter="m", tiers=tiers((5, 5, 0), (10, 4, 0), (None, 3, 0)))
    (five,) = rate_charge(volume, D(5), "USD")
    (six,) = rate_charge(volume, D(6), "USD")
    assert (five.amount_minor, six.amount_minor) == (2500, 2400)


def test_flat_fee_started_halfway_through_a_30_day_month_costs_half() -> None:
    pro = plan({"key": "base", "model": "flat", "amount": "49.99"})
    april = Period(utc(2026, 4, 1), utc(2026, 5, 1))
    invoice = rate_plan(pro, {}, april, active_from=utc(2026, 4, 16))
    (line,) = invoice.lines
    assert line.quantity == D("0.5")
    assert line.amount == D("24.995")
    assert line.amount_minor == 2500  # 24.995 rounds half-up, once
    assert invoice.total_minor == 2500


def test_flat_fee_prorated_by_an_explicit_factor() -> None:
    (line,) = rate_charge(charge(model="flat", amount="10"), D(0), "USD", factor=Fraction(1, 3))
    assert line.amount_minor == 333
    assert format_minor(line.amount_minor, "USD") == "3.33"
