"""Turning one raw Kafka record into a usage event, or a dead-letter reason.

Pure: the caller passes the clock reading. Both wire formats (native and
CloudEvents 1.0 structured JSON) normalize to `UsageEvent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import msgspec

from schemas.events import CLOUD_DECODER, NATIVE_DECODER


class Reason(StrEnum):
    """Dead-letter reason codes: a stable contract, documented in ARCHITECTURE.md."""

    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    UNKNOWN_ORGANIZATION = "unknown_organization"
    UNKNOWN_CUSTOMER = "unknown_customer"
    NO_ACTIVE_SUBSCRIPTION = "no_active_subscription"
    VALUE_NOT_NUMERIC = "value_not_numeric"
    TOO_FAR_IN_FUTURE = "too_far_in_future"
    REJECTED_BY_STORE = "rejected_by_store"  # valid JSON Postgres cannot store (e.g. \u0000 in a string)


class UsageEvent(NamedTuple):
    organization: str
    dedup_key: str
    id: str
    customer: str
    type: str
    time: datetime
    properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejection(Exception):
    code: Reason
    detail: str


def _schema_detail(exc: msgspec.ValidationError) -> str:
    return str(exc).replace("`", "'")


def decode_record(key: bytes | None, value: bytes | None, *, now: datetime, future_tolerance: timedelta) -> UsageEvent:
    """Decode and check one record.

    Raises:
        Rejection: with the dead-letter reason when the record cannot be used.
    """
    if not key:
        raise Rejection(Reason.SCHEMA, "record key must be the organization id ('key' is empty)")
    try:
        org = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection(Reason.SCHEMA, "record key is not UTF-8") from exc
    if value is None:
        raise Rejection(Reason.INVALID_JSON, "record value is empty")
    is_cloud = b'"specversion"' in value
    try:
        if is_cloud:
            ce = CLOUD_DECODER.decode(value)
            if ce.specversion != "1.0":
                raise Rejection(Reason.SCHEMA, f"field 'specversion' must be '1.0', got {ce.specversion!r}")
            event = UsageEvent(org, f"ce:{ce.source}\x1f{ce.id}", ce.id, ce.subject, ce.type, ce.time, ce.data)
        else:
            ne = NATIVE_DECODER.decode(value)
            if ne.organization is not None and ne.organization != org:
                raise Rejection(
                    Reason.SCHEMA, f"field 'organization' ({ne.organization!r}) differs from the record key ({org!r})"
                )
            event = UsageEvent(org, ne.id, ne.id, ne.customer, ne.type, ne.time, ne.properties)
    except msgspec.ValidationError as exc:
        raise Rejection(Reason.SCHEMA, _schema_detail(exc)) from exc
    except msgspec.DecodeError as exc:
        raise Rejection(Reason.INVALID_JSON, str(exc)) from exc
    if event.time.tzinfo is None:
        raise Rejection(Reason.SCHEMA, "field 'time' must carry a timezone offset (RFC 3339)")
    if not event.id or not event.customer or not event.type:
        raise Rejection(Reason.SCHEMA, "fields 'id', 'customer'/'subject' and 'type' must not be empty")
    if event.time > now + future_tolerance:
        raise Rejection(
            Reason.TOO_FAR_IN_FUTURE,
            f"event time {event.time.isoformat()} is more than {future_tolerance} ahead of the worker's clock",
        )
    return event


def read_path(properties: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Follow a dotted property path; None when any step is missing."""
    if len(path) == 1:
        return properties.get(path[0])
    node: Any = properties
    for step in path:
        if not isinstance(node, dict):
            return None
        node = node.get(step)
    return node
