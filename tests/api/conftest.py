"""Fixtures for the HTTP API: two organizations with billed history, their keys, a client per key.

`acme` (A) and `globex` (B) use different ids for everything (customers, plans, meters,
subscriptions), so a request with A's key for one of B's ids must find nothing. Each has a
closed January invoice; B's has a credit note, and B has a dead letter and a stored event.
The app runs in-process (Starlette's TestClient) with an injected clock; `POST /v1/events`
produces to a topic of the test's own on the session's broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from invoicing import models as m
from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.credit_notes import CreditAll, credit_invoice
from invoicing.db import make_engine, upgrade
from invoicing.operations.keys import create_key
from schemas.api import Scope
from streams.ingest import EventProducer
from streams.worker import ensure_topics
from valora.api.app import create_app
from valora.api.deps import ApiContext

NOW = datetime(2026, 2, 10, tzinfo=UTC)
CLOSE_AT = datetime(2026, 2, 1, 1, tzinfo=UTC)
ALL_SCOPES = [s.value for s in Scope]


def org_catalog(org: str, tag: str, currency: str = "USD") -> dict[str, Any]:
    """One organization whose every id carries `tag` (so two organizations share no id)."""
    return {
        "organizations": [{"id": org, "name": f"{org.title()} Inc", "currency": currency}],
        "meters": [
            {"organization": org, "key": f"{tag}_calls", "event_type": "api_request", "aggregation": "count"},
            {"organization": org, "key": f"{tag}_tokens", "event_type": "llm_call", "aggregation": "sum",
             "value_property": "tokens"},
        ],
        "plans": [
            {"organization": org, "code": f"{tag}_plan", "currency": currency, "interval": "month", "charges": [
                {"key": "base", "model": "flat", "amount": "29.00"},
                {"key": "api", "meter": f"{tag}_calls", "model": "per_unit", "unit_amount": "0.002"},
                {"key": "tok", "meter": f"{tag}_tokens", "model": "per_unit", "unit_amount": "0.0001"},
            ]},
            {"organization": org, "code": f"{tag}_plan2", "currency": currency, "interval": "month", "charges": [
                {"key": "base", "model": "flat", "amount": "49.00"},
            ]},
        ],
        "customers": [{"organization": org, "id": f"{tag}_cus", "name": f"{org} customer"}],
        "subscriptions": [
            {"organization": org, "id": f"{tag}_sub", "customer": f"{tag}_cus", "plan": f"{tag}_plan",
             "start": "2026-01-01T00:00:00Z"},
        ],
    }


@dataclass
class Tenant:
    org: str
    tag: str
    key: str  # a secret with every scope
    invoice_id: str
    invoice_number: str
    credit_note: str | None

    @property
    def ids(self) -> dict[str, str]:
        """Path parameter values naming this tenant's resources."""
        return {
            "subscription": f"{self.tag}_sub",
            "meter": f"{self.tag}_calls",
            "plan": f"{self.tag}_plan",
            "customer": f"{self.tag}_cus",
            "invoice": self.invoice_id,
            "credit_note": self.credit_note or "none",
        }


@dataclass
class ApiWorld:
    engine: Engine
    a: Tenant
    b: Tenant
    app: Any
    topic: str

    def client(self, secret: str | None) -> TestClient:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return TestClient(self.app, headers=headers, raise_server_exceptions=False)

    def key(self, tenant: Tenant, *scopes: Scope, expires_at: datetime | None = None) -> str:
        return create_key(
            self.engine, tenant.org, [s.value for s in scopes], now=NOW, expires_at=expires_at
        ).secret


def _tenant(engine: Engine, org: str, tag: str, invoice_id: str, credit: bool) -> Tenant:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        number = session.get_one(m.Invoice, invoice_id).number
    note = None
    if credit:
        note = credit_invoice(
            engine, invoice_id, CreditAll(), now=CLOSE_AT + timedelta(hours=1), actor="test", reason="goodwill"
        )["number"]
    key = create_key(engine, org, ALL_SCOPES, now=NOW - timedelta(days=1)).secret
    return Tenant(org, tag, key, invoice_id, str(number), note)


def build_world(database_url: str, broker: str, topic_prefix: str) -> tuple[ApiWorld, EventProducer]:
    engine = make_engine(database_url, pool_size=10)
    upgrade(engine)
    for org, tag in (("acme", "a"), ("globex", "b")):
        apply_catalog(engine, parse_catalog(org_catalog(org, tag)))
    with engine.begin() as conn:
        conn.execute(insert(m.Event).values(
            organization_id="globex", dedup_key="evb1", customer_id="b_cus", event_type="api_request",
            event_time=datetime(2026, 2, 2, tzinfo=UTC), properties={}, source_topic="t", source_partition=0,
            source_offset=0,
        ))
        conn.execute(insert(m.DeadLetter).values(
            topic="t", partition=0, offset=1, organization_id="globex", code="unknown_customer", detail="x",
            key=b"globex", value=b"{}",
        ))
    summary = close_due(engine, as_of=CLOSE_AT, grace=timedelta(hours=1), clock=lambda: CLOSE_AT)
    by_org = {}
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        for inv_id in summary.invoice_ids:
            by_org[session.get_one(m.Invoice, inv_id).organization_id] = inv_id
    a = _tenant(engine, "acme", "a", by_org["acme"], credit=False)
    b = _tenant(engine, "globex", "b", by_org["globex"], credit=True)
    topic = f"{topic_prefix}usage.events"
    ensure_topics(broker, {topic: 3})
    producer = EventProducer(broker, topic)
    ctx = ApiContext(
        engine=engine,
        producer=producer,
        clock=lambda: NOW,
        future_tolerance=timedelta(minutes=5),
        bootstrap=broker,
        ready=lambda: {"database": True, "broker": True},
    )
    return ApiWorld(engine, a, b, create_app(ctx), topic), producer


@pytest.fixture
def world(database_url: str, broker: str, topic_prefix: str) -> Iterator[ApiWorld]:
    built, producer = build_world(database_url, broker, topic_prefix)
    try:
        yield built
    finally:
        producer.close()
        built.engine.dispose()
