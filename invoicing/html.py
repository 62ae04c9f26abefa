"""An invoice or a credit note as a standalone HTML page, the kind a person sends to a customer.

Pure: it renders the public invoice JSON (`invoicing.queries.invoice_json` /
`invoicing.commands.get_invoice`) or credit note JSON (`invoicing.credit_notes.get_credit_note`)
and reads nothing else, so the page always shows exactly what the JSON says. Amounts are
the stored integer minor units formatted with the currency's ISO 4217 exponent
(`rating.money.format_minor`); nothing is re-rated or re-rounded here.

The markup is polyglot HTML5/XHTML: every element closed, every attribute quoted,
only XML's predefined entities and numeric references, the XHTML namespace on <html>.
Browsers read it as HTML, and any XML parser can check it strictly (after the DOCTYPE).
The page needs nothing from the network: the CSS is inline, there are no scripts,
images or fonts.

Every value from the invoice and both names are escaped; characters that XML 1.0 does
not allow at all (most C0 controls) are replaced with U+FFFD, because no escape exists
for them and one stray byte in a description must not make the page unparseable.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from rating.money import format_minor

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# "Label: 12,000 units (1,000 free) × 0.002", "Label: flat 29.00", "Label: ... all at tier 2 × 0.01":
# the price per unit is the last number, when nothing but a proration ("prorated 16 of 31 days") follows it.
_UNIT_PRICE = re.compile(r"(?:: flat | × )(\d[\d,]*(?:\.\d+)?)(?:, prorated [\d.]+ of [\d.]+ days)?$")
_QUANTITY_PLACES = 6

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0;
  background: #f6f8fa; }
main { max-width: 52rem; margin: 2rem auto; background: #fff; padding: 2.5rem 3rem; border: 1px solid #d0d7de;
  border-radius: 6px; }
header { display: flex; justify-content: space-between; align-items: flex-start; gap: 2rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem 0; }
.seller { font-size: 1.1rem; font-weight: 600; }
.status { display: inline-block; padding: .15rem .6rem; border-radius: 1rem; font-size: .8rem;
  text-transform: uppercase; letter-spacing: .05em; background: #eaeef2; }
.status-paid { background: #dafbe1; color: #116329; }
.status-void, .status-uncollectible { background: #ffebe9; color: #a40e26; }
.status-draft { background: #fff8c5; color: #7d4e00; }
.notice { margin: 1.5rem 0 0 0; padding: .75rem 1rem; border-left: 4px solid #d0d7de; background: #f6f8fa; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .25rem 1rem; margin: 0; }
dl.facts dt { color: #656d76; }
dl.facts dd { margin: 0; }
.parties { display: flex; gap: 4rem; margin: 2rem 0; }
.parties h2 { font-size: .8rem; text-transform: uppercase; color: #656d76; margin: 0 0 .25rem 0; }
table.lines { width: 100%; border-collapse: collapse; margin-top: 1rem; }
table.lines th { text-align: left; font-size: .8rem; color: #656d76; border-bottom: 2px solid #d0d7de;
  padding: .5rem; }
table.lines td { padding: .5rem; border-bottom: 1px solid #eaeef2; vertical-align: top; }
table.lines .num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.tier td { color: #656d76; font-size: .85rem; border-bottom: none; padding-top: .1rem; padding-bottom: .1rem; }
tr.tier td.description { padding-left: 1.5rem; }
tfoot td { border-bottom: none; }
tr.total td { font-weight: 700; font-size: 1.1rem; border-top: 2px solid #1f2328; }
.muted { color: #656d76; font-size: .85rem; }
footer { margin-top: 2rem; color: #656d76; font-size: .85rem; }
"""

_NOTICES = {
    "draft": "Draft: this is a preview, not a request for payment.",
    "paid": "Paid. Thank you.",
    "void": "This invoice has been voided; nothing is owed on it.",
    "uncollectible": "This invoice has been written off as uncollectible.",
}


def render_invoice_html(invoice: dict[str, Any], *, organization_name: str, customer_name: str) -> str:
    """A complete HTML5 page for one invoice in its public JSON shape.

    Raises:
        KeyError: `invoice` lacks a field of the public shape.
        InvalidInput: the invoice's currency is not an ISO 4217 code.
    """
    number = invoice["number"] or "Draft"
    body = [
        _header(invoice, number, organization_name),
        _parties(invoice, organization_name, customer_name),
        _lines_table(invoice),
        _footer(invoice, organization_name),
    ]
    return _page(f"Invoice {number} from {organization_name}", body)


def render_credit_note_html(credit_note: dict[str, Any], *, organization_name: str, customer_name: str) -> str:
    """A complete HTML5 page for one credit note in its public JSON shape.

    Amounts are the positive minor units the JSON holds, under headings that say they are
    credited (taken off the invoice).

    Raises:
        KeyError: `credit_note` lacks a field of the public shape.
        InvalidInput: the credit note's currency is not an ISO 4217 code.
    """
    footer = (
        f"<footer>\n<p>Credit note {_esc(credit_note['id'])} · amounts in {_esc(credit_note['currency'])}.</p>\n"
        f"<p>Questions about this credit note? Contact {_esc(organization_name)}.</p>\n</footer>"
    )
    body = [
        _credit_note_header(credit_note, organization_name),
        _parties(credit_note, organization_name, customer_name, "Credit to"),
        _credit_note_table(credit_note),
        footer,
    ]
    return _page(f"Credit note {credit_note['number']} from {organization_name}", body)


def _credit_note_header(credit_note: dict[str, Any], organization_name: str) -> str:
    facts = [  # (label, markup); every value is escaped here
        ("Issued", _esc(_date(credit_note["issued_at"]))),
        ("Credits invoice", f'<span id="invoice-number">{_esc(credit_note["invoice_number"])}</span>'),
        ("Reason", f'<span id="reason">{_esc(credit_note["reason"])}</span>'),
    ]
    if credit_note["after_payment"]:
        facts.append(("After payment", _esc("the invoice was paid: this amount is owed back to the customer")))
    rows = "".join(f"<dt>{_esc(label)}</dt><dd>{markup}</dd>" for label, markup in facts)
    return (
        f'<header>\n<div>\n<div class="seller">{_esc(organization_name)}</div>\n'
        f'<h1>Credit note <span id="credit-note-number">{_esc(credit_note["number"])}</span></h1>\n</div>\n'
        f'<dl class="facts">{rows}</dl>\n</header>'
    )


def _credit_note_table(credit_note: dict[str, Any]) -> str:
    currency = str(credit_note["currency"])
    rows = "\n".join(
        f'<tr class="line" data-line-key="{_esc(line["line_key"] or "")}">'
        f'<td class="description">{_esc(line["description"])}</td>'
        f'<td class="num">{_money(line["amount_minor"], currency)}</td></tr>'
        for line in credit_note["lines"]
    )
    return (
        '<table class="lines">\n<thead><tr><th>Credited</th><th class="num">Amount</th></tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody>\n<tfoot>\n"
        '<tr class="total" id="total"><td class="num">Total credited</td>'
        f'<td class="num">{_money(credit_note["total_minor"], currency)}</td></tr>\n</tfoot>\n</table>'
    )


def _page(title: str, body: list[str]) -> str:
    """The standalone document around the page's sections (see the module docstring)."""
    return (
        "<!DOCTYPE html>\n"
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="en" xml:lang="en">\n'
        '<head>\n<meta charset="utf-8" />\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1" />\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def _esc(value: object) -> str:
    """Text safe inside an element or a quoted attribute, and legal XML 1.0.

    A carriage return is written as a reference because XML parsers turn a literal one into
    a line feed; this way the text a parser reads back is exactly the text given.
    """
    return html.escape(_XML_INVALID.sub("\ufffd", str(value)), quote=True).replace("\r", "&#13;")


def _header(invoice: dict[str, Any], number: str, organization_name: str) -> str:
    status = str(invoice["status"])
    facts = [  # (label, markup); every value is escaped here
        ("Status", f'<span class="status status-{_esc(status)}" id="status">{_esc(status)}</span>'),
        ("Issued", _esc(_date(invoice["issued_at"]) or "not issued")),
        ("Due", _esc(_date(invoice["due_at"]) or "—")),
        ("Billing period", _esc(billing_window(invoice["period_start"], invoice["period_end"]))),
    ]
    rows = "".join(f"<dt>{_esc(label)}</dt><dd>{markup}</dd>" for label, markup in facts)
    notice = _NOTICES.get(status)
    return (
        f'<header>\n<div>\n<div class="seller">{_esc(organization_name)}</div>\n'
        f'<h1>Invoice <span id="invoice-number">{_esc(number)}</span></h1>\n</div>\n'
        f'<dl class="facts">{rows}</dl>\n</header>' + (f'\n<p class="notice">{_esc(notice)}</p>' if notice else "")
    )


def _parties(document: dict[str, Any], organization_name: str, customer_name: str, to: str = "Bill to") -> str:
    """From and to; `document` is an invoice or a credit note (both name the customer and subscription)."""
    return (
        '<section class="parties">\n'
        f"<div><h2>From</h2><div>{_esc(organization_name)}</div></div>\n"
        f"<div><h2>{_esc(to)}</h2><div>{_esc(customer_name)}</div>"
        f'<div class="muted">Customer {_esc(document["customer"])} · '
        f"subscription {_esc(document['subscription'])}</div>"
        "</div>\n</section>"
    )


def _lines_table(invoice: dict[str, Any]) -> str:
    currency = str(invoice["currency"])
    rows: list[str] = []
    for line in invoice["lines"]:
        rows.append(_line_row(line, currency))
        rows.extend(_tier_rows(line, currency))
    if not rows:
        rows.append('<tr><td colspan="5">No charges this period.</td></tr>')
    return (
        '<table class="lines">\n<thead><tr><th>Description</th><th>Service period</th>'
        '<th class="num">Quantity</th><th class="num">Unit price</th><th class="num">Amount</th></tr></thead>\n'
        "<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n<tfoot>\n"
        + _sum_row("Subtotal", "subtotal", invoice["subtotal_minor"], currency)
        + "\n"
        + _sum_row("Total", "total", invoice["total_minor"], currency)
        + "".join("\n" + row for row in _credit_rows(invoice, currency))
        + "\n</tfoot>\n</table>"
    )


def _credit_rows(invoice: dict[str, Any], currency: str) -> list[str]:
    """One row per credit note (taken off, so shown negative) and the amount due after them, if any."""
    notes = invoice.get("credit_notes") or []
    if not notes:
        return []
    rows = [
        f'<tr class="credit-note" data-number="{_esc(n["number"])}"><td colspan="4" class="num">'
        f"Credit note {_esc(n['number'])}{' (after payment)' if n['after_payment'] else ''}</td>"
        f'<td class="num">{_money(-int(n["total_minor"]), currency)}</td></tr>'
        for n in notes
    ]
    return [*rows, _sum_row("Amount due", "amount-due", invoice["amount_due_minor"], currency)]


def _line_row(line: dict[str, Any], currency: str) -> str:
    unit = _unit_price(line)
    return (
        f'<tr class="line" data-line-key="{_esc(line["line_key"])}">'
        f'<td class="description">{_esc(line["description"])}</td>'
        f'<td class="service">{_esc(billing_window(line["service_start"], line["service_end"]))}</td>'
        f'<td class="num quantity">{_esc(_quantity(line["quantity"]))}</td>'
        f'<td class="num unit-price">{_esc(unit) if unit else "—"}</td>'
        f'<td class="num">{_money(line["amount_minor"], currency)}</td></tr>'
    )


def _tier_rows(line: dict[str, Any], currency: str) -> list[str]:
    """The graduated/volume breakdown: informational, exact, not separately rounded."""
    details = line.get("details") or {}
    tiers = details.get("tiers") if isinstance(details, dict) else None
    if not isinstance(tiers, list):
        return []
    rows = []
    for tier in tiers:
        flat = _decimal(tier.get("flat_amount", "0"))
        label = f"Tier {tier.get('tier', '?')}" + (f" + {_group(flat)} flat" if flat else "")
        rows.append(
            '<tr class="tier">'
            f'<td class="description">{_esc(label)}</td><td></td>'
            f'<td class="num quantity">{_esc(_quantity(tier.get("quantity", "")))}</td>'
            f'<td class="num unit-price">{_esc(_quantity(tier.get("unit_amount", "")))}</td>'
            f'<td class="num tier-amount">{_esc(_quantity(tier.get("amount", "")))}&#160;{_esc(currency)}</td></tr>'
        )
    return rows


def _sum_row(label: str, ident: str, amount_minor: int, currency: str) -> str:
    return (
        f'<tr class="{ident}" id="{ident}"><td colspan="4" class="num">{_esc(label)}</td>'
        f'<td class="num">{_money(amount_minor, currency)}</td></tr>'
    )


def _footer(invoice: dict[str, Any], organization_name: str) -> str:
    due = _date(invoice["due_at"])
    parts = [f"Invoice {_esc(invoice['id'])} · amounts in {_esc(invoice['currency'])}."]
    owed = int(invoice.get("amount_due_minor", invoice["total_minor"]))
    if due and invoice["status"] == "issued" and owed > 0:
        total = format_minor(owed, str(invoice["currency"]))
        parts.append(f"Please pay {_esc(total)} {_esc(invoice['currency'])} by {_esc(due)}.")
    elif invoice["status"] == "issued" and invoice.get("credit_notes") and owed <= 0:
        parts.append("Nothing is owed: credit notes cover this invoice in full.")
    parts.append(f"Questions about this invoice? Contact {_esc(organization_name)}.")
    return "<footer>\n" + "\n".join(f"<p>{p}</p>" for p in parts) + "\n</footer>"


def _money(amount_minor: int, currency: str) -> str:
    """`<span class="amount">12.50</span> USD`: minor units shown with the currency's exponent."""
    shown = format_minor(int(amount_minor), currency)
    return f'<span class="amount">{_esc(shown)}</span>&#160;<span class="currency">{_esc(currency)}</span>'


def _unit_price(line: dict[str, Any]) -> str | None:
    """The price per unit when the line has a single one: per-unit, flat, or a volume tier."""
    tiers = (line.get("details") or {}).get("tiers")
    if isinstance(tiers, list) and len(tiers) == 1:
        return _quantity(tiers[0].get("unit_amount", ""))
    found = _UNIT_PRICE.search(str(line["description"]))
    return found.group(1) if found else None


def _decimal(value: object) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)


def _group(value: Decimal) -> str:
    return f"{value:,f}"


def _quantity(value: object) -> str:
    """A decimal for people: grouped, and cut to 6 places (marked ≈) when it does not terminate sooner.

    Long fractions come from proration shares such as 16/31 of a period; the amount is
    exact in the JSON and on the line, the quantity column is only a guide.
    """
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if not number.is_finite():
        return str(value)
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > _QUANTITY_PLACES:
        return "≈ " + _group(number.quantize(Decimal(1).scaleb(-_QUANTITY_PLACES)).normalize())
    return _group(number)


def _parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _date(value: str | None) -> str | None:
    parsed = _parse_ts(value)
    return None if parsed is None else f"{parsed:%Y-%m-%d}"


def billing_window(start: str | None, end: str | None) -> str:
    """A half-open [start, end) window as people read it.

    Whole days are shown with an inclusive last day (Jan 1 – Jan 31 for [Jan 1, Feb 1));
    otherwise both instants are shown in UTC, the end being exclusive.
    """
    s, e = _parse_ts(start), _parse_ts(end)
    if s is None or e is None:
        return "—"
    if s.time() == e.time() == datetime.min.time() and e > s:
        return f"{s:%Y-%m-%d} – {e - timedelta(days=1):%Y-%m-%d}"
    return f"{s:%Y-%m-%d %H:%M} – {e:%Y-%m-%d %H:%M} UTC"
