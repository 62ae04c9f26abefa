"""Turning one raw Kafka record into a usage event, or a dead-letter reason.

Pure: the caller passes the clock reading. Both wire formats (native and
CloudEvents 1.0 structured JSON) normalize to `UsageEvent`. A record is a CloudEvent
when its top-level object has a `specversion` member (parsed, never searched for as
text). Input is bounded before it is parsed: at most `MAX_RECORD_BYTES` (`too_large`)
and `MAX_DEPTH` levels of nesting (`too_deep`), so no record can exhaust the stack.
Dedup keys live in two namespaces that cannot meet: a native event's key is its id,
which may not contain a control character; a CloudEvent's is `ce:` + source + U+001F +
id, and its source may not contain one either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import msgspec

from schemas.events import CLOUD_DECODER, NATIVE_DECODER

MAX_RECORD_BYTES = 1_048_576  # a record value larger than this is dead-lettered `too_large`
MAX_DEPTH = 32  # JSON nesting levels of a whole record (the event object is level 1): `too_deep`
MAX_FIELD_CHARS = 256  # ids, customer, type, CloudEvents source, a distinct value (`too_large`): Postgres indexes them
MAX_ABS_VALUE = 10**12  # a meter value's magnitude (`value_out_of_range`)
MAX_DECIMAL_PLACES = 18  # digits after the point a meter value may carry (`value_out_of_range`)


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
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    NEGATIVE_VALUE = "negative_value"
    UNPROCESSABLE = "unprocessable"  # any other failure of one record (its detail names the error)


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


_CONTROL = re.compile(r"[\x00-\x1f]").search
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


class _Probe(msgspec.Struct):
    """Only the member that tells the formats apart; the rest of the object is skipped."""

    specversion: Any = msgspec.UNSET


_PROBE = msgspec.json.Decoder(_Probe)


def nesting_depth(value: bytes) -> int:
    """The deepest nesting of `[`/`{` in a JSON text, brackets inside strings ignored (no recursion)."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", value)):
        if bracket in (b"{", b"["):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _check_bounds(value: bytes) -> None:
    if len(value) > MAX_RECORD_BYTES:
        raise Rejection(Reason.TOO_LARGE, f"record value is {len(value)} bytes, more than {MAX_RECORD_BYTES}")
    # Counting brackets is a fast upper bound on the depth; the exact scan runs only past it.
    if value.count(b"{") + value.count(b"[") > MAX_DEPTH and (depth := nesting_depth(value)) > MAX_DEPTH:
        raise Rejection(Reason.TOO_DEEP, f"record is nested {depth} levels deep, more than {MAX_DEPTH}")


def _is_cloud_event(value: bytes) -> bool:
    """Whether the record's top-level object has a `specversion` member."""
    try:
        return _PROBE.decode(value).specversion is not msgspec.UNSET
    except msgspec.ValidationError:
        return False  # not an object at the top level


def _parse(org: str, value: bytes) -> UsageEvent:
    try:
        ne = NATIVE_DECODER.decode(value)
    except msgspec.ValidationError:
        if not _is_cloud_event(value):
            raise
        ce = CLOUD_DECODER.decode(value)
        if ce.specversion != "1.0":
            raise Rejection(Reason.SCHEMA, f"field 'specversion' must be '1.0', got {ce.specversion!r}") from None
        if _CONTROL(ce.source) or _CONTROL(ce.id):
            raise Rejection(Reason.SCHEMA, "fields 'source' and 'id' must not contain control characters") from None
        return UsageEvent(org, f"ce:{ce.source}\x1f{ce.id}", ce.id, ce.subject, ce.type, ce.time, ce.data)
    if ne.organization is not None and ne.organization != org:
        raise Rejection(
            Reason.SCHEMA, f"field 'organization' ({ne.organization!r}) differs from the record key ({org!r})"
        )
    if _CONTROL(ne.id):
        raise Rejection(Reason.SCHEMA, "field 'id' must not contain control characters")
    return UsageEvent(org, ne.id, ne.id, ne.customer, ne.type, ne.time, ne.properties)


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
    _check_bounds(value)
    try:
        event = _parse(org, value)
    except msgspec.ValidationError as exc:
        detail = _schema_detail(exc)  # msgspec refuses integers past its range (thousands of digits)
        code = Reason.VALUE_OUT_OF_RANGE if detail.startswith("Integer value out of range") else Reason.SCHEMA
        raise Rejection(code, detail) from exc
    except msgspec.DecodeError as exc:
        raise Rejection(Reason.INVALID_JSON, str(exc)) from exc
    if event.time.tzinfo is None:
        raise Rejection(Reason.SCHEMA, "field 'time' must carry a timezone offset (RFC 3339)")
    if not event.id or not event.customer or not event.type:
        raise Rejection(Reason.SCHEMA, "fields 'id', 'customer'/'subject' and 'type' must not be empty")
    if max(len(event.id), len(event.customer), len(event.type), len(event.dedup_key) - len(event.id) - 4) > (
        MAX_FIELD_CHARS
    ):
        raise Rejection(
            Reason.TOO_LARGE, f"fields 'id', 'customer'/'subject', 'type' and 'source' are limited to {MAX_FIELD_CHARS}"
        )
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
