"""The walking skeleton end to end: broker → worker → Postgres → close → invoice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from streams.publish import publish
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = pytest.mark.integration

JAN16 = datetime(2026, 1, 16, tzinfo=UTC)


def _events(n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        when = JAN16 + timedelta(seconds=i * 97)
        out.append((b"acme", native_event(f"e{i}", "cus_1", when.isoformat().replace("+00:00", "Z"))))
    return out


def test_events_to_exact_invoice_and_second_close_changes_nothing(
    broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)

    originals = _events(1500)
    # Re-sent duplicates: same ids, later in the stream, one with a different payload.
    resent = [*originals[:100], (b"acme", native_event("e5", "cus_1", "2026-01-20T00:00:00Z"))]
    malformed = [(b"acme", b"{oops"), (b"acme", native_event("x1", "nobody", "2026-01-20T00:00:00Z"))]
    publish(broker, env["VALORA_EVENTS_TOPIC"], [*originals, *resent, *malformed])

    out = run_cli(["worker", "--until-idle"], env)
    assert "accepted 1500" in out.stdout and "duplicates 101" in out.stdout and "dead_lettered 2" in out.stdout

    first = run_cli(["close", "--as-of", "2026-02-01T01:00:00Z"], env)
    assert first.stdout.startswith("closed 1 period")
    listing = run_cli(["invoices", "list", "--org", "acme", "--json"], env).stdout
    [invoice] = json.loads(listing)

    # Base: $29 prorated by 16/31 days (active from Jan 16 in the Jan 1 – Feb 1 period).
    base = (Decimal("29.00") * 16 / 31).quantize(Decimal("0.01"), ROUND_HALF_UP)
    # API calls: (1500 − 1000 free) × $0.002.
    api = (Decimal(1500 - 1000) * Decimal("0.002")).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert [(line["charge"], line["amount_minor"]) for line in invoice["lines"]] == [
        ("base", int(base * 100)),
        ("api", int(api * 100)),
    ]
    assert invoice["total_minor"] == 1497 + 100
    assert invoice["subtotal_minor"] == invoice["total_minor"]
    assert (invoice["organization"], invoice["customer"], invoice["subscription"]) == ("acme", "cus_1", "sub_1")
    assert (invoice["period_start"], invoice["period_end"]) == ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    assert invoice["status"] == "issued" and invoice["number"].endswith("-000001")

    second = run_cli(["close", "--as-of", "2026-02-01T01:00:00Z"], env)
    assert second.stdout.startswith("closed 0 period")
    assert run_cli(["invoices", "list", "--org", "acme", "--json"], env).stdout == listing

    # Running the worker again (a restart) reads nothing new and counts nothing twice.
    again = run_cli(["worker", "--until-idle"], env)
    assert "accepted" not in again.stdout or "accepted 0" in again.stdout
    assert run_cli(["invoices", "list", "--org", "acme", "--json"], env).stdout == listing


def test_close_respects_late_grace(broker: str, database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    # 30 minutes after the period ended is inside the default 1 h grace: nothing closes yet.
    assert run_cli(["close", "--as-of", "2026-02-01T00:30:00Z"], env).stdout.startswith("closed 0 period")
    assert run_cli(["close", "--as-of", "2026-02-01T01:00:00Z"], env).stdout.startswith("closed 1 period")
