"""Small builders so each test states only the fields it is about."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.plans import Charge, Plan, load_plan

D = Decimal


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """A UTC datetime."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def charge(**fields: Any) -> Charge:
    """A validated Charge; `key` defaults to "c"."""
    fields.setdefault("key", "c")
    return Charge.model_validate(fields)


def tiers(*rows: tuple[Any, Any, Any]) -> list[dict[str, Any]]:
    """Tier rows as (up_to, unit_amount, flat_amount); up_to None is open-ended."""
    return [
        {"up_to": None if up is None else str(up), "unit_amount": str(unit), "flat_amount": str(flat)}
        for up, unit, flat in rows
    ]


def plan(*charges: dict[str, Any], currency: str = "USD", code: str = "pro") -> Plan:
    return load_plan({"code": code, "currency": currency, "charges": list(charges)})


# Stripe's "Set up tiered pricing" examples, used by several test modules.
# https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing
STRIPE_FONT_TIERS = tiers((5, "7", 0), (10, "6.5", 0), (None, "6", 0))
# Same page, "Add a flat rate": unit and flat amount per tier.
STRIPE_FLAT_RATE_TIERS = tiers((5, 5, 10), (10, 4, 20), (15, 3, 30), (20, 2, 40), (None, 1, 50))
