"""Money: ISO 4217 minor units and the one rounding rule Valora uses.

Amounts are computed exactly in major units (`Decimal`, or `Fraction` where proration
divides) and turned into an integer count of the currency's minor unit exactly once per
invoice line, rounding half up (ties away from zero; for the non-negative amounts we bill
that is simply "up"). An invoice total is the sum of those rounded integers, so it always
matches its lines.
"""

from __future__ import annotations

from decimal import Context, Decimal, localcontext
from fractions import Fraction

from schemas.errors import InvalidInput
from schemas.plans import CURRENCY_EXPONENTS

DISPLAY_DIGITS = 28
"""Significant digits kept when an exact amount has no finite decimal form (e.g. 10/3)."""


def currency_exponent(code: str) -> int:
    """The number of decimal places of `code`'s minor unit (USD 2, JPY 0, BHD 3, CLF 4).

    Raises:
        InvalidInput: `code` is not an active ISO 4217 currency code.
    """
    try:
        return CURRENCY_EXPONENTS[code]
    except KeyError:
        raise InvalidInput(f"unknown currency {code!r}") from None


def to_minor(amount: Decimal | Fraction, currency: str) -> int:
    """Round `amount` (major units) half-up to an integer number of minor units.

    The arithmetic is exact rational arithmetic, so the result never depends on a decimal
    context's precision. This is the only place Valora rounds money; call it once per line.

    Raises:
        InvalidInput: unknown currency.
        ValueError: `amount` is NaN or infinite.
    """
    if isinstance(amount, Decimal):
        if not amount.is_finite():
            raise ValueError(f"cannot bill a non-finite amount ({amount})")
        numerator, denominator = amount.as_integer_ratio()
    else:
        numerator, denominator = amount.numerator, amount.denominator
    # |amount| × 10^exponent = q + r/denominator; half-up adds one exactly when r/denominator ≥ 1/2.
    # Integer arithmetic: exact like Fraction, and an order of magnitude faster on the close's hot path.
    q, r = divmod(abs(numerator) * 10 ** currency_exponent(currency), denominator)
    magnitude: int = q + (2 * r >= denominator)
    return magnitude if numerator >= 0 else -magnitude


def from_minor(amount_minor: int, currency: str) -> Decimal:
    """The exact major-unit `Decimal` of an integer minor amount (1250 USD -> 12.50)."""
    exponent = currency_exponent(currency)
    return Decimal(f"{amount_minor}e-{exponent}")  # built from a string: exact at any size


def exact_minor(amount: Decimal, currency: str) -> int:
    """An amount a person gave (major units) as integer minor units, without rounding.

    Unlike `to_minor`, this refuses what it would have to round: the amount may have at
    most as many decimals as the currency's minor unit, as written ("12.50" USD → 1250,
    while "12.505" and "12.500" are refused; "1000" JPY → 1000, "1000.0" is refused).

    Raises:
        InvalidInput: unknown currency, an amount that is not finite, or too many decimals.
    """
    exponent = currency_exponent(currency)
    if not amount.is_finite():
        raise InvalidInput(f"amount {amount} is not a finite number")
    places = -int(amount.as_tuple().exponent)
    if places > exponent:
        allowed = f"at most {exponent} decimal(s)" if exponent else "no decimals"
        raise InvalidInput(f"amount {amount} has {places} decimal(s); {currency} amounts have {allowed}")
    numerator, denominator = amount.as_integer_ratio()
    minor: int = numerator * 10**exponent // denominator  # exact: the decimals fit, so nothing is left over
    return minor


def format_minor(amount_minor: int, currency: str) -> str:
    """Major units as a plain string with the currency's decimals: '12.50', '1000', '1.005'."""
    exponent = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    digits = str(abs(amount_minor)).rjust(exponent + 1, "0")
    if exponent == 0:
        return sign + digits
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"


def fraction_to_decimal(value: Fraction) -> Decimal:
    """`value` as a `Decimal`: exact when it has a finite decimal form, else 28 digits.

    Amounts built from decimal prices by +, − and × always terminate; only a prorated
    amount such as 10 × 1/3 does not, and that one is shown to `DISPLAY_DIGITS`
    significant digits (its billed minor amount is still rounded from the exact value).
    """
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator, twos = denominator // 2, twos + 1
    while denominator % 5 == 0:
        denominator, fives = denominator // 5, fives + 1
    if denominator == 1:
        places = max(twos, fives)
        scaled = value.numerator * (10**places // value.denominator)
        return Decimal(f"{scaled}e-{places}")
    # A fresh context, so a caller's traps or precision cannot change what we show.
    with localcontext(Context(prec=DISPLAY_DIGITS)):
        return Decimal(value.numerator) / Decimal(value.denominator)
