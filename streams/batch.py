"""Planning one batch: records in, rows out (pure; the sink does the I/O).

For every record the plan says exactly one of: accepted candidate (an event row
plus its meter contributions), in-batch duplicate, or dead letter. Whether a
candidate is new or a duplicate of an earlier batch is settled by the unique key
in Postgres, inside the sink's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from schemas.catalog import Aggregation
from streams.decode import (
    MAX_ABS_VALUE,
    MAX_DECIMAL_PLACES,
    MAX_FIELD_CHARS,
    Reason,
    Rejection,
    UsageEvent,
    decode_record,
    read_path,
)
from streams.snapshot import CatalogSnapshot, MeterView, Routing


class Record(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Contribution(NamedTuple):
    """What one event adds to one (subscription, meter, period) total."""

    organization: str
    subscription: str
    meter: str
    aggregation: Aggregation
    period_start: datetime
    period_end: datetime
    segment_start: datetime  # the period's start, or the plan change that began this plan segment
    dedup_key: str
    value: Decimal
    time: datetime
    event_id: str
    unique_value: str | None = None


class DeadLetter(NamedTuple):
    partition: int
    offset: int
    organization: str | None
    code: Reason
    detail: str
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class BatchPlan:
    events: list[tuple[UsageEvent, Record]] = field(default_factory=list)
    contributions: list[Contribution] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    in_batch_duplicates: int = 0
    # Re-sends in this batch whose payload differs from the first one: (the re-sent event, its record).
    conflicts: list[tuple[UsageEvent, Record]] = field(default_factory=list)
    # `events` as COPY rows, when streams.sink.render_events has rendered them ahead of the transaction.
    event_rows: bytes | None = None

    def reject(self, event: UsageEvent, rec: Record, code: Reason, detail: str) -> None:
        """Turn a planned event into a dead letter (it failed after planning, e.g. when written out)."""
        ident = (event.organization, event.dedup_key)
        self.events = [(e, r) for e, r in self.events if r is not rec]
        self.contributions = [c for c in self.contributions if (c.organization, c.dedup_key) != ident]
        self.dead_letters.append(
            DeadLetter(rec.partition, rec.offset, event.organization, code, detail, rec.key, rec.value)
        )


def _numeric(value: Any) -> Decimal | None:
    """A JSON number or numeric string as an exact Decimal; None when it is not a number.

    Raises:
        Rejection: `value_out_of_range` past `MAX_ABS_VALUE` or `MAX_DECIMAL_PLACES`, so that
            every accepted value can be totalled exactly and billed in bigint minor units.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
            return Decimal(value)
        raise Rejection(Reason.VALUE_OUT_OF_RANGE, f"value is beyond ±{MAX_ABS_VALUE:.0e}")
    if isinstance(value, str):
        if len(value) > 64:  # longer than any number in range could be written
            raise Rejection(Reason.VALUE_OUT_OF_RANGE, f"value {value[:20]!r}… is longer than 64 characters")
        try:
            value = Decimal(value)
        except InvalidOperation:
            return None
    if not isinstance(value, Decimal) or value.is_nan():
        return None
    exponent = value.as_tuple().exponent
    if value.is_infinite() or not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
        raise Rejection(Reason.VALUE_OUT_OF_RANGE, f"value {value} is beyond ±{MAX_ABS_VALUE:.0e}")
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        raise Rejection(Reason.VALUE_OUT_OF_RANGE, f"value {value} has more than {MAX_DECIMAL_PLACES} decimal places")
    return value


def _matches(meter: MeterView, properties: dict[str, Any]) -> bool:
    for prop, allowed in meter.filters.items():
        got = read_path(properties, tuple(prop.split(".")))
        if got is None or (got if isinstance(got, str) else str(got)) not in allowed:
            return False
    return True


_COUNT, _UNIQUE = Aggregation.COUNT, Aggregation.UNIQUE_COUNT
_ONE = Decimal(1)


_DETAIL_MAX = 500  # characters of a dead letter's detail (it may quote the offending value)
_ROUTINGS_MAX = 100_000  # cached routings per snapshot; past it the cache starts over


def _routing(snapshot: CatalogSnapshot, org: str, customer: str, event_type: str, when: datetime) -> Routing:
    """Where an event of this organization, customer and type at `when` counts, and until when that holds.

    Raises:
        Rejection: the customer is unknown or has no subscription active at `when`.
    """
    subs = snapshot.subscriptions_by_customer.get((org, customer))
    if subs is None:
        raise Rejection(Reason.UNKNOWN_CUSTOMER, f"customer {customer!r} is not in the catalog")
    active = [s for s in subs if s.start <= when and (s.end is None or when < s.end)]
    if not active:
        raise Rejection(
            Reason.NO_ACTIVE_SUBSCRIPTION, f"customer {customer!r} has no subscription active at {when.isoformat()}"
        )
    # It holds while no subscription starts or ends and every active one stays in its period and plan segment.
    edges = [e for s in subs for e in (s.start, s.end) if e is not None]
    routed = [s.route_at(when) for s in active]
    routes = [route for route, _ in routed]
    valid_from = max([e for e in edges if e <= when] + [route[4] for route in routes])
    valid_until = min([e for e in edges if e > when] + [until for _, until in routed])
    routing = Routing(
        valid_from,
        valid_until,
        tuple(
            (meter, tuple((sub, start, end, segment) for sub, keys, start, end, segment in routes if meter.key in keys))
            for meter in snapshot.meters_by_type.get((org, event_type), ())
        ),
    )
    if len(snapshot.routings) >= _ROUTINGS_MAX:
        snapshot.routings.clear()
    snapshot.routings[(org, customer, event_type)] = routing
    return routing


def _contributions(event: UsageEvent, snapshot: CatalogSnapshot) -> list[Contribution]:
    """Meter contributions of one event, or a Rejection when it cannot be counted."""
    org, when = event.organization, event.time
    routing = snapshot.routings.get((org, event.customer, event.type))
    if routing is None or not routing.valid_from <= when < routing.valid_until:
        routing = _routing(snapshot, org, event.customer, event.type, when)
    out: list[Contribution] = []
    key, props, event_id = event.dedup_key, event.properties, event.id
    values: dict[tuple[tuple[str, ...], bool], tuple[Decimal, str | None]] = {}  # meters sharing a property
    for meter, targets in routing.meters:
        if meter.filters and not _matches(meter, props):
            continue
        agg = meter.aggregation
        value, unique = _ONE, None
        if agg is not _COUNT:
            slot = (meter.value_path, agg is _UNIQUE)
            if slot not in values:
                values[slot] = _meter_value(meter, props)
            value, unique = values[slot]
        mkey = meter.key
        for sub, start, end, segment in targets:
            out.append(Contribution(org, sub, mkey, agg, start, end, segment, key, value, when, event_id, unique))
    return out


def _meter_value(meter: MeterView, properties: dict[str, Any]) -> tuple[Decimal, str | None]:
    """The (numeric value, distinct value) an event gives a non-count meter, or a Rejection."""
    raw = read_path(properties, meter.value_path)
    if meter.aggregation is _UNIQUE:
        if raw is None or isinstance(raw, (dict, list)):
            raise Rejection(
                Reason.SCHEMA,
                f"meter {meter.key!r}: property {'.'.join(meter.value_path)!r} is missing or not a scalar",
            )
        distinct = raw if isinstance(raw, str) else str(raw)
        if len(distinct) > MAX_FIELD_CHARS:
            raise Rejection(Reason.TOO_LARGE, f"meter {meter.key!r}: a distinct value is limited to {MAX_FIELD_CHARS}")
        return _ONE, distinct
    number = _numeric(raw)
    if number is None:
        raise Rejection(
            Reason.VALUE_NOT_NUMERIC,
            f"meter {meter.key!r}: property {'.'.join(meter.value_path)!r} is {raw!r}, not a number",
        )
    if number < 0 and not meter.allow_negative:
        raise Rejection(Reason.NEGATIVE_VALUE, f"meter {meter.key!r} does not allow negative values ({number})")
    return number, None


def plan_batch(
    records: Iterable[Record], snapshot: CatalogSnapshot, *, now: datetime, future_tolerance: timedelta
) -> BatchPlan:
    """Decode, route and dedup (within the batch) a sequence of records.

    Whatever goes wrong with one record, a Rejection or any other exception, makes that
    record a dead letter and nothing else: the rest of the batch is planned as usual.
    """
    plan = BatchPlan()
    seen: dict[tuple[str, str], UsageEvent] = {}
    for rec in records:
        org: str | None = None
        try:
            event = decode_record(rec.key, rec.value, now=now, future_tolerance=future_tolerance)
            org = event.organization
            if org not in snapshot.organizations:
                raise Rejection(Reason.UNKNOWN_ORGANIZATION, f"organization {org!r} is not in the catalog")
            ident = (org, event.dedup_key)
            first = seen.get(ident)
            if first is not None:
                plan.in_batch_duplicates += 1
                if first[3:] != event[3:]:  # customer, type, time or properties differ
                    plan.conflicts.append((event, rec))
                continue
            contributions = _contributions(event, snapshot)
        except Rejection as rej:
            detail = rej.detail if len(rej.detail) <= _DETAIL_MAX else rej.detail[:_DETAIL_MAX] + "…"
            plan.dead_letters.append(DeadLetter(rec.partition, rec.offset, org, rej.code, detail, rec.key, rec.value))
            continue
        except Exception as exc:  # one record's failure must never stop the others
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
            plan.dead_letters.append(
                DeadLetter(rec.partition, rec.offset, org, Reason.UNPROCESSABLE, detail, rec.key, rec.value)
            )
            continue
        seen[ident] = event
        plan.events.append((event, rec))
        plan.contributions.extend(contributions)
    return plan
