"""Usage operations, scoped by organization: running totals, the invoice preview, meter queries.

`subscription_usage` is `invoicing.usage.running_totals` for one subscription: the same code
and numbers as `valora usage --json`, which the close will invoice (until more usage comes).
`invoice_preview` is that period as an invoice: its lines and total as the close would write
them now, without late-usage adjustments from earlier periods (they are billed on whichever
invoice is written next).

`meter_query` aggregates the stored, accepted events (`events`) over time windows with the
meter's own definition (event type, filters, value property, aggregation), OpenMeter-style.
It reads raw events, so it is exact, and it does not depend on subscriptions or periods.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.queries import decimal_text
from invoicing.subscriptions import SubscriptionNotFound
from invoicing.usage import running_totals
from schemas.api import InvoicePreview, MeterQueryResult, MeterQueryRow, SubscriptionUsage, Window
from schemas.errors import InvalidParameter, ResourceNotFound, ValoraError

MAX_RANGE = timedelta(days=400)
MAX_ROWS = 10_000
MAX_GROUP_BY = 5
_NUMERIC = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
_STEP = {Window.HOUR: "1 hour", Window.DAY: "1 day", Window.MONTH: "1 month"}


class NoCurrentPeriod(ValoraError):
    """The subscription has no billing period at this time (it has not started, or it has ended)."""

    code = "no_current_period"


def subscription_usage(engine: Engine, organization: str, subscription: str, *, at: datetime) -> SubscriptionUsage:
    """The period containing `at` so far. Raises SubscriptionNotFound, NoCurrentPeriod."""
    totals = running_totals(engine, organization, at=at, subscription=subscription)
    if not totals:
        with Session(engine) as session:
            if session.get(m.Subscription, (organization, subscription)) is None:
                raise SubscriptionNotFound(f"no subscription {subscription!r}")
        raise NoCurrentPeriod(f"subscription {subscription!r} has no billing period at {at.isoformat()}")
    return SubscriptionUsage.model_validate(totals[0])


def invoice_preview(engine: Engine, organization: str, subscription: str, *, at: datetime) -> InvoicePreview:
    usage = subscription_usage(engine, organization, subscription, at=at)
    return InvoicePreview(
        organization=usage.organization,
        customer=usage.customer,
        subscription=usage.subscription,
        currency=usage.currency,
        period_start=usage.period_start,
        period_end=usage.period_end,
        lines=usage.lines,
        subtotal_minor=usage.subtotal_minor,
        total_minor=usage.total_minor,
    )


@dataclass(frozen=True)
class MeterQuery:
    start: datetime
    end: datetime
    window: Window | None = None
    customer: str | None = None
    group_by: tuple[str, ...] = ()


def _check(q: MeterQuery) -> None:
    if q.start.tzinfo is None or q.end.tzinfo is None:
        raise InvalidParameter("from" if q.start.tzinfo is None else "to", "needs a timezone (e.g. a trailing Z)")
    if q.end <= q.start:
        raise InvalidParameter("to", "must be after from")
    if q.end - q.start > MAX_RANGE:
        raise InvalidParameter("to", f"a query spans at most {MAX_RANGE.days} days")
    if len(q.group_by) > MAX_GROUP_BY:
        raise InvalidParameter("group_by", f"at most {MAX_GROUP_BY} properties")
    for prop in q.group_by:
        if not prop or len(prop) > 200 or any(not step for step in prop.split(".")):
            raise InvalidParameter("group_by", f"{prop!r} is not a property path")


def _value_sql(aggregation: str) -> str:
    num = f"CASE WHEN (properties #>> :vpath) ~ '{_NUMERIC}' THEN (properties #>> :vpath)::numeric END"
    return {
        "count": "count(*)::numeric",
        "sum": f"coalesce(sum({num}), 0)",
        "max": f"max({num})",
        "unique_count": "count(DISTINCT properties #>> :vpath)::numeric",
        "latest": f"(array_agg({num} ORDER BY event_time DESC, dedup_key DESC))[1]",
    }[aggregation]


def meter_query(engine: Engine, organization: str, meter_key: str, q: MeterQuery) -> MeterQueryResult:
    """Aggregate the meter's stored events over [start, end), per window and group.

    Raises:
        ResourceNotFound: no such meter in the organization.
        InvalidParameter: a bad range, window or group, or more than MAX_ROWS rows.
    """
    _check(q)
    with Session(engine) as session:
        meter = session.get(m.Meter, (organization, meter_key))
        if meter is None:
            raise ResourceNotFound(f"no meter {meter_key!r}")
        params: dict[str, Any] = {
            "org": organization,
            "etype": meter.event_type,
            "start": q.start,
            "end": q.end,
            "vpath": (meter.value_property or "").split("."),
        }
        where = ["organization_id = :org", "event_type = :etype", "event_time >= :start", "event_time < :end"]
        if q.customer is not None:
            where.append("customer_id = :customer")
            params["customer"] = q.customer
        for i, (prop, allowed) in enumerate(sorted((meter.filters or {}).items())):
            where.append(f"(properties #>> :fpath{i}) = ANY(:fvals{i})")
            params[f"fpath{i}"] = prop.split(".")
            params[f"fvals{i}"] = [v if isinstance(v, str) else str(v) for v in allowed]
        keys = ["customer_id"] if q.customer is not None else []
        for i, prop in enumerate(q.group_by):
            keys.append(f"properties #>> :gpath{i}")
            params[f"gpath{i}"] = prop.split(".")
        bucket = (
            f"(date_trunc('{q.window.value}', event_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
            if q.window is not None
            else "CAST(:start AS timestamptz)"
        )
        select_keys = "".join(f", {k} AS k{i}" for i, k in enumerate(keys))
        group = ", ".join(["1", *[str(i + 2) for i in range(len(keys))]])
        sql = (
            f"SELECT {bucket} AS w{select_keys}, {_value_sql(meter.aggregation)} AS v FROM events "
            f"WHERE {' AND '.join(where)} GROUP BY {group} ORDER BY {group} LIMIT {MAX_ROWS + 1}"
        )
        rows = session.execute(text(sql), params).all()
    if len(rows) > MAX_ROWS:
        raise InvalidParameter("window", f"more than {MAX_ROWS} rows: narrow the range or use a larger window")
    return MeterQueryResult(
        meter=meter_key,
        aggregation=meter.aggregation,
        window=q.window,
        data=[_row(r, q) for r in rows],
    )


def _row(row: Any, q: MeterQuery) -> MeterQueryRow:
    start: datetime = row[0].astimezone(UTC)
    offset = 1
    customer = None
    if q.customer is not None:
        customer, offset = row[1], 2
    group = {prop: row[offset + i] for i, prop in enumerate(q.group_by)}
    end = q.end if q.window is None else _window_end(start, q.window)
    value: Decimal | None = row[-1]
    return MeterQueryRow(
        window_start=start,
        window_end=end,
        customer=customer,
        group=group,
        value=decimal_text(value if value is not None else Decimal(0)),
    )


def _window_end(start: datetime, window: Window) -> datetime:
    if window is Window.HOUR:
        return start + timedelta(hours=1)
    if window is Window.DAY:
        return start + timedelta(days=1)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)
