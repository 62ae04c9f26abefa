"""`valora invoices show|issue|void|mark-paid|mark-uncollectible` end to end, through the real CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rating.money import format_minor
from tests.helpers import ISSUE_CATALOG, cli_env, run_cli, write_json

pytestmark = pytest.mark.integration


def test_invoice_lifecycle_through_the_cli(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))], env)
    run_cli(["close", "--as-of", "2026-02-01T01:00:00Z"], env)
    [invoice] = json.loads(run_cli(["invoices", "list", "--org", "acme", "--json"], env).stdout)

    paid = run_cli(["invoices", "mark-paid", invoice["id"], "--at", "2026-02-10T12:00:00Z", "--actor", "bank"], env)
    assert paid.stdout.split() == [invoice["id"], invoice["number"], "paid"]

    refused = run_cli(["invoices", "void", invoice["id"], "--reason", "duplicate"], env, check=False)
    assert refused.returncode == 1
    expected = f"invoice {invoice['number']} is paid; only draft, issued or uncollectible invoices can be voided"
    assert refused.stderr.strip() == f"valora: error: {expected}"

    missing = run_cli(["invoices", "issue", "in_nope"], env, check=False)
    assert missing.returncode == 1 and "no invoice with number or id 'in_nope'" in missing.stderr

    shown = json.loads(run_cli(["invoices", "show", invoice["id"], "--json"], env).stdout)
    assert [h["to"] for h in shown["status_history"]] == ["issued", "paid"]
    assert shown["status_history"][-1]["actor"] == "bank"

    page = tmp_path / "invoice.html"
    run_cli(["invoices", "show", invoice["id"], "--html", "--out", str(page)], env)
    root = ET.fromstring(page.read_text(encoding="utf-8").split("\n", 1)[1])
    ns = {"h": "http://www.w3.org/1999/xhtml"}
    total = root.find(".//h:tr[@id='total']//h:span[@class='amount']", ns)
    assert total is not None and total.text == format_minor(shown["total_minor"], shown["currency"])
