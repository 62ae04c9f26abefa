"""Plan validation at load time: every rule gives one InvalidPlan line naming the charge."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.errors import InvalidInput, InvalidPlan, ValoraError
from schemas.plans import CURRENCY_EXPONENTS, ChargeModel, Interval, Plan, Tier, load_plan
from tests.rating.builders import tiers

GOOD_CHARGES: dict[str, dict[str, Any]] = {
    "flat": {"model": "flat", "amount": "49"},
    "per_unit": {"model": "per_unit", "meter": "api", "unit_amount": "0.002"},
    "package": {"model": "package", "meter": "api", "package_size": "20", "package_amount": "10"},
    "graduated": {"model": "graduated", "meter": "api", "tiers": tiers((5, 1, 0), (None, 0, 0))},
    "volume": {"model": "volume", "meter": "api", "tiers": tiers((None, 1, 0))},
}


def plan_with(charge: dict[str, Any], **plan_fields: Any) -> dict[str, Any]:
    return {"code": "pro", "currency": "USD", "charges": [charge], **plan_fields}


def gb(**fields: Any) -> dict[str, Any]:
    """A charge keyed 'gb', so messages can be checked for the key."""
    return {"key": "gb", **fields}


@pytest.mark.parametrize("model", list(GOOD_CHARGES))
def test_every_model_loads(model: str) -> None:
    plan = load_plan(plan_with(gb(**GOOD_CHARGES[model])))
    assert plan.charges[0].model is ChargeModel(model)
    assert plan.interval is Interval.MONTH
    assert plan.interval_count == 1


def test_decimals_are_exact_from_strings_ints_and_decimals() -> None:
    plan = load_plan(
        plan_with(gb(model="per_unit", meter="m", unit_amount=Decimal("0.1"), free_units=1000, minimum_amount="0.30"))
    )
    (charge,) = plan.charges
    assert charge.unit_amount == Decimal("0.1")
    assert charge.free_units == Decimal(1000)
    assert str(charge.minimum_amount) == "0.30"


BAD_CHARGES: list[tuple[str, dict[str, Any], str]] = [
    ("flat with meter", gb(model="flat", amount="1", meter="m"), "flat charge takes no meter"),
    ("flat without amount", gb(model="flat"), "needs amount"),
    ("usage without meter", gb(model="per_unit", unit_amount="1"), "needs a meter"),
    ("per_unit without unit_amount", gb(model="per_unit", meter="m"), "needs unit_amount"),
    ("package without size", gb(model="package", meter="m", package_amount="1"), "needs package_size"),
    ("package without amount", gb(model="package", meter="m", package_size="1"), "needs package_amount"),
    (
        "package size zero",
        gb(model="package", meter="m", package_size="0", package_amount="1"),
        "package_size must be greater than 0",
    ),
    ("graduated without tiers", gb(model="graduated", meter="m"), "needs tiers"),
    ("empty tiers", gb(model="volume", meter="m", tiers=[]), "tiers must not be empty"),
    (
        "descending tiers",
        gb(model="graduated", meter="m", tiers=tiers((5, 1, 0), (3, 1, 0), (None, 1, 0))),
        "tiers must be strictly ascending",
    ),
    (
        "equal tiers",
        gb(model="graduated", meter="m", tiers=tiers((5, 1, 0), (5, 1, 0), (None, 1, 0))),
        "tiers must be strictly ascending",
    ),
    (
        "closed last tier",
        gb(model="volume", meter="m", tiers=tiers((5, 1, 0), (10, 1, 0))),
        "last tier must be open-ended",
    ),
    (
        "open middle tier",
        gb(model="volume", meter="m", tiers=tiers((None, 1, 0), (None, 1, 0))),
        "only the last tier may be open-ended",
    ),
    (
        "negative tier bound",
        gb(model="volume", meter="m", tiers=tiers((-1, 1, 0), (None, 1, 0))),
        "tiers[0].up_to: Input should be greater than or equal to 0",
    ),
    (
        "negative unit amount",
        gb(model="per_unit", meter="m", unit_amount="-0.01"),
        "unit_amount: Input should be greater than or equal to 0",
    ),
    ("negative flat amount", gb(model="flat", amount="-1"), "amount: Input should be greater"),
    (
        "negative free units",
        gb(model="per_unit", meter="m", unit_amount="1", free_units="-1"),
        "free_units: Input should be greater",
    ),
    (
        "minimum above maximum",
        gb(model="per_unit", meter="m", unit_amount="1", minimum_amount="10", maximum_amount="5"),
        "minimum_amount 10 is greater than maximum_amount 5",
    ),
    (
        "field of another model",
        gb(model="per_unit", meter="m", unit_amount="1", package_size="5"),
        "package_size does not apply to a per_unit charge",
    ),
    (
        "free units on graduated",
        gb(model="graduated", meter="m", free_units="5", tiers=tiers((None, 1, 0))),
        "free_units does not apply to a graduated charge",
    ),
    ("binary float", gb(model="flat", amount=0.1), "0.1 is a float"),
    ("bool", gb(model="flat", amount=True), "True is a bool"),
    ("NaN", gb(model="flat", amount="NaN"), "amount: Input should be a finite number"),
    ("Infinity", gb(model="flat", amount="Infinity"), "amount: Input should be a finite number"),
    ("not a number", gb(model="flat", amount="ten"), "amount: Input should be a valid decimal"),
    ("unknown field", gb(model="flat", amount="1", colour="red"), "colour: Extra inputs are not permitted"),
    ("unknown model", gb(model="stairstep", meter="m"), "model: Input should be"),
    (
        "unknown tier field",
        gb(model="volume", meter="m", tiers=[{"up_to": None, "price": "1"}]),
        "tiers[0].price: Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize(("charge", "message"), [row[1:] for row in BAD_CHARGES], ids=[row[0] for row in BAD_CHARGES])
def test_invalid_charge_names_plan_and_charge(charge: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPlan) as info:
        load_plan(plan_with(charge))
    text = str(info.value)
    assert text.startswith("plan 'pro', charge 'gb': ")
    assert message in text
    assert "\n" not in text


def test_invalid_plan_is_a_value_error_with_a_stable_code() -> None:
    with pytest.raises(ValueError) as info:
        load_plan(plan_with(gb(model="flat")))
    error = info.value
    assert isinstance(error, InvalidPlan)
    assert isinstance(error, InvalidInput)
    assert isinstance(error, ValoraError)
    assert error.code == "invalid_plan"
    assert error.message == str(error)


def test_the_exact_message_shape() -> None:
    bad = gb(model="graduated", meter="gb", tiers=tiers((10, 1, 0), (5, 1, 0), (None, 1, 0)))
    with pytest.raises(InvalidPlan, match=r"^plan 'pro', charge 'gb': tiers must be strictly ascending$"):
        load_plan(plan_with(bad))


def test_several_errors_are_summarised_on_one_line() -> None:
    with pytest.raises(InvalidPlan, match=r"\(and 1 more\)$"):
        load_plan(plan_with(gb(model="flat", amount="-1", colour="red")))


@pytest.mark.parametrize("key", ["api:minimum", "", "has space", "-leading-dash"])
def test_charge_keys_are_simple_identifiers(key: str) -> None:
    with pytest.raises(InvalidPlan, match="key: String should match pattern"):
        load_plan(plan_with({"key": key, "model": "flat", "amount": "1"}))


def test_a_charge_without_a_key_is_named_by_position() -> None:
    with pytest.raises(InvalidPlan, match=r"^plan 'pro', charge '#1': key: Field required"):
        load_plan(plan_with({"model": "flat", "amount": "1"}))


def test_duplicate_charge_keys() -> None:
    flat = {"key": "base", "model": "flat", "amount": "1"}
    with pytest.raises(InvalidPlan, match=r"^plan 'pro': duplicate charge key 'base'$"):
        load_plan({"code": "pro", "currency": "USD", "charges": [flat, flat]})


@pytest.mark.parametrize("currency", ["usd", "XXX", "US", "EURO"])
def test_unknown_currency(currency: str) -> None:
    with pytest.raises(InvalidPlan, match=rf"^plan 'pro': unknown currency '{currency}'"):
        load_plan(plan_with(gb(**GOOD_CHARGES["flat"]), currency=currency))


def test_interval_count_must_be_positive() -> None:
    with pytest.raises(InvalidPlan, match=r"^plan 'pro': interval_count: Input should be greater"):
        load_plan(plan_with(gb(**GOOD_CHARGES["flat"]), interval_count=0))


def test_plan_level_errors_when_code_is_missing() -> None:
    with pytest.raises(InvalidPlan, match=r"^plan '\?': code: Field required"):
        load_plan({"currency": "USD", "charges": []})


def test_charges_that_are_not_a_list() -> None:
    with pytest.raises(InvalidPlan, match=r"^plan 'pro': charges: Input should be a valid tuple"):
        load_plan({"code": "pro", "currency": "USD", "charges": {"0": "x"}})
    with pytest.raises(InvalidPlan, match=r"charge '#1'"):
        load_plan({"code": "pro", "currency": "USD", "charges": ["not an object"]})


def test_plan_must_be_a_mapping() -> None:
    with pytest.raises(InvalidPlan, match="plan must be an object, not list"):
        load_plan([])  # type: ignore[arg-type]


def test_models_are_frozen() -> None:
    plan = load_plan(plan_with(gb(**GOOD_CHARGES["flat"])))
    with pytest.raises(ValidationError):
        plan.code = "other"  # type: ignore[misc]


def test_tier_defaults() -> None:
    tier = Tier(up_to=None)
    assert (tier.unit_amount, tier.flat_amount) == (Decimal(0), Decimal(0))


def test_pydantic_validation_still_works_directly() -> None:
    with pytest.raises(ValidationError, match="tiers must be strictly ascending"):
        Plan.model_validate(plan_with(gb(model="volume", meter="m", tiers=tiers((2, 1, 0), (1, 1, 0), (None, 1, 0)))))


def test_currency_table_has_the_active_list() -> None:
    assert len(CURRENCY_EXPONENTS) > 150
    assert all(len(code) == 3 and code.isupper() for code in CURRENCY_EXPONENTS)
    assert set(CURRENCY_EXPONENTS.values()) == {0, 2, 3, 4}
