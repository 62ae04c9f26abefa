"""The usage-event wire contract on `usage.events`.

Two formats share the topic (key = organization id, UTF-8):

* native:  {"id", "type", "customer", "time", "properties", "organization"?}
* CloudEvents 1.0 structured JSON: {"specversion": "1.0", "id", "source", "type",
  "subject" (= customer), "time", "data" (= properties), ...}

These are msgspec Structs rather than pydantic models, on purpose: they are decoded
on the hot path (~1 µs per event instead of ~10), and msgspec's `float_hook` lets every
number inside the free-form `properties` arrive as an exact `Decimal`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

SCHEMA_VERSION = 1


class NativeEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Valora's own event shape."""

    id: str
    type: str
    customer: str
    time: datetime
    properties: dict[str, Any] = {}
    organization: str | None = None
    schema_version: int = SCHEMA_VERSION


class CloudEvent(msgspec.Struct, frozen=True):
    """CloudEvents 1.0 structured mode; extension attributes are allowed by the spec."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: datetime
    data: dict[str, Any] = {}
    datacontenttype: str | None = None


class TotalLine(msgspec.Struct, frozen=True):
    charge: str
    kind: str
    quantity: str  # exact decimal, as a string
    amount_minor: int
    description: str


class UsageTotal(msgspec.Struct, frozen=True):
    """A running total on `usage.totals` (compacted; key = "org/subscription/period_start").

    The same JSON `valora usage --json` prints: quantities so far per meter and the
    amounts the rating engine gives them, as the period's invoice would show now.
    """

    organization: str
    subscription: str
    customer: str
    plan: str
    currency: str
    period_start: datetime
    period_end: datetime
    meters: dict[str, str]  # meter key -> exact decimal quantity, as a string
    lines: list[TotalLine]
    subtotal_minor: int
    total_minor: int
    schema_version: int = SCHEMA_VERSION


NATIVE_DECODER = msgspec.json.Decoder(NativeEvent, float_hook=Decimal)
CLOUD_DECODER = msgspec.json.Decoder(CloudEvent, float_hook=Decimal)


def json_schemas() -> dict[str, Any]:
    """JSON Schemas of the wire payloads, for the golden files under schemas/json/."""
    return {
        name: msgspec.json.schema(cls)
        for name, cls in (("native_event", NativeEvent), ("cloud_event", CloudEvent), ("usage_total", UsageTotal))
    }
