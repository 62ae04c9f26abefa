"""End to end through the API alone: post events over HTTP, the worker counts them, the usage the
API shows is what the close invoices; then the invoice and credit-note flow; meter queries; keys CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from invoicing.close import close_due
from schemas.api import Scope
from tests.api.conftest import ApiWorld
from tests.helpers import cli_env, run_cli

pytestmark = pytest.mark.integration

MARCH_CLOSE = datetime(2026, 3, 1, 1, tzinfo=UTC)


def _post_usage(world: ApiWorld) -> Decimal:
    """50 calls and 20 token events (one sent twice) over HTTP; returns the tokens sum."""
    client = world.client(world.key(world.a, Scope.EVENTS_WRITE))
    calls = [{"id": f"c{i}", "type": "api_request", "customer": "a_cus", "time": f"2026-02-0{1 + i % 9}T10:00:00Z"}
             for i in range(50)]
    tokens = [{"id": f"t{i}", "type": "llm_call", "customer": "a_cus", "time": "2026-02-05T12:00:00Z",
               "properties": {"tokens": f"{i}.25"}} for i in range(20)]
    for batch in (calls, tokens, tokens[:1]):
        response = client.post("/v1/events", json=batch)
        assert response.status_code == 202 and response.json()["rejected"] == 0, response.text
    return sum((Decimal(f"{i}.25") for i in range(20)), Decimal(0))


def test_usage_over_http_is_what_the_close_invoices(world: ApiWorld, database_url: str, broker: str,
                                                    topic_prefix: str) -> None:
    tokens = _post_usage(world)
    run_cli(["worker", "--until-idle"], cli_env(broker, database_url, topic_prefix), timeout_s=240)
    client = world.client(world.key(world.a, Scope.USAGE_READ, Scope.INVOICES_READ))
    usage = client.get("/v1/subscriptions/a_sub/usage").json()
    assert usage["meters"] == {"a_calls": "50", "a_tokens": format(tokens.normalize(), "f")}
    assert usage["period_start"] == "2026-02-01T00:00:00Z"
    preview = client.get("/v1/subscriptions/a_sub/invoice-preview").json()
    assert preview["total_minor"] == usage["total_minor"] == 2900 + 10 + round(tokens * Decimal("0.01"))

    cli = json.loads(run_cli(["usage", "--org", "acme", "--at", "2026-02-10T00:00:00Z", "--json"],
                             cli_env(broker, database_url, topic_prefix)).stdout)
    assert cli[0]["lines"] == usage["lines"] and cli[0]["total_minor"] == usage["total_minor"]

    close_due(world.engine, as_of=MARCH_CLOSE, grace=timedelta(hours=1), clock=lambda: MARCH_CLOSE)
    page = client.get("/v1/invoices", params={"subscription": "a_sub", "limit": 1}).json()
    assert len(page["data"]) == 1 and page["next_cursor"]
    feb = client.get("/v1/invoices", params={"subscription": "a_sub", "cursor": page["next_cursor"]}).json()["data"]
    assert [i["period_start"] for i in feb] == ["2026-02-01T00:00:00Z"]
    invoice = feb[0]
    assert invoice["total_minor"] == preview["total_minor"]
    billed = sorted((ln["charge"], ln["quantity"], ln["amount_minor"]) for ln in invoice["lines"])
    assert billed == sorted((ln["charge"], ln["quantity"], ln["amount_minor"]) for ln in preview["lines"])


def test_invoice_and_credit_note_flow_through_the_api(world: ApiWorld) -> None:
    client = world.client(world.a.key)
    number = world.a.invoice_number
    invoice = client.get(f"/v1/invoices/{number}").json()
    assert invoice["status"] == "issued" and invoice["id"] == world.a.invoice_id
    page = client.get(f"/v1/invoices/{number}", headers={"accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html") and number in page.text

    note = client.post(f"/v1/invoices/{number}/credit-notes", json={"reason": "outage", "amount": "1.00"})
    assert note.status_code == 201, note.text
    body = note.json()
    assert body["total_minor"] == 100 and body["actor"].startswith("api-key:")
    assert client.get(f"/v1/credit-notes/{body['number']}").json() == body
    assert body["number"] in client.get(f"/v1/credit-notes/{body['id']}", headers={"accept": "text/html"}).text
    over = client.post(f"/v1/invoices/{number}/credit-notes", json={"reason": "x", "amount": "100000"})
    assert over.status_code == 422 and over.json()["code"] == "over_credit"

    assert client.post(f"/v1/invoices/{number}/void", json={"reason": "oops"}).json()["code"] == (
        "invoice_has_credit_notes")
    paid = client.post(f"/v1/invoices/{number}/mark-paid", json={})
    assert paid.status_code == 200 and paid.json()["status"] == "paid"
    assert paid.json()["amount_due_minor"] == invoice["total_minor"] - 100
    assert client.post(f"/v1/invoices/{number}/mark-paid").json()["code"] == "illegal_transition"
    listed = client.get("/v1/invoices", params={"status": "paid"}).json()["data"]
    assert [i["number"] for i in listed] == [number]


def test_catalog_and_subscription_changes_through_the_api(world: ApiWorld) -> None:
    client = world.client(world.a.key)
    meter = {"event_type": "storage", "aggregation": "max", "value_property": "gb"}
    first = client.put("/v1/meters/a_storage", json=meter)
    assert first.status_code == 200 and first.json()["aggregation"] == "max"
    assert client.put("/v1/meters/a_storage", json=meter).json() == first.json()  # idempotent
    plan = {"currency": "USD", "interval": "month", "charges": [
        {"key": "base", "model": "flat", "amount": 19.99},
        {"key": "gb", "meter": "a_storage", "model": "per_unit", "unit_amount": "0.1"}]}
    assert client.put("/v1/plans/a_plan3", json=plan).json()["spec"]["charges"][0]["amount"] == "19.99"
    assert client.put("/v1/customers/a_cus2", json={"name": "Second"}).json() == {"id": "a_cus2", "name": "Second"}
    sub = client.put("/v1/subscriptions/a_sub2", json={"customer": "a_cus2", "plan": "a_plan3",
                                                       "start": "2026-02-01T00:00:00Z"})
    assert sub.status_code == 200 and sub.json()["status"] == "active"
    replan = client.put("/v1/subscriptions/a_sub", json={"customer": "a_cus", "plan": "a_plan2",
                                                         "start": "2026-01-01T00:00:00Z"})
    assert replan.status_code == 422 and "change-plan" in replan.json()["detail"]
    moved = client.post("/v1/subscriptions/a_sub/change-plan", json={"plan": "a_plan2"})
    assert moved.status_code == 200 and moved.json()["plan_changes"][0]["to"] == "a_plan2"
    canceled = client.post("/v1/subscriptions/a_sub2/cancel", json={"at_period_end": True})
    assert canceled.json()["cancel_at_period_end"] is True
    assert client.post("/v1/subscriptions/a_sub2/revoke-cancel", json={}).json()["cancel_at_period_end"] is False
    assert [s["id"] for s in client.get("/v1/subscriptions").json()["data"]] == ["a_sub", "a_sub2"]
    first_page = client.get("/v1/subscriptions", params={"limit": 1}).json()
    assert [s["id"] for s in first_page["data"]] == ["a_sub"] and first_page["next_cursor"]
    rest = client.get("/v1/subscriptions", params={"limit": 1, "cursor": first_page["next_cursor"]}).json()
    assert [s["id"] for s in rest["data"]] == ["a_sub2"] and rest["next_cursor"] is None
    meters = client.get("/v1/meters", params={"limit": 2}).json()
    more = client.get("/v1/meters", params={"cursor": meters["next_cursor"]}).json()["data"]
    assert [x["key"] for x in meters["data"] + more] == ["a_calls", "a_storage", "a_tokens"]
    assert client.get("/v1/subscriptions", params={"customer": "a_cus2"}).json()["data"][0]["id"] == "a_sub2"


def test_meter_query_aggregates_stored_events_per_window(world: ApiWorld) -> None:
    from sqlalchemy import insert

    from invoicing import models as m

    rows = [("e1", "2026-02-01T10:00:00Z", {"tokens": "1.5", "model": "a"}),
            ("e2", "2026-02-01T11:30:00Z", {"tokens": 2, "model": "b"}),
            ("e3", "2026-02-02T00:00:00Z", {"tokens": "0.25", "model": "a"})]
    with world.engine.begin() as conn:
        for i, (eid, when, props) in enumerate(rows):
            conn.execute(insert(m.Event).values(
                organization_id="acme", dedup_key=eid, customer_id="a_cus", event_type="llm_call",
                event_time=datetime.fromisoformat(when), properties=props, source_topic="t", source_partition=0,
                source_offset=i))
    client = world.client(world.key(world.a, Scope.USAGE_READ))
    span = {"from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}
    total = client.get("/v1/meters/a_tokens/query", params=span).json()
    assert [r["value"] for r in total["data"]] == ["3.75"]
    daily = client.get("/v1/meters/a_tokens/query", params={**span, "window": "day"}).json()["data"]
    assert [(r["window_start"], r["window_end"], r["value"]) for r in daily] == [
        ("2026-02-01T00:00:00Z", "2026-02-02T00:00:00Z", "3.5"),
        ("2026-02-02T00:00:00Z", "2026-02-03T00:00:00Z", "0.25"),
    ]
    grouped = client.get("/v1/meters/a_tokens/query", params={**span, "group_by": "model", "customer": "a_cus"})
    assert [(r["group"], r["customer"], r["value"]) for r in grouped.json()["data"]] == [
        ({"model": "a"}, "a_cus", "1.75"), ({"model": "b"}, "a_cus", "2")]
    monthly = client.get("/v1/meters/a_calls/query", params={**span, "window": "month"}).json()["data"]
    assert monthly == []
    assert client.get("/v1/meters/b_tokens/query", params=span).status_code == 404


def test_keys_cli_prints_the_secret_once_and_lists_without_it(world: ApiWorld, database_url: str) -> None:
    env = cli_env(None, database_url, "keys.")
    created = run_cli(["keys", "create", "--org", "acme", "--scope", "usage:read", "--scope", "events:write",
                       "--name", "ci"], env)
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("vk_") and len(secret) > 60
    as_json = json.loads(run_cli(["keys", "create", "--org", "acme", "--scope", "invoices:read", "--json"],
                                 env).stdout.strip().splitlines()[-1])
    assert as_json["secret"].startswith("vk_") and as_json["scopes"] == ["invoices:read"]
    listed = run_cli(["keys", "list", "--org", "acme", "--json"], env).stdout
    assert secret not in listed and as_json["secret"] not in listed and "secret" not in listed
    key_id = secret.split("_")[1]
    assert key_id in listed
    assert world.client(secret).get("/v1/subscriptions/a_sub/usage").status_code == 200
    run_cli(["keys", "revoke", key_id], env)
    assert world.client(secret).get("/v1/subscriptions/a_sub/usage").status_code == 401
    bad = run_cli(["keys", "create", "--org", "nobody", "--scope", "usage:read"], env, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
