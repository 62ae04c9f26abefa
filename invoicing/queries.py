"""Reading invoices and running usage back out, in the documented JSON shapes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from invoicing import models as m


def rfc3339(value: datetime | None) -> str | None:
    """A timestamp as it appears in Valora's JSON: UTC with a trailing Z."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def decimal_text(value: Decimal) -> str:
    """Decimal as a plain string without exponent or trailing zeros ("1E+1" → "10")."""
    return format(value.normalize(), "f")


def invoice_json(
    inv: m.Invoice,
    lines: list[m.InvoiceLine],
    history: list[m.InvoiceStatusChange],
    credit_notes: Sequence[m.CreditNote] = (),
) -> dict[str, Any]:
    """One invoice in its public JSON shape; stable key order and line order.

    The credit keys come last (they were added after the rest): `credited_minor` is the sum
    of the invoice's credit notes, `amount_due_minor` the total minus the credits issued
    before it was paid (a credit after payment is owed back, not taken off what was due),
    and `credit_notes` lists them in the order they were issued. `billing_reason` is "period"
    (a period's close), "opening" (an in-advance subscription's first period, billed ahead) or
    "reissue" (the replacement of a voided invoice, whose id `replaces` then names).
    """
    notes = sorted(credit_notes, key=lambda n: n.credited_before_minor)
    return {
        "id": inv.id,
        "number": inv.number,
        "organization": inv.organization_id,
        "customer": inv.customer_id,
        "subscription": inv.subscription_id,
        "status": inv.status,
        "currency": inv.currency,
        "period_start": rfc3339(inv.period_start),
        "period_end": rfc3339(inv.period_end),
        "issued_at": rfc3339(inv.issued_at),
        "due_at": rfc3339(inv.due_at),
        "lines": [
            {
                "line_key": line.line_key,
                "charge": line.charge,
                "kind": line.kind,
                "description": line.description,
                "quantity": decimal_text(line.quantity),
                "amount": decimal_text(line.amount),
                "amount_minor": line.amount_minor,
                "service_start": rfc3339(line.service_start),
                "service_end": rfc3339(line.service_end),
                **({"details": line.details} if line.details else {}),
            }
            for line in sorted(lines, key=lambda x: x.position)
        ],
        "subtotal_minor": inv.subtotal_minor,
        "total_minor": inv.total_minor,
        "status_history": [
            {"from": h.from_status, "to": h.to_status, "at": rfc3339(h.at), "reason": h.reason, "actor": h.actor}
            for h in sorted(history, key=lambda x: x.seq)
        ],
        "credited_minor": sum(n.total_minor for n in notes),
        "amount_due_minor": inv.total_minor - sum(n.total_minor for n in notes if not n.after_payment),
        "credit_notes": [
            {
                "number": n.number,
                "issued_at": rfc3339(n.issued_at),
                "total_minor": n.total_minor,
                "after_payment": n.after_payment,
                "reason": n.reason,
            }
            for n in notes
        ],
        "billing_reason": inv.billing_reason,
        **({"replaces": inv.replaces_invoice_id} if inv.replaces_invoice_id else {}),
    }


def credit_notes_of(session: Session, invoice_ids: Sequence[str]) -> dict[str, list[m.CreditNote]]:
    """The credit notes of these invoices, by invoice id (every id present, most with an empty list)."""
    notes: dict[str, list[m.CreditNote]] = {invoice_id: [] for invoice_id in invoice_ids}
    for note in session.scalars(select(m.CreditNote).where(m.CreditNote.invoice_id.in_(invoice_ids))):
        notes[note.invoice_id].append(note)
    return notes


def list_invoices(engine: Engine, organization: str, customer: str | None = None) -> list[dict[str, Any]]:
    with Session(engine) as session:
        query = select(m.Invoice).where(m.Invoice.organization_id == organization)
        if customer is not None:
            query = query.where(m.Invoice.customer_id == customer)
        invoices = list(session.scalars(query.order_by(m.Invoice.period_start, m.Invoice.subscription_id)))
        ids = [i.id for i in invoices]
        lines: dict[str, list[m.InvoiceLine]] = defaultdict(list)
        for line in session.scalars(select(m.InvoiceLine).where(m.InvoiceLine.invoice_id.in_(ids))):
            lines[line.invoice_id].append(line)
        history: dict[str, list[m.InvoiceStatusChange]] = defaultdict(list)
        for change in session.scalars(select(m.InvoiceStatusChange).where(m.InvoiceStatusChange.invoice_id.in_(ids))):
            history[change.invoice_id].append(change)
        notes = credit_notes_of(session, ids)
        return [invoice_json(i, lines[i.id], history[i.id], notes[i.id]) for i in invoices]


def stream_counters(engine: Engine, topic: str) -> dict[str, int]:
    """Conservation counters across partitions: received = accepted + duplicates + dead_lettered."""
    with Session(engine) as session:
        rows = session.scalars(select(m.ConsumerOffset).where(m.ConsumerOffset.topic == topic)).all()
        return {
            "received": sum(r.received for r in rows),
            "accepted": sum(r.accepted for r in rows),
            "duplicates": sum(r.duplicates for r in rows),
            "dead_lettered": sum(r.dead_lettered for r in rows),
        }
