"""The HTTP surface: health, OpenAPI, metrics, problem+json for every error, keys, ingestion limits."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from confluent_kafka import Consumer
from sqlalchemy import text

from invoicing.operations.keys import revoke_key
from schemas.api import Scope
from streams.ingest import MAX_BATCH
from tests.api.conftest import NOW, ApiWorld
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _event(event_id: str, **extra: object) -> dict[str, object]:
    return {"id": event_id, "type": "api_request", "customer": "a_cus", "time": "2026-02-09T00:00:00Z", **extra}


def test_health_openapi_and_docs_answer_without_a_key(world: ApiWorld) -> None:
    client = world.client(None)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "database": True, "broker": True}
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "swagger" in client.get("/docs").text.lower()


def test_request_metrics_use_the_route_template_and_no_organization(world: ApiWorld) -> None:
    client = world.client(world.a.key)
    assert client.get(f"/v1/invoices/{world.a.invoice_number}").status_code == 200
    assert client.get("/v1/invoices/nope").status_code == 404
    assert client.get("/no/such/route").status_code == 404
    metrics = client.get("/metrics").text
    assert 'valora_api_requests_total{method="GET",route="/v1/invoices/{invoice}",status="200"} 1.0' in metrics
    assert 'valora_api_requests_total{method="GET",route="/v1/invoices/{invoice}",status="404"} 1.0' in metrics
    assert 'valora_api_requests_total{method="GET",route="unmatched",status="404"} 1.0' in metrics
    assert re.search(
        r'valora_api_request_duration_seconds_count\{method="GET",route="/v1/invoices/\{invoice\}"\} 2\.0', metrics
    )
    assert "acme" not in metrics and world.a.invoice_number not in metrics


def test_errors_are_problem_json_with_a_code_and_the_field(world: ApiWorld) -> None:
    client = world.client(world.a.key)
    cases = [
        (client.get("/v1/invoices", params={"limit": 0}), 422, "invalid_parameter", "limit"),
        (client.get("/v1/invoices", params={"cursor": "garbage!"}), 422, "invalid_parameter", "cursor"),
        (client.get("/v1/invoices", params={"status": "bogus"}), 422, "invalid_parameter", "status"),
        (client.post(f"/v1/invoices/{world.a.invoice_id}/credit-notes", json={"reason": "r", "all": True,
                                                                               "amount": "1"}),
         422, "invalid_parameter", "body"),
        (client.post(f"/v1/invoices/{world.a.invoice_id}/credit-notes", json={"reason": "r", "amount": "x"}),
         422, "invalid_parameter", "amount"),
        (client.get("/v1/meters/a_calls/query", params={"from": "2026-01-01T00:00:00", "to": "2026-02-01T00:00:00Z"}),
         422, "invalid_parameter", "from"),
        (client.put("/v1/meters/m1", json={"event_type": "x", "aggregation": "sum"}), 422, "invalid_catalog", None),
        (client.put("/v1/meters/m1", json={"organization": "globex", "event_type": "x", "aggregation": "count"}),
         422, "invalid_parameter", "organization"),
        (client.delete("/v1/invoices"), 405, "method_not_allowed", None),
        (client.get("/v2/nothing"), 404, "not_found", None),
        (client.post(f"/v1/invoices/{world.a.invoice_id}/issue", json={}), 409, "illegal_transition", None),
    ]
    for response, status, code, field in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert {"type", "title", "status", "detail", "code"} <= set(body)
        assert (body["status"], body["code"]) == (status, code), body
        assert body["type"].endswith(code)
        if field is not None:
            assert body.get("field") == field, body


def test_revoked_and_expired_keys_fail_on_the_next_request(world: ApiWorld) -> None:
    secret = world.key(world.a, Scope.INVOICES_READ)
    client = world.client(secret)
    assert client.get("/v1/invoices").status_code == 200
    revoke_key(world.engine, secret.split("_")[1], now=NOW)
    assert client.get("/v1/invoices").status_code == 401
    soon = world.key(world.a, Scope.INVOICES_READ, expires_at=NOW + timedelta(seconds=1))
    assert world.client(soon).get("/v1/invoices").status_code == 200
    world.app.state.valora.clock = lambda: NOW + timedelta(seconds=1)
    assert world.client(soon).get("/v1/invoices").status_code == 401
    # one byte off in the secret part of a live key
    live = world.a.key
    assert world.client(live[:-1] + ("A" if live[-1] != "A" else "B")).get("/v1/invoices").status_code == 401


def test_the_keys_table_holds_no_secret(world: ApiWorld) -> None:
    secrets = [world.a.key, world.b.key, world.key(world.a, Scope.EVENTS_WRITE)]
    with world.engine.connect() as conn:
        dump = " ".join(
            str(row) for row in conn.execute(text("SELECT row_to_json(k)::text, encode(secret_sha256, 'hex') "
                                                 "FROM api_keys k"))
        )
    assert dump.count("vk_") == 0
    for secret in secrets:
        assert secret not in dump and secret.split("_", 2)[2] not in dump


def _consume(world: ApiWorld, n: int) -> list[tuple[bytes, bytes]]:
    consumer = Consumer({"bootstrap.servers": world.app.state.valora.bootstrap, "group.id": world.topic + "check",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([world.topic])
    got: list[tuple[bytes, bytes]] = []

    def more() -> bool:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append((msg.key(), msg.value()))
        return len(got) >= n

    try:
        wait_for(more, timeout_s=30, message="events on the topic")
    finally:
        consumer.close()
    return got


def test_events_are_checked_with_the_workers_decoder_and_keyed_by_the_keys_organization(world: ApiWorld) -> None:
    client = world.client(world.key(world.a, Scope.EVENTS_WRITE))
    single = client.post("/v1/events", json=_event("e1"))
    assert single.status_code == 202 and single.json()["accepted"] == 1
    batch = client.post("/v1/events", json=[
        _event("e2"),
        _event("e3", organization="globex"),
        _event("e4", time="2026-03-01T00:00:00Z"),
        {"id": "e5"},
    ])
    assert batch.status_code == 202
    results = batch.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "rejected"]
    assert [r["code"] for r in results] == [None, "schema", "too_far_in_future", "schema"]
    cloud = {"specversion": "1.0", "id": "c1", "source": "svc", "type": "api_request", "subject": "a_cus",
             "time": "2026-02-09T00:00:00Z", "data": {}}
    headers = {"content-type": "application/cloudevents-batch+json"}
    ce = client.post("/v1/events", content=json.dumps([cloud]), headers=headers)
    assert ce.status_code == 202 and ce.json()["accepted"] == 1
    native_as_ce = client.post("/v1/events", content=json.dumps([_event("e6")]), headers=headers)
    assert native_as_ce.json()["results"][0]["status"] == "rejected"
    records = _consume(world, 3)
    assert {k for k, _ in records} == {b"acme"}
    assert sorted(json.loads(v)["id"] for _, v in records) == ["c1", "e1", "e2"]


def test_ingestion_limits_are_413_and_unknown_media_types_415(world: ApiWorld) -> None:
    client = world.client(world.key(world.a, Scope.EVENTS_WRITE))
    too_many = client.post("/v1/events", json=[_event(f"x{i}") for i in range(MAX_BATCH + 1)])
    assert too_many.status_code == 413 and too_many.json()["code"] == "payload_too_large"
    too_big = client.post("/v1/events", json=_event("big", properties={"pad": "x" * 1_100_000}))
    assert too_big.status_code == 413
    plain = client.post("/v1/events", content=b"{}", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and plain.json()["code"] == "unsupported_media_type"
    not_json = client.post("/v1/events", content=b"[{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["field"] == "body"


def test_every_body_has_the_size_limit(world: ApiWorld) -> None:
    client = world.client(world.a.key)
    big = b'{"name": "' + b"x" * 1_100_000 + b'"}'
    for response in (
        client.put("/v1/customers/a_cus", content=big, headers={"content-type": "application/json"}),
        client.post(f"/v1/invoices/{world.a.invoice_id}/credit-notes", content=iter([big[:600_000], big[600_000:]])),
    ):
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large", response.text
