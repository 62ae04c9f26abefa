"""streams.ingest without a broker: body splitting, the worker's checks, and an unreachable broker."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime, timedelta

import pytest

from schemas.errors import InvalidParameter
from streams.ingest import BrokerUnavailable, EventProducer, PayloadTooLarge, check_events, split_body

NOW = datetime(2026, 2, 10, tzinfo=UTC)


def test_split_keeps_each_element_as_its_raw_bytes() -> None:
    body = b'[{"id": "a", "n": 1.10}, {"id": "b"}]'
    assert split_body(body) == [b'{"id": "a", "n": 1.10}', b'{"id": "b"}']
    assert split_body(b' {"id": "a"} ') == [b'{"id": "a"}']
    with pytest.raises(InvalidParameter):
        split_body(b'{"id": "a"}', expect="array")
    with pytest.raises(InvalidParameter):
        split_body(b"[]")
    with pytest.raises(PayloadTooLarge):
        split_body(json.dumps([{}] * 1001).encode())


def test_checks_are_the_workers_under_the_callers_organization() -> None:
    good = json.dumps({"id": "e", "type": "t", "customer": "c", "time": "2026-02-09T00:00:00Z"}).encode()
    other = json.dumps({"id": "e", "type": "t", "customer": "c", "time": "2026-02-09T00:00:00Z",
                        "organization": "globex"}).encode()
    checked = check_events("acme", [good, other, b"{"], now=NOW, future_tolerance=timedelta(minutes=5))
    assert [c.event_id for c in checked] == ["e", None, None]
    assert [c.rejection.code if c.rejection else None for c in checked] == [None, "schema", "invalid_json"]


def test_an_unreachable_broker_is_broker_unavailable() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    producer = EventProducer(f"127.0.0.1:{port}", "nowhere", delivery_timeout_ms=1500)
    try:
        with pytest.raises(BrokerUnavailable):
            asyncio.run(producer.send("acme", [b"{}"]))
    finally:
        producer.close(timeout_s=1)
