"""Currency exponents, the single half-up rounding, and minor-unit formatting."""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest

from rating.money import (
    DISPLAY_DIGITS,
    currency_exponent,
    exact_minor,
    format_minor,
    fraction_to_decimal,
    from_minor,
    to_minor,
)
from schemas.errors import InvalidInput

D = Decimal

ZERO = "JPY KRW VND CLP ISK UGX XAF XOF XPF PYG RWF KMF GNF DJF BIF VUV"
NON_TWO_EXPONENTS = {
    **dict.fromkeys(ZERO.split(" "), 0),
    **dict.fromkeys(["BHD", "KWD", "OMR", "JOD", "TND", "LYD", "IQD"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}


@pytest.mark.parametrize(("code", "exponent"), sorted(NON_TWO_EXPONENTS.items()))
def test_non_two_decimal_currencies(code: str, exponent: int) -> None:
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize("code", ["USD", "EUR", "GBP", "CHF", "INR", "BRL", "ZAR"])
def test_common_currencies_have_two_decimals(code: str) -> None:
    assert currency_exponent(code) == 2


@pytest.mark.parametrize("code", ["usd", "XXX", "XAU", "", "EURO"])
def test_unknown_currency(code: str) -> None:
    with pytest.raises(InvalidInput, match="unknown currency") as info:
        currency_exponent(code)
    assert info.value.code == "invalid_input"


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (D("12.5"), "USD", 1250),
        (D("0.005"), "USD", 1),  # tie goes up
        (D("0.025"), "USD", 3),  # half-up, not banker's rounding (which gives 2)
        (D("0.0049999"), "USD", 0),
        (D("-0.005"), "USD", -1),  # ties away from zero, like ROUND_HALF_UP
        (D("1000.4"), "JPY", 1000),
        (D("1000.5"), "JPY", 1001),
        (D("1.0045"), "BHD", 1005),
        (D("1.00449"), "BHD", 1004),
        (D("0.00005"), "CLF", 1),
        (Fraction(10, 3), "USD", 333),
        (Fraction(20, 3), "USD", 667),
        (D("123456789012345678901234567890.125"), "USD", 12345678901234567890123456789013),
    ],
)
def test_to_minor_rounds_half_up_once(amount: Decimal | Fraction, currency: str, minor: int) -> None:
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_to_minor_refuses_non_finite_amounts(value: str) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        to_minor(D(value), "USD")


def test_to_minor_ignores_the_callers_decimal_context() -> None:
    with localcontext() as ctx:
        ctx.prec = 3
        assert to_minor(D("12345.675"), "USD") == 1234568


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1250, "USD", "12.50"),
        (5, "USD", "0.05"),
        (0, "USD", "0.00"),
        (-5, "USD", "-0.05"),
        (1000, "JPY", "1000"),
        (-7, "JPY", "-7"),
        (1005, "BHD", "1.005"),
        (1, "CLF", "0.0001"),
    ],
)
def test_format_minor(minor: int, currency: str, text: str) -> None:
    assert format_minor(minor, currency) == text
    assert from_minor(minor, currency) == D(text)


def test_from_minor_is_exact_beyond_context_precision() -> None:
    assert from_minor(10**40 + 1, "USD") == D("1" + "0" * 38 + ".01")


@pytest.mark.parametrize(
    ("value", "text"),
    [(Fraction(1, 8), "0.125"), (Fraction(5), "5"), (Fraction(-3, 20), "-0.15")],
)
def test_fraction_to_decimal_is_exact_when_it_terminates(value: Fraction, text: str) -> None:
    assert fraction_to_decimal(value) == D(text)


def test_fraction_to_decimal_keeps_28_digits_when_it_does_not() -> None:
    third = fraction_to_decimal(Fraction(1, 3))
    assert third == D("0." + "3" * DISPLAY_DIGITS)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.50", "USD", 1250),
        ("12.5", "USD", 1250),
        ("0.01", "USD", 1),
        ("1000", "JPY", 1000),
        ("1E+2", "JPY", 100),
        ("1.005", "BHD", 1005),
        ("-3.25", "USD", -325),
        ("123456789012345678901234567890.12", "USD", 12345678901234567890123456789012),
    ],
)
def test_exact_minor_converts_without_rounding(amount: str, currency: str, minor: int) -> None:
    assert exact_minor(D(amount), currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("12.505", "USD", "has 3 decimal(s); USD amounts have at most 2 decimal(s)"),
        ("12.500", "USD", "has 3 decimal(s)"),
        ("1000.0", "JPY", "JPY amounts have no decimals"),
        ("NaN", "USD", "not a finite number"),
        ("Infinity", "USD", "not a finite number"),
        ("1", "XXX", "unknown currency"),
    ],
)
def test_exact_minor_refuses_what_it_would_round(amount: str, currency: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        exact_minor(D(amount), currency)
