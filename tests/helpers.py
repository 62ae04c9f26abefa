"""Shared helpers for tests that drive the real CLI against the real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

ISSUE_CATALOG: dict[str, Any] = {
    "organizations": [{"id": "acme", "name": "Acme Inc", "currency": "USD"}],
    "meters": [
        {"organization": "acme", "key": "api_calls", "event_type": "api_request", "aggregation": "count"},
        {
            "organization": "acme",
            "key": "tokens",
            "event_type": "llm_call",
            "aggregation": "sum",
            "value_property": "tokens",
        },
    ],
    "plans": [
        {
            "organization": "acme",
            "code": "starter",
            "currency": "USD",
            "interval": "month",
            "charges": [
                {"key": "base", "model": "flat", "amount": "29.00"},
                {"key": "api", "meter": "api_calls", "model": "per_unit", "unit_amount": "0.002", "free_units": "1000"},
            ],
        }
    ],
    "customers": [{"organization": "acme", "id": "cus_1", "name": "Globex"}],
    "subscriptions": [
        {
            "organization": "acme",
            "id": "sub_1",
            "customer": "cus_1",
            "plan": "starter",
            "start": "2026-01-16T00:00:00Z",
            "billing_anchor": "2026-01-01T00:00:00Z",
        }
    ],
}


def cli_env(broker: str | None, database_url: str | None, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALORA_")}
    env.update(
        {
            "VALORA_EVENTS_TOPIC": f"{prefix}usage.events",
            "VALORA_DLQ_TOPIC": f"{prefix}usage.events.dlq",
            "VALORA_TOTALS_TOPIC": f"{prefix}usage.totals",
            "VALORA_CONSUMER_GROUP": f"{prefix}worker",
            "VALORA_TOPIC_PARTITIONS": "3",
            "VALORA_SESSION_TIMEOUT_MS": "6000",
            "VALORA_STATE_DIR": str(Path(env.get("TMPDIR", "/tmp")) / f"{prefix}state"),
        }
    )
    if broker is not None:
        env["VALORA_KAFKA_BOOTSTRAP"] = broker
    if database_url is not None:
        env["VALORA_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run_cli(
    args: Iterable[str], env: Mapping[str, str], *, timeout_s: float = 180, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "valora.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"valora {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def native_event(event_id: str, customer: str, time: str, type_: str = "api_request", **properties: Any) -> bytes:
    return json.dumps(
        {"id": event_id, "type": type_, "customer": customer, "time": time, "properties": properties}
    ).encode()


def race(calls: list[Callable[[], object]], *, timeout_s: float = 60) -> list[object]:
    """Run the calls in threads released together; each result or raised exception, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [RuntimeError("did not run")] * len(calls)

    def run(i: int, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except Exception as exc:  # the loser's error is the result under test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
    assert not any(t.is_alive() for t in threads)
    return results
