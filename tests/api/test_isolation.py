"""Every route in the OpenAPI document: 401 without a key, 403 without its scope, and another
organization's resources are 404 (lists never show them, writes never touch them)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from invoicing import models as m
from schemas.api import Scope
from tests.api.conftest import ApiWorld, Tenant
from valora.api.docs import PUBLIC_PATHS

pytestmark = pytest.mark.integration

BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/events"): [{"id": "e1", "type": "api_request", "customer": "b_cus", "time": "2026-02-09T00:00:00Z"}],
    ("put", "/v1/meters/{meter}"): {"event_type": "x", "aggregation": "count"},
    ("put", "/v1/plans/{plan}"): {
        "currency": "USD", "interval": "month", "charges": [{"key": "base", "model": "flat", "amount": "1.00"}]
    },
    ("put", "/v1/customers/{customer}"): {"name": "renamed"},
    ("put", "/v1/subscriptions/{subscription}"): {
        "customer": "b_cus", "plan": "b_plan", "start": "2026-01-01T00:00:00Z"
    },
    ("post", "/v1/invoices/{invoice}/credit-notes"): {"reason": "r", "all": True},
    ("post", "/v1/subscriptions/{subscription}/change-plan"): {"plan": "b_plan2"},
}
QUERIES = {"/v1/meters/{meter}/query": {"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}}


def _routes(world: ApiWorld) -> list[tuple[str, str, str]]:
    doc = world.client(None).get("/openapi.json").json()
    out = []
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if path in PUBLIC_PATHS:
                continue
            assert "x-required-scope" in operation, f"{method} {path} has no scope: every route needs one"
            out.append((method, path, operation["x-required-scope"]))
    return sorted(out)


def _call(world: ApiWorld, secret: str | None, method: str, path: str, owner: Tenant) -> Any:
    url = path.format(**owner.ids)
    body = BODIES.get((method, path), {} if method in ("post", "put") else None)
    return world.client(secret).request(method.upper(), url, params=QUERIES.get(path), json=body)


def _b_untouched(world: ApiWorld) -> tuple[Any, ...]:
    with Session(world.engine) as s:
        return (
            s.get_one(m.Meter, ("globex", "b_calls")).event_type,
            s.get_one(m.Customer, ("globex", "b_cus")).name,
            s.get_one(m.Plan, ("globex", "b_plan")).spec,
            s.get_one(m.Subscription, ("globex", "b_sub")).status,
            s.get_one(m.Invoice, world.b.invoice_id).status,
        )


def test_every_route_is_covered(world: ApiWorld) -> None:
    routes = _routes(world)
    assert len(routes) == 28  # a new route must be walked here too: update the count on purpose
    assert {scope for _, _, scope in routes} == {s.value for s in Scope}


def test_no_key_is_401_and_a_bad_key_is_401(world: ApiWorld) -> None:
    forged = "vk_" + "0" * 16 + "_" + "A" * 43
    for method, path, _ in _routes(world):
        for secret in (None, forged, "not-a-key"):
            r = _call(world, secret, method, path, world.a)
            assert r.status_code == 401, (method, path, secret, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "unauthenticated"


def test_a_key_without_the_scope_is_403(world: ApiWorld) -> None:
    for method, path, scope in _routes(world):
        others = [s for s in Scope if s.value != scope]
        r = _call(world, world.key(world.a, *others), method, path, world.a)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["code"] == "missing_scope"


def test_another_organizations_resources_are_not_found(world: ApiWorld) -> None:
    before = _b_untouched(world)
    for method, path, _ in _routes(world):
        r = _call(world, world.a.key, method, path, world.b)
        text = r.text
        assert "globex" not in text, (method, path, text)
        if "{" in path and method != "put":
            assert r.status_code == 404, (method, path, text)
            assert r.headers["content-type"].startswith("application/problem+json")
        elif method == "get":  # a list: 200 with none of B's data
            assert r.status_code == 200, (method, path, text)
            assert "b_" not in text, (method, path, text)
        else:  # PUT (creates in A's own organization) and POST /v1/events (keyed by A)
            assert r.status_code in (200, 202, 422), (method, path, text)
    assert _b_untouched(world) == before


def test_the_same_walk_with_own_ids_reaches_the_resources(world: ApiWorld) -> None:
    """The 404s above are about ownership: B's key on B's ids gets past the lookup."""
    for method, path, _ in _routes(world):
        if "{" in path and method == "get":
            r = _call(world, world.b.key, method, path, world.b)
            assert r.status_code in (200, 409), (method, path, r.text)  # 409: no current period
