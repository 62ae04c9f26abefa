"""The event decoder and the meter-value check under hostile input (pure, no broker).

Table-driven cases for every documented limit, and Hypothesis fuzzing: arbitrary bytes
and arbitrary JSON documents give an event or a `Rejection` with a reason code, never
any other exception; arbitrary property values give a number or a `Rejection`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rating.timeline import PlanHistory
from schemas.catalog import Aggregation
from schemas.errors import InvalidParameter
from schemas.plans import Interval, Plan
from streams.batch import Record, _meter_value, plan_batch
from streams.decode import (
    MAX_ABS_VALUE,
    MAX_DEPTH,
    MAX_RECORD_BYTES,
    Reason,
    Rejection,
    UsageEvent,
    decode_record,
    nesting_depth,
)
from streams.ingest import split_body
from streams.snapshot import CatalogSnapshot, MeterView, SubscriptionView

NOW = datetime(2026, 1, 20, tzinfo=UTC)
TOLERANCE = timedelta(minutes=5)
WHEN = "2026-01-10T00:00:00Z"


def decode(value: bytes, key: bytes | None = b"acme") -> UsageEvent:
    return decode_record(key, value, now=NOW, future_tolerance=TOLERANCE)


def reason(value: bytes) -> str:
    with pytest.raises(Rejection) as caught:
        decode(value)
    return caught.value.code.value


def native(props: Any, event_id: str = "e1") -> bytes:
    return json.dumps({"id": event_id, "type": "t", "customer": "c", "time": WHEN, "properties": props}).encode()


def cloud(event_id: str = "e1", source: str = "svc", **extra: Any) -> bytes:
    body = {"specversion": "1.0", "id": event_id, "source": source, "type": "t", "subject": "c", "time": WHEN}
    return json.dumps(body | extra).encode()


def nested(depth: int) -> bytes:
    """A native event whose properties are `depth` objects deep (built as text: json.dumps would recurse)."""
    props = '{"a": ' * depth + "1" + "}" * depth
    return native({}).replace(b'"properties": {}', b'"properties": ' + props.encode())


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (nested(1000), "too_deep"),  # properties nested 1,000 deep
        (b"[" * 200_000, "too_deep"),  # deeper than any recursion limit
        (b'{"a":' * 50_000, "too_deep"),  # unterminated, and still refused before parsing
        (native({"blob": "x" * MAX_RECORD_BYTES}), "too_large"),
        (nested(MAX_DEPTH - 1), None),  # the event object + 31 levels of properties: at the limit
        (nested(MAX_DEPTH), "too_deep"),
        (native({"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}), None),  # brackets in a string
        (native({"note": "specversion", "specversion": "1.0"}), None),  # text in properties: still native
        (cloud(), None),
        (cloud(specversion=1), "schema"),
        (cloud(specversion="0.3"), "schema"),
        (cloud(source="a\x1fb"), "schema"),
        (native({}, event_id="ce:svc\x1fe1"), "schema"),  # cannot forge a CloudEvent's dedup key
        (native({}, event_id="a\nb"), "schema"),
        (native({}, event_id="x" * 257), "too_large"),  # ids are indexed: bounded below Postgres' row limit
        (native({}, event_id="x" * 256), None),
        (cloud(source="s" * 257), "too_large"),
        (b'"just a string"', "schema"),
        (b"[1, 2]", "schema"),
        (b'{"id": "x", oops', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"", "invalid_json"),
    ],
)
def test_limits_and_formats(value: bytes, code: str | None) -> None:
    if code is None:
        assert isinstance(decode(value), UsageEvent)
    else:
        assert reason(value) == code


def test_native_and_cloud_dedup_keys_never_meet() -> None:
    ce = decode(cloud("e1", "svc"))
    assert ce.dedup_key == "ce:svc\x1fe1"
    assert decode(native({}, event_id="ce:svc")).dedup_key == "ce:svc"
    assert reason(native({}, event_id=ce.dedup_key)) == "schema"
    # a CloudEvent's source ends at the first U+001F, which a source cannot contain
    assert decode(cloud("b\x1fc".replace("\x1f", "-"), "a")).dedup_key != decode(cloud("c", "a-b")).dedup_key


def test_nesting_depth_ignores_strings_and_escapes() -> None:
    assert nesting_depth(b'{"a": "}}}{{{[", "b": [[1]], "c": "\\"["}') == 3
    assert nesting_depth(b"[" * 5000) == 5000


SUM = MeterView("tokens", "t", Aggregation.SUM, ("v",), {})
SIGNED = MeterView("delta", "t", Aggregation.SUM, ("v",), {}, allow_negative=True)
UNIQUE = MeterView("users", "t", Aggregation.UNIQUE_COUNT, ("v",), {})


@pytest.mark.parametrize(
    ("meter", "raw", "expected"),
    [
        (SUM, "9e999999", "value_out_of_range"),
        (SUM, Decimal("9e999999"), "value_out_of_range"),
        (SUM, Decimal("1e20"), "value_out_of_range"),
        (SUM, 10**20, "value_out_of_range"),
        pytest.param(SUM, 10**5000, "value_out_of_range", id="int-of-5001-digits"),
        (SUM, Decimal("1e-999999"), "value_out_of_range"),
        (SUM, "0E-999999", "value_out_of_range"),
        (SUM, "1" * 100, "value_out_of_range"),
        (SUM, Decimal("Infinity"), "value_out_of_range"),
        (SUM, "NaN", "value_not_numeric"),
        (SUM, True, "value_not_numeric"),
        (SUM, "ten", "value_not_numeric"),
        (SUM, -1, "negative_value"),
        (SUM, "-0.5", "negative_value"),
        (SIGNED, "-0.5", Decimal("-0.5")),
        (SUM, MAX_ABS_VALUE, Decimal(MAX_ABS_VALUE)),
        (SUM, Decimal("0.000000000000000001"), Decimal("1e-18")),
        (SUM, "12.50", Decimal("12.50")),
        (UNIQUE, "u" * 257, "too_large"),
        (UNIQUE, 42, (Decimal(1), "42")),
    ],
)
def test_meter_values_are_bounded(meter: MeterView, raw: Any, expected: Any) -> None:
    if isinstance(expected, tuple):
        assert _meter_value(meter, {"v": raw}) == expected
    elif isinstance(expected, Decimal):
        assert _meter_value(meter, {"v": raw}) == (expected, None)
    else:
        with pytest.raises(Rejection) as caught:
            _meter_value(meter, {"v": raw})
        assert caught.value.code.value == expected


# --- fuzzing -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=10) | json_values,
        "type": st.sampled_from(["t", ""]) | json_values,
        "customer": st.sampled_from(["c"]) | json_values,
        "subject": st.sampled_from(["c"]) | json_values,
        "source": st.text(max_size=5) | json_values,
        "specversion": st.sampled_from(["1.0", "0.3"]) | json_values,
        "time": st.sampled_from([WHEN, "2099-01-01T00:00:00Z", "2026-01-10T00:00:00", "0001-01-01T00:00:00+01:00"])
        | json_values,
        "properties": json_values,
        "data": json_values,
        "organization": st.sampled_from(["acme", "other"]) | json_values,
    },
)


def decodes_or_rejects(key: bytes | None, value: bytes | None) -> None:
    try:
        event = decode_record(key, value, now=NOW, future_tolerance=TOLERANCE)
    except Rejection as rej:
        assert isinstance(rej.code, Reason) and rej.detail
    else:
        assert event.organization and event.dedup_key and event.time.tzinfo is not None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.none() | st.binary(max_size=8), value=st.none() | st.binary(max_size=300))
def test_arbitrary_bytes_give_an_event_or_a_reason(key: bytes | None, value: bytes | None) -> None:
    decodes_or_rejects(key, value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_values | event_like)
def test_arbitrary_json_gives_an_event_or_a_reason(doc: Any) -> None:
    decodes_or_rejects(b"acme", json.dumps(doc).encode())


@settings(max_examples=300, deadline=None)
@given(raw=json_values | st.decimals(allow_nan=True) | st.text(max_size=30))
def test_arbitrary_property_values_give_a_number_or_a_reason(raw: Any) -> None:
    for meter in (SUM, SIGNED, UNIQUE):
        try:
            value, _unique = _meter_value(meter, {"v": raw})
        except Rejection as rej:
            assert isinstance(rej.code, Reason)
        else:
            assert value.is_finite() and abs(value) <= MAX_ABS_VALUE


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.none() | st.binary(max_size=200) | event_like.map(lambda d: json.dumps(d).encode()),
                       max_size=20))
def test_planning_any_batch_accounts_for_every_record(values: list[bytes | None]) -> None:
    snapshot = CatalogSnapshot(frozenset({"acme"}), {}, {})
    records = [Record(0, i, b"acme", v) for i, v in enumerate(values)]
    plan = plan_batch(records, snapshot, now=NOW, future_tolerance=TOLERANCE)
    assert len(plan.events) + plan.in_batch_duplicates + len(plan.dead_letters) == len(records)


def test_a_dead_letter_detail_is_bounded_even_when_it_quotes_the_value() -> None:
    meter = MeterView("tokens", "llm_call", Aggregation.SUM, ("tokens",), {})
    plan = Plan.model_validate({"code": "p", "currency": "USD",
                                "charges": [{"key": "t", "model": "per_unit", "meter": "tokens", "unit_amount": "1"}]})
    sub = SubscriptionView("acme", "sub_1", "c", NOW - timedelta(days=30), None, NOW - timedelta(days=30),
                           Interval.MONTH, 1, PlanHistory(plan))
    snapshot = CatalogSnapshot(frozenset({"acme"}), {("acme", "llm_call"): (meter,)}, {("acme", "c"): (sub,)})
    value = json.dumps({"id": "e", "type": "llm_call", "customer": "c", "time": WHEN,
                        "properties": {"tokens": list(range(100_000))}}).encode()
    plan = plan_batch([Record(0, 0, b"acme", value)], snapshot, now=NOW, future_tolerance=TOLERANCE)
    [dead] = plan.dead_letters
    assert dead.code is Reason.VALUE_NOT_NUMERIC and len(dead.detail) <= 501


def test_http_ingestion_refuses_a_body_nested_past_the_limit_before_parsing_it() -> None:
    for body in (b"[" * 100_000, b'{"a":' * 100_000, b"[" + nested(MAX_DEPTH) + b"]"):
        with pytest.raises(InvalidParameter, match="nested at most"):
            split_body(body)
    assert split_body(b"[" + nested(MAX_DEPTH - 1) + b"]") == [nested(MAX_DEPTH - 1)]
