"""The rating engine: a plan, a period's usage and an active window in; priced lines out.

Rating is a pure function of its inputs, so re-rating a closed period gives the same lines
with the same `line_key`s, and whoever stores them can overwrite rows in place.

Line keys (unique within an invoice, stable across runs):

    <charge key>            the charge itself ("base", "api")
    <charge key>:minimum    the minimum-spend true-up of that charge ("api:minimum")

Charge keys cannot contain ':' (schemas.plans enforces it), so the two forms never clash.
Tier breakdowns are carried inside a line (`RatedLine.tiers`), not as lines of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from enum import StrEnum
from fractions import Fraction

from rating.money import fraction_to_decimal, from_minor, to_minor
from rating.periods import Period
from rating.pricing import EXACT, PRICING, TierLine, fmt
from rating.proration import describe_share, proration_factor
from schemas.errors import InvalidUsage
from schemas.plans import Charge, ChargeModel, Plan

_ZERO = Decimal(0)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class LineKind(StrEnum):
    """What an invoice line bills for: the one kind enum of every line, rated or added by the close."""

    FLAT = "flat"  # a fixed fee, prorated to the active share of the period (or its window)
    USAGE = "usage"  # a metered charge: per_unit, package, graduated or volume
    MINIMUM = "minimum"  # the true-up that lifts a charge to its minimum_amount
    CREDIT = "credit"  # unused time of an in-advance flat charge; negative
    ADJUSTMENT = "adjustment"  # what late usage adds to an earlier period's charge


@dataclass(frozen=True, slots=True)
class RatedLine:
    """One priced line. `amount` is exact; `amount_minor` is it rounded half-up, once."""

    line_key: str  # see the module docstring for the scheme
    charge: str  # the charge key this line belongs to
    kind: LineKind
    quantity: Decimal  # usage units; the active share for flat lines (1 when whole); 1 for minimum
    amount: Decimal  # major units, before rounding
    amount_minor: int  # the billed amount, in the currency's minor unit
    description: str  # for people, e.g. "API calls: 12,000 units (1,000 free) × 0.002"
    tiers: tuple[TierLine, ...] = ()  # graduated/volume breakdown, informational


@dataclass(frozen=True, slots=True)
class RatedInvoice:
    """The priced lines of one plan for one period; totals are sums of rounded lines."""

    currency: str
    period: Period
    lines: tuple[RatedLine, ...]
    subtotal_minor: int
    total_minor: int  # equal to subtotal_minor until taxes and credits exist


def parse_quantity(meter: str, value: object) -> Decimal:
    """A usage quantity as an exact, finite, non-negative `Decimal`.

    Accepts `Decimal`, `int` and decimal strings ("12", "0.5", "1e3"). Rejects floats
    (already inexact), bools, NaN and infinities, other strings, and negative numbers.

    Raises:
        InvalidUsage: naming `meter`.
    """
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = Decimal(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidUsage(f"meter {meter!r}: quantity {value!r} is not a finite decimal number")
    if value < 0:
        raise InvalidUsage(f"meter {meter!r}: quantity {value} is negative")
    return value


def rate_charge(
    charge: Charge, quantity: Decimal, currency: str, *, factor: Fraction = Fraction(1), period: Period | None = None
) -> tuple[RatedLine, ...]:
    """Price one charge: its line, then its minimum true-up line if one is owed.

    `quantity` is the period's usage of the charge's meter; a flat charge has no meter and
    ignores it. `factor` is the active share of the period (see `proration_factor`) and
    only flat charges take it: usage is never prorated. `period`, when given, lets a
    prorated line say so in days ("prorated 16 of 31 days").

    `maximum_amount` caps the exact amount before rounding. When the exact amount is below
    `minimum_amount`, a true-up line bills `minimum_amount − the charge line's billed
    amount`, so the two lines together come to the minimum, to the minor unit.

    Raises:
        InvalidUsage: `quantity` is negative or not a finite decimal.
        ValueError: `factor` is outside [0, 1], or is not 1 for a usage charge.
    """
    if not 0 <= factor <= 1:
        raise ValueError(f"proration factor {factor} is outside [0, 1]")
    if charge.model is ChargeModel.FLAT:
        quantity = _ZERO
    else:
        if factor != 1:
            raise ValueError(f"charge {charge.key!r}: usage charges are not prorated")
        quantity = parse_quantity(charge.meter or charge.key, quantity)
    priced = PRICING[charge.model](charge, quantity, factor)
    exact, detail = priced.amount, priced.detail
    if charge.model is ChargeModel.FLAT and factor != 1:
        detail += f", {describe_share(factor, None if period is None else period.microseconds)}"
    if charge.maximum_amount is not None and exact > Fraction(charge.maximum_amount):
        exact = Fraction(charge.maximum_amount)
        detail += f", capped at {fmt(charge.maximum_amount)}"
    kind = LineKind.FLAT if charge.model is ChargeModel.FLAT else LineKind.USAGE
    line = RatedLine(
        line_key=charge.key,
        charge=charge.key,
        kind=kind,
        quantity=priced.quantity,
        amount=fraction_to_decimal(exact),
        amount_minor=to_minor(exact, currency),
        description=f"{_label(charge)}: {detail}",
        tiers=priced.tiers,
    )
    true_up = _minimum_true_up(charge, exact, line.amount_minor, currency)
    return (line,) if true_up is None else (line, true_up)


def _minimum_true_up(charge: Charge, exact: Fraction, billed_minor: int, currency: str) -> RatedLine | None:
    """The line lifting a charge to its minimum, or None when none is owed."""
    minimum = charge.minimum_amount
    if minimum is None or exact >= Fraction(minimum):
        return None
    with localcontext(EXACT):
        shortfall = minimum - from_minor(billed_minor, currency)
    if shortfall <= 0:  # the charge line already rounded up to the minimum
        return None
    return RatedLine(
        line_key=f"{charge.key}:minimum",
        charge=charge.key,
        kind=LineKind.MINIMUM,
        quantity=Decimal(1),
        amount=shortfall,
        amount_minor=to_minor(shortfall, currency),
        description=f"{_label(charge)}: minimum {fmt(minimum)} per period, true-up",
    )


def rate_plan(
    plan: Plan,
    usage: Mapping[str, Decimal],
    period: Period,
    *,
    active_from: datetime | None = None,
    active_until: datetime | None = None,
) -> RatedInvoice:
    """Price every charge of `plan` for `period`, in the plan's charge order.

    `usage` maps meter keys to the period's quantities; a meter that is missing used
    nothing. `active_from`/`active_until` bound the subscription's active window (None:
    unbounded); only flat charges are prorated by it.

    Raises:
        InvalidUsage: a usage quantity is negative or not a finite decimal (names the meter).
        ValueError: `active_from` or `active_until` is naive.
    """
    quantities = {meter: parse_quantity(meter, value) for meter, value in usage.items()}
    factor = proration_factor(period, active_from, active_until)
    lines: list[RatedLine] = []
    for charge in plan.charges:
        if charge.model is ChargeModel.FLAT:
            lines.extend(rate_charge(charge, _ZERO, plan.currency, factor=factor, period=period))
        else:
            quantity = quantities.get(charge.meter or "", _ZERO)
            lines.extend(rate_charge(charge, quantity, plan.currency))
    subtotal_minor = sum(line.amount_minor for line in lines)
    return RatedInvoice(plan.currency, period, tuple(lines), subtotal_minor, subtotal_minor)


def _label(charge: Charge) -> str:
    return charge.description or charge.key
