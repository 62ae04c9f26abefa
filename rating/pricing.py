"""The pricing models: one small pure function per `ChargeModel`, picked from `PRICING`.

Each function takes a validated charge, the period's quantity and the active share of the
period, and returns the charge's exact amount (no rounding here) with a short explanation.
docs/pricing.md describes the same rules with worked examples; keep the two in step.

Only flat charges use the active share: a fixed fee is owed for the time the plan was
active, while usage is whatever was used, so usage charges are never prorated.

Decimal arithmetic runs in `EXACT`, a context wide enough that +, −, × and integer
division never round: every amount here is exact, and only `rating.money.to_minor` rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, localcontext
from fractions import Fraction
from types import MappingProxyType
from typing import Final

from rating.money import fraction_to_decimal
from schemas.errors import InvalidPlan
from schemas.plans import Charge, ChargeModel, Tier

EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
"""Decimal context for pricing: no operation used here can round in it (we never divide)."""

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class TierLine:
    """How much of a quantity one tier priced (informational breakdown on a line)."""

    tier: int  # 1-based position in the charge's tier table
    quantity: Decimal
    unit_amount: Decimal
    flat_amount: Decimal
    amount: Decimal  # quantity × unit_amount + flat_amount, exact


@dataclass(frozen=True, slots=True)
class Priced:
    """What a pricing function returns: an exact amount and how it was reached."""

    amount: Fraction  # exact, major units; a Fraction because proration may not terminate
    quantity: Decimal  # units for usage models, the active share for flat
    detail: str  # e.g. "12,000 units (1,000 free) × 0.002"
    tiers: tuple[TierLine, ...] = ()


PricingFn = Callable[[Charge, Decimal, Fraction], Priced]


def fmt(value: Decimal) -> str:
    """A decimal for people: thousands separators, never scientific notation."""
    return f"{value:,f}"


def _required(charge: Charge, name: str) -> Decimal:
    """A field `load_plan` guarantees for this model (narrows the Optional for mypy).

    Raises:
        InvalidPlan: only for a charge built without validation (`model_construct`).
    """
    value = getattr(charge, name)
    if not isinstance(value, Decimal):
        raise InvalidPlan(f"charge {charge.key!r}: a {charge.model} charge needs {name}")
    return value


def price_flat(charge: Charge, quantity: Decimal, share: Fraction) -> Priced:
    """Flat: `amount` per period, times the active share of the period (exact).

    The detail names the full amount; the caller, which knows the period, says how it
    was prorated (`rating.proration.describe_share`).
    """
    amount = _required(charge, "amount")
    return Priced(Fraction(amount) * share, fraction_to_decimal(share), f"flat {fmt(amount)}")


def price_per_unit(charge: Charge, quantity: Decimal, share: Fraction) -> Priced:
    """Per unit: max(q − free_units, 0) × unit_amount."""
    unit_amount = _required(charge, "unit_amount")
    with localcontext(EXACT):
        amount = max(quantity - charge.free_units, _ZERO) * unit_amount
    return Priced(Fraction(amount), quantity, f"{_units(quantity, charge)} × {fmt(unit_amount)}")


def price_package(charge: Charge, quantity: Decimal, share: Fraction) -> Priced:
    """Package: ceil(max(q − free_units, 0) / package_size) × package_amount.

    Any started package is a whole package; no usage costs nothing.
    """
    size, package_amount = _required(charge, "package_size"), _required(charge, "package_amount")
    with localcontext(EXACT):
        billable = max(quantity - charge.free_units, _ZERO)
        whole, rest = divmod(billable, size)
        packages = whole + (1 if rest else 0)
        amount = packages * package_amount
    detail = f"{_units(quantity, charge)} → {fmt(packages)} × {fmt(package_amount)} per {fmt(size)} units"
    return Priced(Fraction(amount), quantity, detail)


def price_graduated(charge: Charge, quantity: Decimal, share: Fraction) -> Priced:
    """Graduated: each unit at the rate of the tier it falls in, plus each reached tier's flat.

    Tier i covers (up_to of tier i−1, up_to of tier i]. A tier is reached when the quantity
    is above the previous bound; the first tier is always reached, so its flat_amount is
    billed even for zero usage. Fractional quantities split across tiers exactly.
    """
    lines: list[TierLine] = []
    lower = _ZERO
    with localcontext(EXACT):
        # The loop stops at the tier holding the quantity, so every tier visited is reached.
        for number, tier in enumerate(_required_tiers(charge), start=1):
            top = quantity if tier.up_to is None else min(quantity, tier.up_to)
            lines.append(_tier_line(number, tier, top - lower))
            if tier.up_to is None or quantity <= tier.up_to:
                break
            lower = tier.up_to
        amount = sum((line.amount for line in lines), _ZERO)
    detail = f"{fmt(quantity)} units, graduated over {len(lines)} tier(s)"
    return Priced(Fraction(amount), quantity, detail, tuple(lines))


def price_volume(charge: Charge, quantity: Decimal, share: Fraction) -> Priced:
    """Volume: the whole quantity at the rate of the one tier containing it (q ≤ up_to).

    The tier's flat_amount is added; zero usage lands in the first tier and pays its flat.
    """
    tiers = _required_tiers(charge)
    number, tier = next((n, t) for n, t in enumerate(tiers, start=1) if t.up_to is None or quantity <= t.up_to)
    with localcontext(EXACT):
        line = _tier_line(number, tier, quantity)
    detail = f"{fmt(quantity)} units, all at tier {number} × {fmt(tier.unit_amount)}"
    if tier.flat_amount:
        detail += f" + {fmt(tier.flat_amount)}"
    return Priced(Fraction(line.amount), quantity, detail, (line,))


PRICING: Final[Mapping[ChargeModel, PricingFn]] = MappingProxyType(
    {
        ChargeModel.FLAT: price_flat,
        ChargeModel.PER_UNIT: price_per_unit,
        ChargeModel.PACKAGE: price_package,
        ChargeModel.GRADUATED: price_graduated,
        ChargeModel.VOLUME: price_volume,
    }
)
"""The pricing function for each model; a new model is a new enum member plus an entry."""


def _required_tiers(charge: Charge) -> tuple[Tier, ...]:
    """The tier table `load_plan` guarantees (see `_required`)."""
    if not charge.tiers:
        raise InvalidPlan(f"charge {charge.key!r}: a {charge.model} charge needs tiers")
    return charge.tiers


def _tier_line(number: int, tier: Tier, quantity: Decimal) -> TierLine:
    """One tier's share; call inside `localcontext(EXACT)`."""
    amount = quantity * tier.unit_amount + tier.flat_amount
    return TierLine(number, quantity, tier.unit_amount, tier.flat_amount, amount)


def _units(quantity: Decimal, charge: Charge) -> str:
    """'12,000 units' or '12,000 units (1,000 free)'."""
    free = f" ({fmt(charge.free_units)} free)" if charge.free_units else ""
    return f"{fmt(quantity)} units{free}"
