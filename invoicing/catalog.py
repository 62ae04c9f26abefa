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
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.bulk import upsert_rows
from invoicing.catalog_cursors import end_moved, regrid_unbilled, retime_cursors
from invoicing.catalog_guards import (
    InvalidCatalog,
    assign_prefixes,
    check_billed_history,
    check_document,
    check_unique_ids,
    read_bounded,
    stored_subscriptions,
)
from invoicing.lifecycle import SubscriptionAction, SubscriptionStatus, advance_subscription
from rating.periods import period_containing
from schemas import catalog as c
from schemas.errors import InvalidPlan
from schemas.plans import BillingTiming, Plan, load_plan

_LIVE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
_SUBSCRIPTION_KEYS = frozenset({"organization_id", "id"})
# Written once, when the subscription is created; the close and the lifecycle commands own them after that.
_SUBSCRIPTION_INSERT_ONLY = frozenset(
    {
        "next_period_start",
        "next_close_at",
        "close_attempts",
        "status",
        "cancel_at_period_end",
        "trial_end",
        "opening_pending",
    }
)


@dataclass(frozen=True)
class ParsedCatalog:
    organizations: tuple[c.Organization, ...]
    meters: tuple[c.Meter, ...]
    plans: tuple[tuple[str, Plan], ...]
    customers: tuple[c.Customer, ...]
    subscriptions: tuple[c.Subscription, ...]

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in c.SECTION_NAMES}


class _ExactLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader without its float resolver: 0.002 stays the string "0.002", parsed
    exactly later, instead of becoming a binary float; null, ints and booleans resolve as usual.
    libyaml's parser when PyYAML has it (5x faster on a catalog of 100,000 subscriptions)."""


_ExactLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """YAML with the safe loader and exact decimals (see `_ExactLoader`); shared with `valora quote`.

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    return yaml.load(text, Loader=_ExactLoader)  # a SafeLoader subclass: builds no objects


def read_catalog_file(path: Path) -> Any:
    """Read JSON (numbers as exact Decimals) or YAML, by extension, within the limits of
    `invoicing.catalog_guards` (size, depth, NUL bytes, YAML alias expansion)."""
    return read_bounded(path, lambda raw: json.loads(raw, parse_float=Decimal), _ExactLoader)


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
    check_document(data)
    cat = ParsedCatalog(
        organizations=tuple(_validate_entries("organizations", data.get("organizations", []), c.Organization)),
        meters=tuple(_validate_entries("meters", data.get("meters", []), c.Meter)),
        plans=tuple(_validate_plans(data.get("plans", []))),
        customers=tuple(_validate_entries("customers", data.get("customers", []), c.Customer)),
        subscriptions=tuple(_validate_entries("subscriptions", data.get("subscriptions", []), c.Subscription)),
    )
    check_unique_ids("organizations", ((o.id,) for o in cat.organizations))
    check_unique_ids("meters", ((x.organization, x.key) for x in cat.meters))
    check_unique_ids("plans", ((org, p.code) for org, p in cat.plans))
    check_unique_ids("customers", ((x.organization, x.id) for x in cat.customers))
    check_unique_ids("subscriptions", ((x.organization, x.id) for x in cat.subscriptions))
    return cat


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


def _upsert(session: Session, table: type[m.Base], rows: Sequence[dict[str, Any]], keys: list[str]) -> None:
    upsert_rows(session, table.__table__, rows, keys)  # type: ignore[arg-type]


def _check_plan_moves(cat: ParsedCatalog, session: Session) -> None:
    """Refuse to re-plan a subscription whose history is billed or already has plan changes.

    The catalog's `plan` is the plan a subscription starts on; changing it after an invoice
    would re-price the past. Before any invoice it may still be corrected.
    """
    wanted = {(s.organization, s.id): s.plan for s in cat.subscriptions}
    if not wanted:
        return
    keys = sorted(wanted)
    stored = session.execute(
        text(
            "SELECT s.organization_id, s.id, s.plan_code FROM subscriptions s JOIN unnest(CAST(:o AS text[]), "
            "CAST(:s AS text[])) AS u(o, s) ON s.organization_id = u.o AND s.id = u.s"
        ),
        {"o": [k[0] for k in keys], "s": [k[1] for k in keys]},
    ).all()
    moved = sorted((org, sid, code) for org, sid, code in stored if wanted[(org, sid)] != code)
    for org, sid, code in moved:
        invoiced = session.scalar(
            select(m.Invoice.id).where(m.Invoice.organization_id == org, m.Invoice.subscription_id == sid).limit(1)
        )
        changed = session.scalar(
            select(m.PlanChange.id)
            .where(m.PlanChange.organization_id == org, m.PlanChange.subscription_id == sid)
            .limit(1)
        )
        if invoiced is not None or changed is not None:
            raise InvalidCatalog(
                f"subscription {org}/{sid!r}: it started on plan {code!r} and is already billed or re-planned; "
                f"change plans with `valora subscriptions change-plan {org} {sid} --plan {wanted[(org, sid)]}`"
            )


def apply_catalog(engine: Engine, cat: ParsedCatalog, *, now: datetime | None = None) -> dict[str, int]:
    """Upsert every entry by id in one transaction; returns counts per section.

    `now` stamps the history row of each new subscription (default: the database's
    transaction time). A new subscription starts `trialing` when it has a `trial_end`,
    else `active`.
    """
    with Session(engine) as session, session.begin():
        _check_references(cat, session)
        _check_plan_moves(cat, session)
        plans = {(org, p.code): p for org, p in cat.plans}
        stored = _stored_plans(session, set(plans) | {(s.organization, s.plan) for s in cat.subscriptions}, set(plans))
        before = stored_subscriptions(session, cat.subscriptions)
        check_billed_history(session, cat, before, _anchor, stored)
        prefixes = assign_prefixes(session, cat.organizations)
        _upsert(
            session,
            m.Organization,
            [
                {
                    "id": o.id,
                    "name": o.name,
                    "currency": o.currency,
                    "payment_terms_days": o.payment_terms_days,
                    "invoice_prefix": prefixes[o.id],
                    "draft_grace_s": o.draft_grace,
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
                    "allow_negative": x.allow_negative,
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
        plans.update({key: plan for key, plan in stored.items() if key not in plans})
        rows = [_subscription_row(s, plans[(s.organization, s.plan)]) for s in cat.subscriptions]
        _upsert_subscriptions(session, rows, now)
        regrid_unbilled(session, cat.subscriptions, rows, before)
        retime_cursors(session, [s for s in cat.subscriptions if end_moved(s, before)], plans)
    return cat.counts()


def _upsert_subscriptions(session: Session, rows: list[dict[str, Any]], now: datetime | None) -> None:
    """Insert new subscriptions with their first history row; update the catalog's fields of known ones.

    The close cursor and the lifecycle columns are insert-only: after that the close and
    `invoicing.subscriptions` own them, so re-applying a catalog never resets a status,
    a scheduled cancel or the history. `end_at` follows the catalog only while no cancel
    is scheduled and the subscription is live; once a cancel set it, the cancel owns it.
    """
    if not rows:
        return
    live = ", ".join(f"'{s.value}'" for s in _LIVE)
    upsert_rows(
        session,
        m.Subscription.__table__,  # type: ignore[arg-type]
        rows,
        sorted(_SUBSCRIPTION_KEYS),
        insert_only=_SUBSCRIPTION_INSERT_ONLY,
        update_sql={
            "end_at": f"CASE WHEN t.cancel_at_period_end OR t.status NOT IN ({live}) THEN t.end_at "
            "ELSE excluded.end_at END"
        },
    )
    # seq 1 exists for every subscription (migration 0002 wrote it for older ones), so only new ones get a row.
    session.execute(
        text(
            "INSERT INTO subscription_status_history "
            "(organization_id, subscription_id, seq, from_status, to_status, at, reason, actor) "
            "SELECT u.o, u.s, 1, NULL, u.st, COALESCE(CAST(:at AS timestamptz), now()), 'created from catalog', "
            "'catalog' FROM unnest(CAST(:o AS text[]), CAST(:s AS text[]), CAST(:st AS text[])) AS u(o, s, st) "
            "ON CONFLICT (organization_id, subscription_id, seq) DO NOTHING"
        ),
        {
            "o": [r["organization_id"] for r in rows],
            "s": [r["id"] for r in rows],
            "st": [r["status"] for r in rows],
            "at": now,
        },
    )


def _stored_plans(
    session: Session, keys: set[tuple[str, str]], replaced: set[tuple[str, str]]
) -> dict[tuple[str, str], Plan]:
    """The stored plans among `keys`; one that no longer validates is skipped if the catalog `replaced` it."""
    out = {}
    for org, code in sorted(keys):
        row = session.get(m.Plan, (org, code))
        if row is None:
            continue
        try:
            out[(org, code)] = load_plan(row.spec)
        except InvalidPlan as exc:
            if (org, code) not in replaced:
                raise InvalidCatalog(
                    f"stored plan {org}/{code!r} no longer validates ({exc}); include a corrected plan in the catalog"
                ) from exc
    return out


def _anchor(s: c.Subscription) -> datetime:
    """The billing anchor a subscription gets: the given one, else the trial's end, else its start."""
    return s.billing_anchor or s.trial_end or s.start


def _subscription_row(s: c.Subscription, plan: Plan) -> dict[str, Any]:
    """A subscription row; a new one's close cursor starts at the period containing its start.

    A trial subscription without an explicit anchor is anchored on its trial's end, so no
    period straddles the trial's end (see `invoicing.close` on trial usage). The first
    period is due at its end, or at the subscription's end if that comes first. A plan that
    bills flat charges in advance first owes an opening invoice, due when the first paid
    time starts (the start, or the trial's end), if that is inside the first period.
    """
    anchor = _anchor(s)
    first = period_containing(anchor, plan.interval, s.start, plan.interval_count)
    paid_start = s.start if s.trial_end is None else max(s.start, s.trial_end)
    opening = (
        plan.billing_timing is BillingTiming.IN_ADVANCE
        and paid_start < first.end
        and (s.end is None or paid_start < s.end)
    )
    trial = s.trial_end is not None and s.trial_end > s.start
    state = advance_subscription(None, SubscriptionAction.START_TRIAL if trial else SubscriptionAction.START)
    return {
        "organization_id": s.organization,
        "id": s.id,
        "customer_id": s.customer,
        "plan_code": s.plan,
        "start_at": s.start,
        "billing_anchor": anchor,
        "end_at": s.end,
        "next_period_start": first.start,
        "next_close_at": paid_start if opening else (first.end if s.end is None else min(first.end, s.end)),
        "opening_pending": opening,
        "close_attempts": 0,
        "status": state.status.value,
        "cancel_at_period_end": state.cancel_at_period_end,
        "trial_end": s.trial_end,
    }
