"""The terminal rendering of invoices: whole words, amounts aligned, the invoice page's period convention."""

from __future__ import annotations

from valora.render import DESCRIPTION_WIDTH, amount_rows, invoice_table


def test_a_long_description_wraps_at_words_and_keeps_every_word() -> None:
    description = (
        "base: time on plan enterprise-annual billed in advance, flat 1,250.00, prorated 16.5 of 31 days "
        "(the remainder of the period after the change)"
    )
    rows = amount_rows(description, 66532, "USD")
    assert len(rows) > 1 and rows[0].endswith("665.32 USD")
    text = " ".join(row.strip() for row in rows).replace(" 665.32 USD", "")
    assert text.split() == description.split()  # nothing cut, no word split across lines
    assert all(len(row.strip()) <= DESCRIPTION_WIDTH for row in rows[1:])


def test_the_table_shows_number_id_and_the_last_day_billed() -> None:
    invoice = {
        "id": "in_1", "number": "ACME-2026-000001", "customer": "cus_1", "subscription": "sub_1",
        "status": "issued", "currency": "USD", "period_start": "2026-01-01T00:00:00Z",
        "period_end": "2026-02-01T00:00:00Z", "total_minor": 1497,
        "lines": [{"description": "base: flat 29.00, prorated 16 of 31 days", "amount_minor": 1497}],
    }
    first, line, total = invoice_table([invoice]).splitlines()
    assert first == "ACME-2026-000001  in_1  cus_1  sub_1  2026-01-01 – 2026-01-31  issued"
    assert line.split() == ["base:", "flat", "29.00,", "prorated", "16", "of", "31", "days", "14.97", "USD"]
    assert total.split() == ["Total", "14.97", "USD"]
    assert invoice_table([]) == "no invoices"
