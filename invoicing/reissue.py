"""Reissue: void an invoice and issue its replacement, in one transaction.

The correction for an invoice that must be withdrawn rather than credited (sent to the wrong
party, wrong billing details, a number that must not stand): the invoice is voided (its
number stays used, numbering stays gapless) and a new invoice is issued for the same service
period with the same lines, the next number, `issued_at = now` and a new due date. The new
invoice has `billing_reason = 'reissue'` and `replaces_invoice_id` pointing at the voided
one; late usage the voided invoice settled moves to the replacement, so it stays billed once.

Amount corrections are credit notes (`invoicing.credit_notes`); an invoice with credit notes
cannot be voided, so it cannot be reissued either. Only issued and uncollectible invoices can
be reissued: a draft is simply issued or voided.

Errors: everything `invoicing.commands.void_invoice` raises, and `InvoiceNotReissuable`
(code "invoice_not_reissuable") for a draft.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.commands import invoice_json_locked, issue_values, load_invoice, move_invoice
from invoicing.lifecycle import BillingReason, InvoiceAction, InvoiceStatus, require_aware
from schemas.errors import ValoraError


class InvoiceNotReissuable(ValoraError):
    """The invoice is a draft: issue or void it instead; nothing was written."""

    code = "invoice_not_reissuable"


def reissue_id(organization_id: str, replaced_id: str) -> str:
    """The replacement's id: the same voided invoice always names the same replacement."""
    name = f"{organization_id}\x1f{BillingReason.REISSUE}\x1f{replaced_id}"
    return f"in_{hashlib.sha256(name.encode()).hexdigest()[:24]}"


def reissue_invoice(engine: Engine, invoice_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """Void `invoice_id` and issue its replacement; returns {"voided": ..., "invoice": ...} as invoice JSON.

    Raises:
        InvoiceNotFound: unknown id.
        InvoiceNotReissuable: the invoice is a draft.
        IllegalTransition: the invoice is paid or already void.
        InvoiceHasCreditNotes: a credit note was issued against it.
        ConcurrentUpdate: another writer moved it first.
        InvalidInput: `now` has no timezone.
    """
    require_aware(now)
    now = now.astimezone(UTC)
    with Session(engine) as session, session.begin():
        old = load_invoice(session, invoice_id)
        if old.status == InvoiceStatus.DRAFT:
            raise InvoiceNotReissuable(f"invoice {invoice_id} is a draft: issue it or void it instead")
        voided = move_invoice(
            session, invoice_id, InvoiceAction.VOID, now=now, actor=actor, reason=f"reissued: {reason}"
        )
        new_id = reissue_id(old.organization_id, old.id)
        _insert_replacement(session, old, new_id, now)
        session.execute(
            text("UPDATE late_usage SET billed_invoice_id = :new WHERE billed_invoice_id = :old"),
            {"new": new_id, "old": old.id},
        )
        session.execute(
            insert(m.InvoiceStatusChange).values(
                invoice_id=new_id,
                seq=1,
                from_status=None,
                to_status=InvoiceStatus.ISSUED.value,
                at=now,
                reason=f"reissue of {old.number or old.id}: {reason}",
                actor=actor,
            )
        )
        return {"voided": voided, "invoice": invoice_json_locked(session, new_id)}


def _insert_replacement(session: Session, old: m.Invoice, new_id: str, now: datetime) -> None:
    """The replacement row, numbered now, and a copy of the voided invoice's lines."""
    session.execute(
        insert(m.Invoice).values(
            id=new_id,
            organization_id=old.organization_id,
            customer_id=old.customer_id,
            subscription_id=old.subscription_id,
            status=InvoiceStatus.ISSUED.value,
            currency=old.currency,
            period_start=old.period_start,
            period_end=old.period_end,
            subtotal_minor=old.subtotal_minor,
            total_minor=old.total_minor,
            billing_reason=BillingReason.REISSUE.value,
            replaces_invoice_id=old.id,
            **issue_values(session, old.organization_id, now),
        )
    )
    session.execute(
        text(
            "INSERT INTO invoice_lines (invoice_id, line_key, position, charge, kind, description, quantity, amount, "
            "amount_minor, service_start, service_end, details) SELECT :new, line_key, position, charge, kind, "
            "description, quantity, amount, amount_minor, service_start, service_end, details FROM invoice_lines "
            "WHERE invoice_id = :old"
        ),
        {"new": new_id, "old": old.id},
    )
