"""valora.quote: the `valora quote` edge around the rating engine.

(Kept beside the rating tests because this session owns tests/rating only.)
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import InvalidInput, InvalidPlan, InvalidUsage
from tests.rating.builders import STRIPE_FLAT_RATE_TIERS, utc
from valora.quote import build_quote, read_data_file

PLAN: dict[str, Any] = {
    "code": "pro",
    "currency": "USD",
    "charges": [
        {"key": "base", "model": "flat", "amount": "49", "description": "Platform fee"},
        {
            "key": "api",
            "model": "per_unit",
            "meter": "api_calls",
            "unit_amount": "0.002",
            "free_units": 1000,
            "minimum_amount": "30",
            "description": "API calls",
        },
        {"key": "fonts", "model": "graduated", "meter": "fonts", "tiers": STRIPE_FLAT_RATE_TIERS},
    ],
}


def quote(usage: Any = None, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "plan_data": PLAN,
        "usage_data": {"api_calls": "12000", "fonts": 12} if usage is None else usage,
        "period_start": utc(2026, 4, 1),
        "period_end": utc(2026, 5, 1),
        "active_from": utc(2026, 4, 16),
        "active_until": None,
    }
    args.update(overrides)
    return build_quote(**args)


def test_quote_shape_and_values() -> None:
    result = quote()
    assert result == {
        "currency": "USD",
        "period_start": "2026-04-01T00:00:00Z",
        "period_end": "2026-05-01T00:00:00Z",
        "lines": [
            {
                "charge": "base",
                "kind": "flat",
                "quantity": "0.5",
                "amount": "24.50",
                "amount_minor": 2450,
                "description": "Platform fee: flat 49, prorated 15 of 30 days",
            },
            {
                "charge": "api",
                "kind": "usage",
                "quantity": "12000",
                "amount": "22.00",
                "amount_minor": 2200,
                "description": "API calls: 12,000 units (1,000 free) × 0.002",
            },
            {
                "charge": "api",
                "kind": "minimum",
                "quantity": "1",
                "amount": "8.00",
                "amount_minor": 800,
                "description": "API calls: minimum 30 per period, true-up",
            },
            {
                "charge": "fonts",
                "kind": "usage",
                "quantity": "12",
                "amount": "111.00",
                "amount_minor": 11100,
                "description": "fonts: 12 units, graduated over 3 tier(s)",
            },
        ],
        "subtotal_minor": 16550,
        "total_minor": 16550,
    }
    json.dumps(result)  # JSON-ready: no Decimals or datetimes left


def test_quote_converts_offsets_to_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    result = quote(period_start=datetime(2026, 4, 1, 2, tzinfo=plus_two), active_from=None)
    assert result["period_start"] == "2026-04-01T00:00:00Z"


def test_zero_decimal_currency_amounts() -> None:
    plan = {
        "code": "jp",
        "currency": "JPY",
        "charges": [{"key": "api", "model": "per_unit", "meter": "m", "unit_amount": "0.5"}],
    }
    (line,) = quote({"m": "3"}, plan_data=plan)["lines"]
    assert (line["amount"], line["amount_minor"]) == ("2", 2)


def test_bad_plan() -> None:
    with pytest.raises(InvalidPlan, match="plan 'pro', charge 'base'"):
        quote(plan_data={**PLAN, "charges": [{"key": "base", "model": "flat"}]})


@pytest.mark.parametrize(
    ("usage", "message"),
    [
        ({"api_calls": "-5"}, "meter 'api_calls': quantity -5 is negative"),
        ({"api_calls": "lots"}, "meter 'api_calls': quantity 'lots' is not a finite decimal"),
        ({"fonts": 2.5}, "meter 'fonts': quantity 2.5 is not a finite decimal"),
        ([1, 2], "usage must be an object of meter keys to quantities, not list"),
    ],
)
def test_bad_usage(usage: Any, message: str) -> None:
    with pytest.raises(InvalidUsage, match=message):
        quote(usage)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"period_end": utc(2026, 4, 1)}, "period end .* must be after start"),
        ({"period_start": datetime(2026, 4, 1)}, "period start must be timezone-aware"),
        ({"active_from": datetime(2026, 4, 1)}, "active_from must be timezone-aware"),
        ({"active_until": datetime(2026, 4, 1)}, "active_until must be timezone-aware"),
        (
            {"active_from": utc(2026, 4, 10), "active_until": utc(2026, 4, 10)},
            "active_until 2026-04-10T00:00:00Z must be after active_from 2026-04-10T00:00:00Z",
        ),
    ],
)
def test_bad_times(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        quote(**overrides)


def test_read_data_file_parses_decimals_exactly(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    path.write_text('{"api_calls": 0.1, "seats": 3, "gb": "2.50"}', encoding="utf-8")
    data = read_data_file(path)
    assert data == {"api_calls": Decimal("0.1"), "seats": 3, "gb": "2.50"}
    assert isinstance(data["api_calls"], Decimal)
    assert read_data_file(str(path)) == data


def test_read_data_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"missing\.json: no such file$"):
        read_data_file(tmp_path / "missing.json")
    with pytest.raises(InvalidInput, match=r": cannot read \("):
        read_data_file(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,,}', encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"bad\.json: invalid JSON at line 1 column 9: "):
        read_data_file(bad)
    nan = tmp_path / "nan.json"
    nan.write_text('{"a": NaN}', encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"nan\.json: NaN is not a number Valora accepts$"):
        read_data_file(nan)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(InvalidInput, match=r"latin\.json: not UTF-8 text"):
        read_data_file(latin)
