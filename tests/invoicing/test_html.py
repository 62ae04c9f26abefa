"""The HTML invoice: strictly well-formed, shows what the JSON says, escapes everything."""

from __future__ import annotations

import copy
import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from invoicing.commands import get_invoice, invoice_parties
from invoicing.credit_notes import CreditAll, credit_invoice, get_credit_note
from invoicing.html import render_credit_note_html, render_invoice_html
from rating.money import format_minor

NS = {"h": "http://www.w3.org/1999/xhtml"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def sample_invoice(currency: str = "USD", **overrides: Any) -> dict[str, Any]:
    """An invoice in the public JSON shape with a flat, a per-unit, a graduated and a late line."""
    invoice: dict[str, Any] = {
        "id": "in_0123456789abcdef01234567",
        "number": "ACME-2026-000042",
        "organization": "acme",
        "customer": "cus_1",
        "subscription": "sub_1",
        "status": "issued",
        "currency": currency,
        "period_start": "2026-01-01T00:00:00Z",
        "period_end": "2026-02-01T00:00:00Z",
        "issued_at": "2026-02-01T01:00:00Z",
        "due_at": "2026-03-03T01:00:00Z",
        "lines": [
            _line("base", "flat", "Base: flat 29.00, prorated 16 of 31 days", "0.516129032258064516129", 1497),
            _line("api", "usage", "API calls: 1,500 units (1,000 free) × 0.002", "1500", 100),
            _line(
                "tokens",
                "usage",
                "Tokens: 12,000 units, graduated over 2 tier(s)",
                "12000",
                2000,
                details={
                    "tiers": [
                        {"tier": "1", "quantity": "10000", "unit_amount": "0", "flat_amount": "0", "amount": "0"},
                        {"tier": "2", "quantity": "2000", "unit_amount": "0.01", "flat_amount": "0", "amount": "20.00"},
                    ]
                },
            ),
            _line("late:20251201T000000:api", "adjustment", "Late usage for 2025-12-01 – 2026-01-01", "7", 1),
        ],
        "status_history": [
            {"from": None, "to": "issued", "at": "2026-02-01T01:00:00Z", "reason": "period closed", "actor": "close"}
        ],
    }
    invoice["subtotal_minor"] = invoice["total_minor"] = sum(line["amount_minor"] for line in invoice["lines"])
    invoice.update(overrides)
    return invoice


def _line(key: str, kind: str, description: str, quantity: str, amount_minor: int, **extra: Any) -> dict[str, Any]:
    return {
        "line_key": key,
        "charge": key.split(":")[-1],
        "kind": kind,
        "description": description,
        "quantity": quantity,
        "amount": str(amount_minor),
        "amount_minor": amount_minor,
        "service_start": "2026-01-16T00:00:00Z",
        "service_end": "2026-02-01T00:00:00Z",
        **extra,
    }


def parse(page: str) -> ET.Element:
    """Parse strictly as XML once the HTML5 DOCTYPE line is gone; any unclosed tag fails here."""
    first, rest = page.split("\n", 1)
    assert first == "<!DOCTYPE html>"
    return ET.fromstring(rest)


def text_of(element: ET.Element | None) -> str:
    assert element is not None
    return "".join(element.itertext())


def render(invoice: dict[str, Any], **names: str) -> str:
    return render_invoice_html(
        invoice,
        organization_name=names.get("organization_name", "Acme Inc"),
        customer_name=names.get("customer_name", "Globex"),
    )


@pytest.mark.parametrize(("currency", "total"), [("USD", "35.98"), ("JPY", "3598"), ("BHD", "3.598")])
def test_total_is_the_json_total_in_the_currency_exponent(currency: str, total: str) -> None:
    invoice = sample_invoice(currency)
    root = parse(render(invoice))

    shown = root.find(".//h:tr[@id='total']//h:span[@class='amount']", NS)
    assert text_of(shown) == format_minor(invoice["total_minor"], currency) == total
    assert text_of(root.find(".//h:tr[@id='total']//h:span[@class='currency']", NS)) == currency
    assert text_of(root.find(".//h:tr[@id='subtotal']//h:span[@class='amount']", NS)) == total


def test_every_line_shows_its_amount() -> None:
    invoice = sample_invoice()
    root = parse(render(invoice))

    rows = root.findall(".//h:tbody/h:tr[@class='line']", NS)
    assert [row.get("data-line-key") for row in rows] == [line["line_key"] for line in invoice["lines"]]
    for row, line in zip(rows, invoice["lines"], strict=True):
        assert text_of(row.find(".//h:span[@class='amount']", NS)) == format_minor(line["amount_minor"], "USD")
        assert text_of(row.find("h:td[@class='description']", NS)) == line["description"]


def test_header_names_number_status_dates_and_period() -> None:
    root = parse(render(sample_invoice()))

    assert text_of(root.find(".//h:span[@id='invoice-number']", NS)) == "ACME-2026-000042"
    assert text_of(root.find(".//h:span[@id='status']", NS)) == "issued"
    facts = dict(
        zip(
            (text_of(dt) for dt in root.iterfind(".//h:dl[@class='facts']/h:dt", NS)),
            (text_of(dd) for dd in root.iterfind(".//h:dl[@class='facts']/h:dd", NS)),
            strict=True,
        )
    )
    assert facts["Issued"] == "2026-02-01"
    assert facts["Due"] == "2026-03-03"
    assert facts["Billing period"] == "2026-01-01 – 2026-01-31"  # [Jan 1, Feb 1) with an inclusive last day
    assert text_of(root.find(".//h:title", NS)) == "Invoice ACME-2026-000042 from Acme Inc"


def test_tier_breakdown_rows_and_unit_prices() -> None:
    root = parse(render(sample_invoice()))

    tiers = root.findall(".//h:tbody/h:tr[@class='tier']", NS)
    assert [text_of(t.find("h:td[@class='description']", NS)) for t in tiers] == ["Tier 1", "Tier 2"]
    assert [text_of(t.find("h:td[@class='num unit-price']", NS)) for t in tiers] == ["0", "0.01"]
    assert text_of(tiers[1].find("h:td[@class='num tier-amount']", NS)) == "20.00\u00a0USD"
    unit_prices = [
        text_of(r.find("h:td[@class='num unit-price']", NS)) for r in root.iterfind(".//h:tr[@class='line']", NS)
    ]
    assert unit_prices == ["29.00", "0.002", "—", "—"]
    quantities = [
        text_of(r.find("h:td[@class='num quantity']", NS)) for r in root.iterfind(".//h:tr[@class='line']", NS)
    ]
    assert quantities == ["≈ 0.516129", "1,500", "12,000", "7"]


def test_markup_in_any_field_is_escaped() -> None:
    attack = "<script>alert(\"pwned\")</script> & <b onmouseover='x()'>"
    invoice = sample_invoice(customer=attack)
    invoice["lines"][0]["description"] = attack
    invoice["lines"][0]["line_key"] = '"><script>x</script>'
    page = render(invoice, organization_name=attack, customer_name=attack)

    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    root = parse(page)
    assert not list(root.iter(f"{{{NS['h']}}}script"))
    assert text_of(root.find(".//h:tbody/h:tr/h:td[@class='description']", NS)) == attack
    assert root.find(".//h:tbody/h:tr", NS).get("data-line-key") == '"><script>x</script>'  # type: ignore[union-attr]


@given(st.text())
def test_any_description_round_trips_through_strict_parsing(description: str) -> None:
    invoice = sample_invoice()
    invoice["lines"] = [copy.deepcopy(invoice["lines"][1]) | {"description": description}]
    root = parse(render(invoice))

    shown = text_of(root.find(".//h:tbody/h:tr/h:td[@class='description']", NS))
    legal = all(
        ch in "\t\n\r" or ("\x20" <= ch <= "\ud7ff") or ("\ue000" <= ch <= "\ufffd") or ch > "\uffff"
        for ch in description
    )
    if legal:
        assert shown == description
    else:  # characters XML cannot carry at all are shown as U+FFFD, one for one
        assert len(shown) == len(description) and "\ufffd" in shown


def test_page_is_standalone() -> None:
    page = render(sample_invoice())
    root = parse(page)
    for element in root.iter():
        assert "src" not in element.attrib and "href" not in element.attrib, element.tag
    assert "url(" not in page and "@import" not in page
    assert root.find(".//h:head/h:style", NS) is not None


@pytest.mark.parametrize(
    ("status", "notice"),
    [("draft", "Draft: this is a preview"), ("paid", "Paid."), ("void", "voided"), ("uncollectible", "written off")],
)
def test_status_notice(status: str, notice: str) -> None:
    overrides: dict[str, Any] = {"status": status}
    if status == "draft":
        overrides |= {"number": None, "issued_at": None, "due_at": None}
    root = parse(render(sample_invoice(**overrides)))
    assert notice in text_of(root.find(".//h:p[@class='notice']", NS))
    if status == "draft":
        assert text_of(root.find(".//h:span[@id='invoice-number']", NS)) == "Draft"


def test_an_invoice_with_no_lines_still_renders() -> None:
    root = parse(render(sample_invoice(lines=[], subtotal_minor=0, total_minor=0)))
    assert text_of(root.find(".//h:tr[@id='total']//h:span[@class='amount']", NS)) == "0.00"


@pytest.mark.integration
def test_renders_an_invoice_read_from_postgres(engine: Engine, issued_id: str) -> None:
    invoice = get_invoice(engine, issued_id)
    organization_name, customer_name = invoice_parties(engine, issued_id)
    root = parse(render_invoice_html(invoice, organization_name=organization_name, customer_name=customer_name))

    assert text_of(root.find(".//h:span[@id='invoice-number']", NS)) == invoice["number"]
    amounts = [text_of(s) for s in root.iterfind(".//h:tbody/h:tr[@class='line']//h:span[@class='amount']", NS)]
    assert amounts == [format_minor(line["amount_minor"], invoice["currency"]) for line in invoice["lines"]]
    total = text_of(root.find(".//h:tr[@id='total']//h:span[@class='amount']", NS))
    assert total == format_minor(invoice["total_minor"], invoice["currency"])
    assert "Globex" in text_of(root.find(".//h:section[@class='parties']", NS))


def _chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@pytest.mark.skipif(_chromium() is None, reason=f"no headless browser on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
def test_a_real_browser_shows_the_total(tmp_path: Path) -> None:
    browser = _chromium()
    assert browser is not None
    invoice = sample_invoice()
    page = tmp_path / "invoice.html"
    page.write_text(render(invoice), encoding="utf-8")

    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    assert f'<span class="amount">{format_minor(invoice["total_minor"], "USD")}</span>' in dom
    assert "ACME-2026-000042" in dom


# --- credit notes ---------------------------------------------------------------------------------


def sample_credit_note(**overrides: Any) -> dict[str, Any]:
    """A credit note in the public JSON shape: one line credit and one amount credit."""
    note: dict[str, Any] = {
        "id": "cn_0123456789abcdef01234567",
        "number": "ACME-CN-2026-000007",
        "organization": "acme",
        "invoice": "in_0123456789abcdef01234567",
        "invoice_number": "ACME-2026-000042",
        "customer": "cus_1",
        "subscription": "sub_1",
        "currency": "USD",
        "issued_at": "2026-02-10T12:00:00Z",
        "reason": "Service outage on Jan 20",
        "actor": "alice",
        "after_payment": False,
        "lines": [
            {"line_key": "api", "description": "API calls: 1,500 units (1,000 free) × 0.002", "amount_minor": 100},
            {"line_key": None, "description": "Credit on the invoice total", "amount_minor": 250},
        ],
        "total_minor": 350,
        "invoice_total_minor": 3598,
        "credited_before_minor": 0,
    }
    note.update(overrides)
    return note


def render_note(note: dict[str, Any], **names: str) -> str:
    return render_credit_note_html(
        note,
        organization_name=names.get("organization_name", "Acme Inc"),
        customer_name=names.get("customer_name", "Globex"),
    )


def test_a_credit_note_page_parses_strictly_and_shows_its_lines_and_total() -> None:
    note = sample_credit_note()
    root = parse(render_note(note))

    assert text_of(root.find(".//h:title", NS)) == "Credit note ACME-CN-2026-000007 from Acme Inc"
    assert text_of(root.find(".//h:span[@id='credit-note-number']", NS)) == "ACME-CN-2026-000007"
    assert text_of(root.find(".//h:span[@id='invoice-number']", NS)) == "ACME-2026-000042"
    assert text_of(root.find(".//h:span[@id='reason']", NS)) == "Service outage on Jan 20"
    rows = root.findall(".//h:tbody/h:tr[@class='line']", NS)
    assert [row.get("data-line-key") for row in rows] == ["api", ""]
    assert [text_of(row.find(".//h:span[@class='amount']", NS)) for row in rows] == ["1.00", "2.50"]
    assert text_of(root.find(".//h:tr[@id='total']//h:span[@class='amount']", NS)) == "3.50"
    assert "Credit to" in text_of(root.find(".//h:section[@class='parties']", NS))
    assert "owed back" not in text_of(root)
    assert "owed back" in text_of(parse(render_note(sample_credit_note(after_payment=True))))


def test_a_credit_note_page_escapes_everything() -> None:
    attack = "<script>alert(1)</script> & \x00"
    note = sample_credit_note(reason=attack)
    note["lines"][0]["description"] = attack
    root = parse(render_note(note, organization_name=attack, customer_name=attack))

    assert not list(root.iter(f"{{{NS['h']}}}script"))
    assert text_of(root.find(".//h:span[@id='reason']", NS)) == attack.replace("\x00", "\ufffd")


def test_an_invoice_page_lists_its_credit_notes_and_the_amount_due() -> None:
    notes = [
        {"number": "ACME-CN-2026-000001", "issued_at": "2026-02-10T12:00:00Z", "total_minor": 1000,
         "after_payment": False, "reason": "outage"},
        {"number": "ACME-CN-2026-000002", "issued_at": "2026-02-11T12:00:00Z", "total_minor": 98,
         "after_payment": False, "reason": "goodwill"},
    ]  # fmt: skip
    invoice = sample_invoice(credited_minor=1098, amount_due_minor=2500, credit_notes=notes)
    root = parse(render(invoice))

    rows = root.findall(".//h:tfoot/h:tr[@class='credit-note']", NS)
    assert [row.get("data-number") for row in rows] == ["ACME-CN-2026-000001", "ACME-CN-2026-000002"]
    assert [text_of(row.find(".//h:span[@class='amount']", NS)) for row in rows] == ["-10.00", "-0.98"]
    assert text_of(root.find(".//h:tr[@id='amount-due']//h:span[@class='amount']", NS)) == "25.00"
    assert "Please pay 25.00 USD" in text_of(root.find(".//h:footer", NS))

    settled = parse(render(sample_invoice(credited_minor=3598, amount_due_minor=0, credit_notes=notes[:1])))
    assert "Nothing is owed" in text_of(settled.find(".//h:footer", NS))
    assert root.find(".//h:tr[@id='amount-due']", NS) is not None
    assert parse(render(sample_invoice())).find(".//h:tr[@id='amount-due']", NS) is None


@pytest.mark.integration
def test_renders_a_credit_note_read_from_postgres(engine: Engine, issued_id: str) -> None:
    note = credit_invoice(
        engine, issued_id, CreditAll(), now=datetime(2026, 2, 10, tzinfo=UTC), actor="a", reason="outage"
    )
    root = parse(render_note(get_credit_note(engine, note["number"])))
    assert text_of(root.find(".//h:tr[@id='total']//h:span[@class='amount']", NS)) == format_minor(
        note["total_minor"], "USD"
    )
    invoice_page = parse(render(get_invoice(engine, issued_id)))
    assert text_of(invoice_page.find(".//h:tr[@id='amount-due']//h:span[@class='amount']", NS)) == "0.00"
