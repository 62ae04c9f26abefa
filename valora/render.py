"""Human-readable renderings of invoices for the terminal."""

from __future__ import annotations

from typing import Any

from rating.money import format_minor


def invoice_table(invoices: list[dict[str, Any]]) -> str:
    if not invoices:
        return "no invoices"
    out = []
    for inv in invoices:
        cur = inv["currency"]
        out.append(
            f"{inv['number'] or '(draft)'}  {inv['customer']}  {inv['subscription']}  "
            f"{inv['period_start'][:10]} – {inv['period_end'][:10]}  {inv['status']}"
        )
        for line in inv["lines"]:
            out.append(f"    {line['description'][:60]:<60} {format_minor(line['amount_minor'], cur):>12} {cur}")
        out.append(f"    {'Total':<60} {format_minor(inv['total_minor'], cur):>12} {cur}")
        for note in inv.get("credit_notes", []):
            out.append(f"    {'Credit note ' + note['number']:<60} {format_minor(-note['total_minor'], cur):>12} {cur}")
        if inv.get("credit_notes"):
            out.append(f"    {'Amount due':<60} {format_minor(inv['amount_due_minor'], cur):>12} {cur}")
    return "\n".join(out)
