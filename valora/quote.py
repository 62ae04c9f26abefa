"""`valora quote`: price a plan for one period from JSON files, without a database.

The CLI reads a plan file and a usage file (meter key -> quantity), JSON or YAML, with `read_data_file`
and prints what `build_quote` returns. Everything here is the edge around the pure rating
engine: parse exactly, validate, call `rating.rate_plan`, and shape a JSON-ready dict.
Every failure is a `schemas.errors.InvalidInput` (or subclass) with a one-line message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from rating import Period, format_minor, parse_quantity, rate_plan
from schemas.errors import InvalidInput, InvalidUsage
from schemas.plans import load_plan


def read_data_file(path: str | Path) -> Any:
    """Parse the JSON or YAML (by a .yaml/.yml extension) file at `path`, numbers exact.

    YAML is read like a catalog (`invoicing.catalog.load_yaml`): safe, and `0.002` stays
    the exact decimal string instead of becoming a binary float.

    Raises:
        InvalidInput: the file is missing or unreadable, is not UTF-8, is not valid JSON or
            YAML, or uses NaN/Infinity (not JSON, and not money).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror or exc})") from None
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc}") from None


def _parse_yaml(path: str | Path, text: str) -> Any:
    import yaml

    from invoicing.catalog import load_yaml

    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: invalid YAML: {' '.join(str(exc).split())[:200]}") from None


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not a number Valora accepts")


def build_quote(
    plan_data: Mapping[str, Any],
    usage_data: Mapping[str, Any],
    period_start: datetime,
    period_end: datetime,
    active_from: datetime | None,
    active_until: datetime | None,
) -> dict[str, Any]:
    """Rate `plan_data` over `[period_start, period_end)` with `usage_data`, JSON-ready.

    Returns `{"currency", "period_start", "period_end", "lines", "subtotal_minor",
    "total_minor"}`; each line is `{"charge", "kind", "quantity", "amount", "amount_minor",
    "description"}`. Timestamps are RFC 3339 in UTC with a "Z"; quantity and amount are
    decimal strings, amount being the billed (rounded) amount in major units.

    Raises:
        InvalidPlan: the plan does not validate (names the plan and charge).
        InvalidUsage: usage is not an object, or a quantity is bad (names the meter).
        InvalidInput: a naive timestamp, an empty period, or an empty active window.
    """
    plan = load_plan(plan_data)
    usage = _parse_usage(usage_data)
    try:
        period = Period(period_start, period_end)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    _check_active_window(active_from, active_until)
    invoice = rate_plan(plan, usage, period, active_from=active_from, active_until=active_until)
    return {
        "currency": invoice.currency,
        "period_start": _rfc3339(invoice.period.start),
        "period_end": _rfc3339(invoice.period.end),
        "lines": [
            {
                "charge": line.charge,
                "kind": line.kind.value,
                "quantity": f"{line.quantity:f}",
                "amount": format_minor(line.amount_minor, invoice.currency),
                "amount_minor": line.amount_minor,
                "description": line.description,
            }
            for line in invoice.lines
        ],
        "subtotal_minor": invoice.subtotal_minor,
        "total_minor": invoice.total_minor,
    }


def _parse_usage(usage_data: object) -> dict[str, Decimal]:
    """Meter key -> exact quantity; strings and JSON numbers both accepted."""
    if not isinstance(usage_data, Mapping):
        raise InvalidUsage(f"usage must be an object of meter keys to quantities, not {type(usage_data).__name__}")
    return {str(meter): parse_quantity(str(meter), value) for meter, value in usage_data.items()}


def _check_active_window(active_from: datetime | None, active_until: datetime | None) -> None:
    for name, value in (("active_from", active_from), ("active_until", active_until)):
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise InvalidInput(f"{name} must be timezone-aware, got {value.isoformat()}")
    if active_from is not None and active_until is not None and active_until <= active_from:
        raise InvalidInput(f"active_until {_rfc3339(active_until)} must be after active_from {_rfc3339(active_from)}")


def _rfc3339(value: datetime) -> str:
    """UTC RFC 3339 with a 'Z' suffix, e.g. 2026-01-01T00:00:00Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
