"""Human-readable renderings of invoices and credit notes for the terminal.

Periods read as on the HTML page (`invoicing.html.billing_window`): the first and the last day
billed ("2026-01-01 – 2026-01-31"), although stored and exported as half-open `[start, end)`.
Long descriptions wrap at word boundaries under their first line, never cut mid-word.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import Any

from invoicing.html import billing_window
from rating.money import format_minor

DESCRIPTION_WIDTH = 60


def amount_rows(description: str, amount_minor: int, currency: str) -> list[str]:
    """One line of an invoice: the amount beside the first line of its word-wrapped description."""
    parts = textwrap.wrap(description, DESCRIPTION_WIDTH, break_long_words=False) or [""]
    rows = [f"    {parts[0]:<{DESCRIPTION_WIDTH}} {format_minor(amount_minor, currency):>12} {currency}"]
    rows += [f"      {part}" for part in parts[1:]]
    return rows


def invoice_table(invoices: Iterable[dict[str, Any]]) -> str:
    """Each invoice: number, id, customer, subscription, days billed, status; then its lines."""
    out: list[str] = []
    for inv in invoices:
        cur = inv["currency"]
        out.append(
            f"{inv['number'] or '(draft)'}  {inv['id']}  {inv['customer']}  {inv['subscription']}  "
            f"{billing_window(inv['period_start'], inv['period_end'])}  {inv['status']}"
        )
        for line in inv["lines"]:
            out += amount_rows(line["description"], line["amount_minor"], cur)
        out += amount_rows("Total", inv["total_minor"], cur)
        for note in inv.get("credit_notes", []):
            out += amount_rows(f"Credit note {note['number']}", -note["total_minor"], cur)
        if inv.get("credit_notes"):
            out += amount_rows("Amount due", inv["amount_due_minor"], cur)
    return "\n".join(out) if out else "no invoices"
