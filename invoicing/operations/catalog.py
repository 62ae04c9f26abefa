"""Catalog and subscription operations, scoped by organization.

A `put_*` is `catalog apply` of a one-entry catalog (`invoicing.catalog.parse_catalog` then
`apply_catalog`): the same validation, the same reference checks and history guards (a
subscription already billed or re-planned keeps the plan it started on), and the same
idempotent upsert by id. The organization is the caller's; a body naming another one, or an
id differing from the path, is refused.

Subscription moves call `invoicing.subscriptions` and `invoicing.plan_changes`, which take
the organization already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing import subscriptions as subs
from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.operations.invoices import DEFAULT_LIMIT, check_limit, decode_cursor, encode_cursor
from invoicing.plan_changes import change_plan
from invoicing.subscriptions import SubscriptionNotFound
from schemas.api import (
    CancelRequest,
    ChangePlanRequest,
    CustomerList,
    CustomerOut,
    MeterList,
    MeterOut,
    PlanList,
    PlanOut,
    RevokeCancelRequest,
    SubscriptionList,
    SubscriptionOut,
)
from schemas.errors import InvalidParameter, ResourceNotFound

# section -> (the id field of an entry, whether the entry names its organization)
_SECTIONS = {"meters": "key", "plans": "code", "customers": "id", "subscriptions": "id"}


def _entry(organization: str, section: str, ident: str, body: Any) -> dict[str, Any]:
    """The catalog entry a PUT body stands for. Raises InvalidParameter for a foreign org or id."""
    if not isinstance(body, Mapping):
        raise InvalidParameter("body", "must be a JSON object")
    id_field = _SECTIONS[section]
    if body.get("organization", organization) != organization:
        raise InvalidParameter("organization", "must be the organization of the API key (or left out)")
    if body.get(id_field, ident) != ident:
        raise InvalidParameter(id_field, f"differs from the {id_field} in the path ({ident!r})")
    return {**body, "organization": organization, id_field: ident}


def _apply_one(engine: Engine, organization: str, section: str, ident: str, body: Any) -> None:
    apply_catalog(engine, parse_catalog({section: [_entry(organization, section, ident, body)]}))


def _meter(row: m.Meter) -> MeterOut:
    return MeterOut(
        key=row.key,
        event_type=row.event_type,
        aggregation=row.aggregation,
        value_property=row.value_property,
        filters=None if row.filters is None else {k: list(v) for k, v in row.filters.items()},
    )


@dataclass(frozen=True)
class Page:
    """Which page of a list: at most `limit` entries after the one `cursor` names (ordered by id)."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def _paged(session: Session, query: Any, key: Any, page: Page) -> tuple[list[Any], str | None]:
    """Rows of `query` ordered by `key` (a unique column), one page of them, and the next page's cursor."""
    check_limit(page.limit)
    if page.cursor is not None:
        (after,) = decode_cursor(page.cursor, 1)
        query = query.where(key > str(after))
    rows = list(session.scalars(query.order_by(key).limit(page.limit + 1)))
    more, rows = len(rows) > page.limit, rows[: page.limit]
    return rows, (encode_cursor([getattr(rows[-1], key.key)]) if more else None)


def list_meters(engine: Engine, organization: str, page: Page) -> MeterList:
    with Session(engine) as session:
        query = select(m.Meter).where(m.Meter.organization_id == organization)
        rows, nxt = _paged(session, query, m.Meter.key, page)
        return MeterList(data=[_meter(r) for r in rows], next_cursor=nxt)


def get_meter(engine: Engine, organization: str, key: str) -> MeterOut:
    with Session(engine) as session:
        row = session.get(m.Meter, (organization, key))
        if row is None:
            raise ResourceNotFound(f"no meter {key!r}")
        return _meter(row)


def put_meter(engine: Engine, organization: str, key: str, body: Any) -> MeterOut:
    _apply_one(engine, organization, "meters", key, body)
    return get_meter(engine, organization, key)


def list_plans(engine: Engine, organization: str, page: Page) -> PlanList:
    with Session(engine) as session:
        query = select(m.Plan).where(m.Plan.organization_id == organization)
        rows, nxt = _paged(session, query, m.Plan.code, page)
        return PlanList(data=[PlanOut(code=r.code, currency=r.currency, spec=r.spec) for r in rows], next_cursor=nxt)


def get_plan(engine: Engine, organization: str, code: str) -> PlanOut:
    with Session(engine) as session:
        row = session.get(m.Plan, (organization, code))
        if row is None:
            raise ResourceNotFound(f"no plan {code!r}")
        return PlanOut(code=row.code, currency=row.currency, spec=row.spec)


def put_plan(engine: Engine, organization: str, code: str, body: Any) -> PlanOut:
    _apply_one(engine, organization, "plans", code, body)
    return get_plan(engine, organization, code)


def list_customers(engine: Engine, organization: str, page: Page) -> CustomerList:
    with Session(engine) as session:
        query = select(m.Customer).where(m.Customer.organization_id == organization)
        rows, nxt = _paged(session, query, m.Customer.id, page)
        return CustomerList(data=[CustomerOut(id=r.id, name=r.name) for r in rows], next_cursor=nxt)


def get_customer(engine: Engine, organization: str, customer_id: str) -> CustomerOut:
    with Session(engine) as session:
        row = session.get(m.Customer, (organization, customer_id))
        if row is None:
            raise ResourceNotFound(f"no customer {customer_id!r}")
        return CustomerOut(id=row.id, name=row.name)


def put_customer(engine: Engine, organization: str, customer_id: str, body: Any) -> CustomerOut:
    _apply_one(engine, organization, "customers", customer_id, body)
    return get_customer(engine, organization, customer_id)


def list_subscriptions(
    engine: Engine, organization: str, page: Page, *, customer: str | None = None
) -> SubscriptionList:
    with Session(engine) as session:
        query = select(m.Subscription).where(m.Subscription.organization_id == organization)
        if customer is not None:
            query = query.where(m.Subscription.customer_id == customer)
        rows, nxt = _paged(session, query, m.Subscription.id, page)
        ids = [r.id for r in rows]
    return SubscriptionList(data=[get_subscription(engine, organization, sid) for sid in ids], next_cursor=nxt)


def get_subscription(engine: Engine, organization: str, sub_id: str) -> SubscriptionOut:
    return SubscriptionOut.model_validate(subs.get_subscription(engine, organization, sub_id))


def put_subscription(engine: Engine, organization: str, sub_id: str, body: Any, *, now: datetime) -> SubscriptionOut:
    apply_catalog(
        engine, parse_catalog({"subscriptions": [_entry(organization, "subscriptions", sub_id, body)]}), now=now
    )
    return get_subscription(engine, organization, sub_id)


def cancel(
    engine: Engine, organization: str, sub_id: str, request: CancelRequest, *, now: datetime, actor: str
) -> SubscriptionOut:
    command = subs.schedule_cancel if request.at_period_end else subs.cancel_now
    return SubscriptionOut.model_validate(
        command(engine, organization, sub_id, now=now, actor=actor, reason=request.reason or "requested over the API")
    )


def revoke_cancel(
    engine: Engine, organization: str, sub_id: str, request: RevokeCancelRequest, *, now: datetime, actor: str
) -> SubscriptionOut:
    return SubscriptionOut.model_validate(
        subs.revoke_cancel(
            engine, organization, sub_id, now=now, actor=actor, reason=request.reason or "requested over the API"
        )
    )


def move_plan(
    engine: Engine, organization: str, sub_id: str, request: ChangePlanRequest, *, now: datetime, actor: str
) -> SubscriptionOut:
    return SubscriptionOut.model_validate(
        change_plan(
            engine,
            organization,
            sub_id,
            request.plan,
            at=request.at or now,
            now=now,
            actor=actor,
            reason=request.reason or "requested over the API",
        )
    )


__all__ = ["SubscriptionNotFound"]
