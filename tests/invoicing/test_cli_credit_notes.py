"""`valora invoices credit` and `valora invoices show-credit-note` end to end, through the real CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import ISSUE_CATALOG, cli_env, run_cli, write_json

pytestmark = pytest.mark.integration

NS = {"h": "http://www.w3.org/1999/xhtml"}
AT = ["--at", "2026-02-10T12:00:00Z", "--actor", "alice"]


def _one_line_error(proc: Any, needle: str) -> None:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("valora: error: ") and needle in proc.stderr, proc.stderr


@pytest.fixture
def env(database_url: str, topic_prefix: str, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment, with ISSUE_CATALOG applied and January (with 3,500 API calls) closed."""
    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, segment_start, "
            "period_end, quantity, event_count, closed) VALUES ('acme', 'sub_1', 'api_calls', '2026-01-01Z', "
            "'2026-01-01Z', '2026-02-01Z', "
            "3500, 3500, false)"
        )
    run_cli(["close", "--as-of", "2026-02-01T01:00:00Z"], env)
    return env


def _invoice(env: dict[str, str]) -> dict[str, Any]:
    [invoice] = json.loads(run_cli(["invoices", "list", "--org", "acme", "--json"], env).stdout)
    return invoice


def test_each_mode_through_the_cli(env: dict[str, str], tmp_path: Path) -> None:
    invoice_id = _invoice(env)["id"]
    credit = ["invoices", "credit", invoice_id, "--org", "acme", *AT]

    by_amount = run_cli([*credit, "--reason", "goodwill", "--amount", "1.50"], env)
    assert by_amount.stdout.split()[:5] == ["ACME-CN-2026-000001", "credits", "ACME-2026-000001", "1.50", "USD"]
    by_line = json.loads(run_cli([*credit, "--reason", "outage", "--line", "api", "--json"], env).stdout)
    assert [(line["line_key"], line["amount_minor"]) for line in by_line["lines"]] == [("api", 500)]
    rest = json.loads(run_cli([*credit, "--reason", "closing the account", "--all", "--json"], env).stdout)
    assert (rest["number"], rest["total_minor"]) == ("ACME-CN-2026-000003", 1497 - 150)

    shown = json.loads(run_cli(["invoices", "show", invoice_id, "--json"], env).stdout)
    assert (shown["credited_minor"], shown["amount_due_minor"]) == (1997, 0)
    assert [(n["number"], n["total_minor"], n["reason"]) for n in shown["credit_notes"]] == [
        ("ACME-CN-2026-000001", 150, "goodwill"),
        ("ACME-CN-2026-000002", 500, "outage"),
        ("ACME-CN-2026-000003", 1347, "closing the account"),
    ]
    assert "Amount due" in run_cli(["invoices", "show", invoice_id], env).stdout

    note = json.loads(run_cli(["invoices", "show-credit-note", "ACME-CN-2026-000002", "--json"], env).stdout)
    assert note == by_line
    assert "Total credited" in run_cli(["invoices", "show-credit-note", by_line["id"]], env).stdout
    page = tmp_path / "credit-note.html"
    run_cli(["invoices", "show-credit-note", "ACME-CN-2026-000002", "--html", "--out", str(page)], env)
    root = ET.fromstring(page.read_text(encoding="utf-8").split("\n", 1)[1])
    total = root.find(".//h:tr[@id='total']//h:span[@class='amount']", NS)
    assert total is not None and total.text == "5.00"


def test_refusals_are_one_line_and_change_nothing(env: dict[str, str]) -> None:
    invoice_id = _invoice(env)["id"]
    credit = ["invoices", "credit", invoice_id, "--reason", "r", *AT]
    cases = [
        ([*credit, "--amount", "19.98"], "has 19.97 USD left to credit"),
        ([*credit, "--amount", "1.005"], "USD amounts have at most 2"),
        ([*credit, "--amount", "-1"], "must be greater than zero"),
        ([*credit, "--amount", "1e3"], "is not a decimal number"),
        ([*credit, "--line", "nope"], "has no line 'nope'"),
        ([*credit, "--all", "--org", "globex"], "in organization 'globex'"),
        (["invoices", "credit", "in_nope", "--reason", "r", "--all"], "no invoice with number or id 'in_nope'"),
        (["invoices", "show-credit-note", "ACME-CN-2026-000001"], "no credit note"),
    ]
    for args, needle in cases:
        _one_line_error(run_cli(args, env, check=False), needle)
    assert _invoice(env)["credit_notes"] == []

    run_cli([*credit, "--amount", "0.01"], env)
    _one_line_error(
        run_cli(["invoices", "void", invoice_id, "--reason", "duplicate"], env, check=False),
        "has credit notes (ACME-CN-2026-000001): cannot void",
    )
    run_cli(["invoices", "mark-uncollectible", invoice_id, "--reason", "gone"], env)
    _one_line_error(run_cli([*credit, "--all"], env, check=False), "is uncollectible: only issued or paid")


def test_the_modes_are_exclusive_and_one_is_required(env: dict[str, str]) -> None:
    for extra in ([], ["--all", "--amount", "1.00"]):
        proc = run_cli(["invoices", "credit", "in_x", "--reason", "r", *extra], env, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "one of the arguments --all --line --amount is required" in proc.stderr or "not allowed" in proc.stderr
