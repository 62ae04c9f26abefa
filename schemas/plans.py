"""The plan contract: what a customer pays for, charge by charge.

A `Plan` is a currency, a billing interval and an ordered tuple of `Charge`s. Each charge
uses one pricing model (`ChargeModel`); the fields it needs are checked when the plan is
loaded, never when it is billed, so the rating engine can trust every plan it is given.

Money and quantities are `Decimal`, parsed exactly: pass JSON numbers through
`json.loads(..., parse_float=Decimal)` or write them as strings. Python floats are
rejected, because a binary float has already lost the price the author wrote.

Use `load_plan` at every edge (files, database rows, API bodies): it turns pydantic's
multi-line report into one `InvalidPlan` line naming the plan code and the charge key.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import InvalidPlan

# ISO 4217 List One, active codes and their minor-unit exponents. Fund codes (BOV, CLF, ...)
# are included; precious metals, SDR and testing codes have no minor unit and are not money here.
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD "
    "FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD "
    "KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD "
    "NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP "
    "SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED "
    "VES WST XCD XCG YER ZAR ZMW ZWG"
)

CURRENCY_EXPONENTS: Final[Mapping[str, int]] = MappingProxyType(
    {
        code: exponent
        for codes, exponent in (
            (_EXPONENT_0, 0),
            (_EXPONENT_2, 2),
            (_EXPONENT_3, 3),
            (_EXPONENT_4, 4),
        )
        for code in codes.split()
    }
)
"""Currency code -> number of decimal places in its minor unit (USD 2, JPY 0, BHD 3)."""


def _reject_inexact(value: object) -> object:
    """Refuse binary floats (and bools, which are ints to Python) before Decimal parsing."""
    if isinstance(value, bool | float):
        raise ValueError(
            f"{value!r} is a {type(value).__name__}; write money and quantities as strings "
            "or parse JSON with parse_float=Decimal"
        )
    return value


MAX_PRICE: Final = Decimal(10) ** 12
"""The largest price or fee a plan may name, in major units: with every ISO 4217 exponent (at most
4) an invoice of many such charges still fits the store's 64-bit minor units."""
MAX_QUANTITY: Final = Decimal(10) ** 18
"""The largest quantity a plan may name (a tier bound, free units, a package size)."""
MAX_DECIMAL_PLACES: Final = 18
"""Finer than this is not a price anyone means, and exact arithmetic on it costs without bound."""


def _bounded_places(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_DECIMAL_PLACES and value != value.to_integral_value():
        normalized = value.normalize().as_tuple().exponent
        if isinstance(normalized, int) and -normalized > MAX_DECIMAL_PLACES:
            raise ValueError(f"{value} has more than {MAX_DECIMAL_PLACES} decimal places")
    return value


Amount = Annotated[
    Decimal,
    BeforeValidator(_reject_inexact),
    Field(ge=0, le=MAX_PRICE, allow_inf_nan=False),
    AfterValidator(_bounded_places),
]
"""A price or fee: non-negative, finite, exactly parsed, at most `MAX_PRICE` with at most 18 decimals."""
Quantity = Annotated[
    Decimal,
    BeforeValidator(_reject_inexact),
    Field(ge=0, le=MAX_QUANTITY, allow_inf_nan=False),
    AfterValidator(_bounded_places),
]
"""A quantity a plan names: non-negative, finite, exactly parsed, at most `MAX_QUANTITY`."""

MAX_INTERVAL_COUNT: Final = 100
"""At most 100 intervals per period (100 years): every period boundary stays a real date."""

_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # no ':' — line keys use it as a separator
_IDENT = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class Interval(StrEnum):
    """The calendar unit a plan bills in; `Plan.interval_count` multiplies it."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


class ChargeModel(StrEnum):
    """How a charge turns a period's usage into money (see docs/pricing.md)."""

    FLAT = "flat"
    PER_UNIT = "per_unit"
    PACKAGE = "package"
    GRADUATED = "graduated"
    VOLUME = "volume"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Tier(_Frozen):
    """One row of a tier table: units up to and including `up_to` (None: no upper bound)."""

    up_to: Quantity | None
    unit_amount: Amount = Decimal(0)
    flat_amount: Amount = Decimal(0)


# Fields that only make sense for some models; any other model must leave them unset.
_MODEL_FIELDS: Final[Mapping[ChargeModel, frozenset[str]]] = MappingProxyType(
    {
        ChargeModel.FLAT: frozenset({"amount"}),
        ChargeModel.PER_UNIT: frozenset({"unit_amount", "free_units"}),
        ChargeModel.PACKAGE: frozenset({"package_size", "package_amount", "free_units"}),
        ChargeModel.GRADUATED: frozenset({"tiers"}),
        ChargeModel.VOLUME: frozenset({"tiers"}),
    }
)
_REQUIRED_FIELDS: Final[Mapping[ChargeModel, tuple[str, ...]]] = MappingProxyType(
    {
        ChargeModel.FLAT: ("amount",),
        ChargeModel.PER_UNIT: ("unit_amount",),
        ChargeModel.PACKAGE: ("package_size", "package_amount"),
        ChargeModel.GRADUATED: ("tiers",),
        ChargeModel.VOLUME: ("tiers",),
    }
)
_ALL_MODEL_FIELDS: Final = frozenset().union(*_MODEL_FIELDS.values())


class Charge(_Frozen):
    """One priced item on a plan. Which fields are required depends on `model`."""

    key: str = Field(pattern=_KEY)
    model: ChargeModel
    meter: str | None = Field(default=None, pattern=_IDENT)
    amount: Amount | None = None
    unit_amount: Amount | None = None
    free_units: Quantity = Decimal(0)
    package_size: Quantity | None = None
    package_amount: Amount | None = None
    tiers: tuple[Tier, ...] | None = None
    minimum_amount: Amount | None = None
    maximum_amount: Amount | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _fields_fit_model(self) -> Charge:
        if self.model is ChargeModel.FLAT and self.meter is not None:
            raise ValueError("a flat charge takes no meter")
        if self.model is not ChargeModel.FLAT and self.meter is None:
            raise ValueError(f"a {self.model.value} charge needs a meter")
        for name in _REQUIRED_FIELDS[self.model]:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.model.value} charge needs {name}")
        for name in sorted(_ALL_MODEL_FIELDS - _MODEL_FIELDS[self.model]):
            if name in self.model_fields_set and getattr(self, name) not in (None, 0):
                raise ValueError(f"{name} does not apply to a {self.model.value} charge")
        if self.package_size is not None and self.package_size <= 0:
            raise ValueError("package_size must be greater than 0")
        if self.tiers is not None:
            _check_tiers(self.tiers)
        low, high = self.minimum_amount, self.maximum_amount
        if low is not None and high is not None and low > high:
            raise ValueError(f"minimum_amount {low} is greater than maximum_amount {high}")
        return self


def _check_tiers(tiers: tuple[Tier, ...]) -> None:
    """Tiers ascend strictly and end with exactly one open-ended tier."""
    if not tiers:
        raise ValueError("tiers must not be empty")
    if tiers[-1].up_to is not None:
        raise ValueError("the last tier must be open-ended (up_to null)")
    bounds = [tier.up_to for tier in tiers[:-1]]
    if any(bound is None for bound in bounds):
        raise ValueError("only the last tier may be open-ended (up_to null)")
    previous: Decimal | None = None
    for bound in bounds:
        assert bound is not None  # checked just above; narrows the type
        if previous is not None and bound <= previous:
            raise ValueError("tiers must be strictly ascending")
        previous = bound


class BillingTiming(StrEnum):
    """When a plan's flat charges are billed: for the coming period, or for the one just ended."""

    IN_ADVANCE = "in_advance"
    IN_ARREARS = "in_arrears"


class Plan(_Frozen):
    """A priced offer: currency, billing interval and its charges in invoice order.

    `billing_timing` applies to flat charges only (usage is always billed in arrears);
    `trial_usage_billed` says whether usage during a subscription's trial is billed
    (flat charges never are).
    """

    code: str = Field(pattern=_IDENT)
    currency: str
    interval: Interval = Interval.MONTH
    interval_count: int = Field(default=1, ge=1, le=MAX_INTERVAL_COUNT)
    charges: tuple[Charge, ...]
    name: str | None = None
    billing_timing: BillingTiming = BillingTiming.IN_ARREARS
    trial_usage_billed: bool = True

    @model_validator(mode="after")
    def _known_currency_unique_keys(self) -> Plan:
        if self.currency not in CURRENCY_EXPONENTS:
            raise ValueError(f"unknown currency {self.currency!r} (want an ISO 4217 code like USD)")
        seen: set[str] = set()
        for charge in self.charges:
            if charge.key in seen:
                raise ValueError(f"duplicate charge key {charge.key!r}")
            seen.add(charge.key)
        return self


def load_plan(data: Mapping[str, Any]) -> Plan:
    """Validate a plan document and return the `Plan`.

    Raises:
        InvalidPlan: with one line naming the plan code and, when the problem is inside a
            charge, the charge key, e.g. "plan 'pro', charge 'gb': tiers must be strictly
            ascending".
    """
    if not isinstance(data, Mapping):
        raise InvalidPlan(f"plan must be an object, not {type(data).__name__}")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise InvalidPlan(_describe(exc, data)) from None


def _describe(exc: ValidationError, data: Mapping[str, Any]) -> str:
    """One line for the first pydantic error, with the plan code and charge key in front."""
    errors = exc.errors()
    first = errors[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    loc = tuple(first["loc"])
    prefix = f"plan {data.get('code', '?')!r}"
    if len(loc) >= 2 and loc[0] == "charges" and isinstance(loc[1], int):
        prefix += f", charge {_charge_key(data, loc[1])!r}"
        loc = loc[2:]
    path = _format_loc(loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{prefix}: {path + ': ' if path else ''}{message}{more}"


def _charge_key(data: Mapping[str, Any], index: int) -> str:
    """The key of charge `index` as written, or its 1-based position when it has none."""
    charges = data.get("charges")
    if isinstance(charges, list | tuple) and index < len(charges):
        charge = charges[index]
        if isinstance(charge, Mapping) and isinstance(charge.get("key"), str):
            return str(charge["key"])
    return f"#{index + 1}"


def _format_loc(loc: tuple[int | str, ...]) -> str:
    """('tiers', 1, 'up_to') -> 'tiers[1].up_to'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
