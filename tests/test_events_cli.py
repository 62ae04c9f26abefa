"""`valora events publish` and `valora dead-letters list` against the real broker and Postgres."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = pytest.mark.integration


def _cloud_event(event_id: str, subject: str, time: str) -> bytes:
    return json.dumps(
        {"specversion": "1.0", "id": event_id, "source": "/api", "type": "api_request", "subject": subject,
         "time": time, "data": {"path": "/v1"}}
    ).encode()


def _keys_on_topic(broker: str, topic: str, expected: int) -> list[bytes | None]:
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"{topic}.reader", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    keys: list[bytes | None] = []
    try:
        for _ in range(200):
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                keys.append(msg.key())
            if len(keys) >= expected:
                break
    finally:
        consumer.close()
    return keys


def test_publish_checks_every_line_and_the_worker_counts_what_was_published(
    broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    lines = [
        native_event("e1", "cus_1", "2026-01-20T10:00:00Z"),  # 1: keyed by --org
        json.dumps({"id": "e2", "type": "api_request", "customer": "cus_1", "time": "2026-01-20T11:00:00Z",
                    "organization": "acme"}).encode(),  # 2: names its organization
        b"",  # 3: blank, skipped
        b"{not json",  # 4: invalid_json
        native_event("e3", "cus_1", "2026-01-20T12:00:00"),  # 5: no timezone
        _cloud_event("c1", "cus_1", "2026-01-21T00:00:00Z"),  # 6: CloudEvents, keyed by --org
        native_event("e4", "nobody", "2026-01-22T00:00:00Z"),  # 7: fine here; the worker dead-letters it
        json.dumps({"id": "e5", "type": "api_request", "customer": "cus_1", "time": "2026-01-20T10:00:00Z",
                    "organization": "globex"}).encode(),  # 8: its own field wins over --org
        native_event("e6", "cus_1", "2999-01-01T00:00:00Z"),  # 9: too far in the future
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    proc = run_cli(["events", "publish", str(path), "--org", "acme", "--json"], env, check=False)
    assert proc.returncode == 1, proc  # some lines were rejected
    assert "Traceback" not in proc.stderr
    rejected = [line.split(": ", 2) for line in proc.stderr.splitlines()]
    assert [(where, code) for where, code, _ in rejected] == [
        ("line 4", "invalid_json"),
        ("line 5", "schema"),
        ("line 9", "too_far_in_future"),
    ]
    assert rejected[1][2] == "field 'time' must carry a timezone offset (RFC 3339)"  # the worker's own words
    counts = json.loads(proc.stdout)
    assert (counts["lines"], counts["published"], counts["rejected"], counts["blank"]) == (9, 5, 3, 1)
    keys = _keys_on_topic(broker, env["VALORA_EVENTS_TOPIC"], 5)
    assert sorted(k or b"" for k in keys) == [b"acme", b"acme", b"acme", b"acme", b"globex"]

    # The same file from stdin, checked only: nothing produced, the same verdicts.
    dry = subprocess.run(
        [sys.executable, "-m", "valora.cli", "events", "publish", "-", "--org", "acme", "--dry-run"],
        input=path.read_bytes(), env=env, capture_output=True, timeout=120, check=False,
    )
    assert dry.returncode == 1 and len(dry.stderr.decode().splitlines()) == 3
    assert dry.stdout.decode().startswith("would publish 5 event(s)")

    worker = run_cli(["worker", "--until-idle"], env)
    assert "accepted 3" in worker.stdout and "dead_lettered 2" in worker.stdout, worker.stdout

    listed = json.loads(run_cli(["dead-letters", "list", "--org", "acme", "--json"], env).stdout)
    assert [(d["code"], d["topic"], json.loads(d["value"])["id"]) for d in listed] == [
        ("unknown_customer", env["VALORA_EVENTS_TOPIC"], "e4")
    ]
    assert isinstance(listed[0]["partition"], int) and isinstance(listed[0]["offset"], int)
    other = run_cli(["dead-letters", "list", "--org", "globex"], env).stdout.splitlines()
    assert len(other) == 2 and " unknown_organization " in other[0] and other[1] == "1 dead letter(s)"
    assert other[0].startswith(f"{env['VALORA_EVENTS_TOPIC']}/")
    none = run_cli(["dead-letters", "list", "--org", "acme", "--code", "schema"], env).stdout
    assert none.strip() == "0 dead letter(s)"


def test_publish_of_a_missing_file_is_one_line(topic_prefix: str) -> None:
    env = cli_env("127.0.0.1:1", None, topic_prefix)
    proc = run_cli(["events", "publish", "/missing/events.jsonl", "--dry-run"], env, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "valora: error: cannot read /missing/events.jsonl: No such file or directory"
    )
