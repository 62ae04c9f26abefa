"""`valora catalog apply`: upsert a catalog file by id, all or nothing.

Each entry is validated on its own so an error can name it; cross references
(meters and plans to organizations, charges to meters, subscriptions to customers
and plans) are checked against the file plus what the database already holds,
all before the single transaction that writes everything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from invoicing import models as m
from rating.periods import period_containing
from schemas import catalog as c
from schemas.errors import InvalidInput, InvalidPlan
from schemas.plans import Plan, load_plan


class InvalidCatalog(InvalidInput):
    code = "invalid_catalog"


@dataclass(frozen=True)
class ParsedCatalog:
    organizations: tuple[c.Organization, ...]
    meters: tuple[c.Meter, ...]
    plans: tuple[tuple[str, Plan], ...]
    customers: tuple[c.Customer, ...]
    subscriptions: tuple[c.Subscription, ...]

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in c.SECTION_NAMES}


def read_catalog_file(path: Path) -> Any:
    """Read JSON (numbers as exact Decimals) or YAML, by extension."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidCatalog(f"cannot read catalog {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            # YAML floats would be binary; the base loader keeps every scalar a string.
            return yaml.load(text, Loader=yaml.BaseLoader)
        return json.loads(text, parse_float=Decimal)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise InvalidCatalog(f"catalog {path} is not valid {path.suffix[1:] or 'JSON'}: {first}") from exc


def _pydantic_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def _validate_entries(section: str, raw_entries: Any, model: type[BaseModel]) -> list[Any]:
    if not isinstance(raw_entries, list):
        raise InvalidCatalog(f"catalog section {section!r} must be a list")
    out = []
    for index, raw in enumerate(raw_entries):
        label = f"{c.entry_label(section, raw)} ({section}[{index}])"
        try:
            out.append(model.model_validate(raw))
        except ValidationError as exc:
            raise InvalidCatalog(f"{label}: {_pydantic_message(exc)}") from exc
    return out


def _validate_plans(raw_entries: Any) -> list[tuple[str, Plan]]:
    if not isinstance(raw_entries, list):
        raise InvalidCatalog("catalog section 'plans' must be a list")
    out = []
    for index, raw in enumerate(raw_entries):
        label = f"{c.entry_label('plans', raw)} (plans[{index}])"
        if not isinstance(raw, dict) or not isinstance(raw.get("organization"), str):
            raise InvalidCatalog(f"{label}: organization is required")
        body = {k: v for k, v in raw.items() if k != "organization"}
        try:
            out.append((raw["organization"], load_plan(body)))
        except InvalidPlan as exc:
            raise InvalidCatalog(f"{exc} (plans[{index}], organization {raw['organization']!r})") from exc
    return out


def parse_catalog(data: Any) -> ParsedCatalog:
    """Validate a decoded catalog document entry by entry.

    Raises:
        InvalidCatalog: names the first bad entry and what is wrong with it.
    """
    if not isinstance(data, Mapping):
        raise InvalidCatalog("catalog must be an object with sections " + ", ".join(c.SECTION_NAMES))
    unknown = sorted(set(data) - set(c.SECTION_NAMES))
    if unknown:
        raise InvalidCatalog(f"unknown catalog section {unknown[0]!r}")
    return ParsedCatalog(
        organizations=tuple(_validate_entries("organizations", data.get("organizations", []), c.Organization)),
        meters=tuple(_validate_entries("meters", data.get("meters", []), c.Meter)),
        plans=tuple(_validate_plans(data.get("plans", []))),
        customers=tuple(_validate_entries("customers", data.get("customers", []), c.Customer)),
        subscriptions=tuple(_validate_entries("subscriptions", data.get("subscriptions", []), c.Subscription)),
    )


@dataclass(frozen=True)
class _Known:
    """What the file plus the database define, for checking references."""

    currency: dict[str, str]
    meters: set[tuple[str, str]]
    customers: set[tuple[str, str]]
    plans: set[tuple[str, str]]


def _known(cat: ParsedCatalog, session: Session) -> _Known:
    currency = {org: cur for org, cur in session.execute(select(m.Organization.id, m.Organization.currency))}
    currency.update({o.id: o.currency for o in cat.organizations})
    return _Known(
        currency=currency,
        meters=set(session.execute(select(m.Meter.organization_id, m.Meter.key)))
        | {(x.organization, x.key) for x in cat.meters},
        customers=set(session.execute(select(m.Customer.organization_id, m.Customer.id)))
        | {(x.organization, x.id) for x in cat.customers},
        plans=set(session.execute(select(m.Plan.organization_id, m.Plan.code)))
        | {(org, p.code) for org, p in cat.plans},
    )


def _check_references(cat: ParsedCatalog, session: Session) -> None:
    known = _known(cat, session)
    currency, meters, customers, plans = known.currency, known.meters, known.customers, known.plans

    def need_org(label: str, org: str) -> None:
        if org not in currency:
            raise InvalidCatalog(f"{label}: unknown organization {org!r}")

    for meter in cat.meters:
        need_org(f"meter {meter.organization}/{meter.key!r}", meter.organization)
    for org, plan in cat.plans:
        label = f"plan {org}/{plan.code!r}"
        need_org(label, org)
        if plan.currency != currency[org]:
            raise InvalidCatalog(f"{label}: currency {plan.currency} differs from the organization's {currency[org]}")
        for charge in plan.charges:
            if charge.meter is not None and (org, charge.meter) not in meters:
                raise InvalidCatalog(f"{label}, charge {charge.key!r}: unknown meter {charge.meter!r}")
    for cust in cat.customers:
        need_org(f"customer {cust.organization}/{cust.id!r}", cust.organization)
    for sub in cat.subscriptions:
        label = f"subscription {sub.organization}/{sub.id!r}"
        need_org(label, sub.organization)
        if (sub.organization, sub.customer) not in customers:
            raise InvalidCatalog(f"{label}: unknown customer {sub.customer!r}")
        if (sub.organization, sub.plan) not in plans:
            raise InvalidCatalog(f"{label}: unknown plan {sub.plan!r}")


def _upsert(session: Session, table: type[m.Base], rows: Sequence[dict[str, Any]], keys: list[str],
            insert_only: frozenset[str] = frozenset()) -> None:
    if not rows:
        return
    stmt = insert(table).values(list(rows))
    updates = {col: stmt.excluded[col] for col in rows[0] if col not in keys and col not in insert_only}
    session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates))


def _default_prefix(org_id: str) -> str:
    letters = "".join(ch for ch in org_id.upper() if ch.isalnum())
    return letters[:12] or "INV"


def apply_catalog(engine: Engine, cat: ParsedCatalog) -> dict[str, int]:
    """Upsert every entry by id in one transaction; returns counts per section."""
    with Session(engine) as session, session.begin():
        _check_references(cat, session)
        _upsert(
            session,
            m.Organization,
            [
                {
                    "id": o.id,
                    "name": o.name,
                    "currency": o.currency,
                    "payment_terms_days": o.payment_terms_days,
                    "invoice_prefix": o.invoice_prefix or _default_prefix(o.id),
                }
                for o in cat.organizations
            ],
            ["id"],
        )
        _upsert(
            session,
            m.Meter,
            [
                {
                    "organization_id": x.organization,
                    "key": x.key,
                    "event_type": x.event_type,
                    "aggregation": x.aggregation.value,
                    "value_property": x.value_property,
                    "filters": None if x.filters is None else json.loads(json.dumps(x.filters, default=str)),
                }
                for x in cat.meters
            ],
            ["organization_id", "key"],
        )
        _upsert(
            session,
            m.Plan,
            [
                {"organization_id": org, "code": p.code, "currency": p.currency, "spec": p.model_dump(mode="json")}
                for org, p in cat.plans
            ],
            ["organization_id", "code"],
        )
        _upsert(
            session,
            m.Customer,
            [{"organization_id": x.organization, "id": x.id, "name": x.name} for x in cat.customers],
            ["organization_id", "id"],
        )
        plans = {(org, p.code): p for org, p in cat.plans}
        plans.update(_stored_plans(session, {(s.organization, s.plan) for s in cat.subscriptions} - set(plans)))
        _upsert(
            session,
            m.Subscription,
            [_subscription_row(s, plans[(s.organization, s.plan)]) for s in cat.subscriptions],
            ["organization_id", "id"],
            insert_only=frozenset({"next_period_start", "next_close_at", "close_attempts"}),
        )
    return cat.counts()


def _stored_plans(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Plan]:
    out = {}
    for org, code in keys:
        row = session.get(m.Plan, (org, code))
        if row is not None:
            out[(org, code)] = load_plan(row.spec)
    return out


def _subscription_row(s: c.Subscription, plan: Plan) -> dict[str, Any]:
    """A subscription row; a new one's close cursor starts at the period containing its start."""
    anchor = s.billing_anchor or s.start
    first = period_containing(anchor, plan.interval, s.start, plan.interval_count)
    return {
        "organization_id": s.organization,
        "id": s.id,
        "customer_id": s.customer,
        "plan_code": s.plan,
        "start_at": s.start,
        "billing_anchor": anchor,
        "end_at": s.end,
        "next_period_start": first.start,
        "next_close_at": first.end,
        "close_attempts": 0,
    }
