"""Invoice state commands: issue, void, mark paid, mark uncollectible, and read one invoice.

Each command runs in one transaction:

1. read the invoice (unknown id → `InvoiceNotFound`),
2. validate the move with the pure `advance_invoice` (illegal → `IllegalTransition`),
3. write it with a compare-and-set `UPDATE invoices ... WHERE id = :id AND status = :expected`;
   no row updated means another writer moved the invoice between steps 1 and 3
   (→ `ConcurrentUpdate`, nothing written, the caller may re-read and retry),
4. append the change to `invoice_status_history` (seq = previous max + 1),
5. return the invoice in its public JSON shape (`invoicing.queries.invoice_json`).

Issuing also takes the next gapless number from `invoice_sequences` in the same
transaction (so a failed issue rolls the number back with everything else) and sets
`issued_at = now` and `due_at = now + payment_terms_days`. After issue an invoice's
amounts and lines never change; these commands only ever write its status.

The clock is injected (`now`), never read here.

Errors:

    ValoraError
    ├── InvalidInput (ValueError)                 code "invalid_input"  (a `now` without a timezone)
    ├── IllegalTransition (invoicing.lifecycle)   code "illegal_transition"
    ├── ConcurrentUpdate                          code "concurrent_update"
    └── InvoiceNotFound (LookupError)             code "invoice_not_found"
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.lifecycle import InvoiceAction, InvoiceStatus, advance_invoice
from invoicing.numbering import format_number, reserve_numbers
from invoicing.queries import invoice_json
from schemas.errors import InvalidInput, ValoraError


class InvoiceNotFound(ValoraError, LookupError):
    """No invoice has this id."""

    code = "invoice_not_found"


class ConcurrentUpdate(ValoraError):
    """Another writer changed the invoice's status after we read it; nothing was written."""

    code = "concurrent_update"


def issue_invoice(engine: Engine, invoice_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """Issue a draft: give it the next gapless number, `issued_at = now` and its due date.

    Raises:
        InvoiceNotFound: unknown id.
        IllegalTransition: the invoice is not a draft.
        ConcurrentUpdate: another writer moved it first.
        InvalidInput: `now` has no timezone.
    """
    return _apply(engine, invoice_id, InvoiceAction.ISSUE, now=now, actor=actor, reason=reason)


def void_invoice(engine: Engine, invoice_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """Void a draft, issued or uncollectible invoice; its number stays used (no gap).

    Raises:
        InvoiceNotFound: unknown id.
        IllegalTransition: the invoice is paid or already void.
        ConcurrentUpdate: another writer moved it first.
        InvalidInput: `now` has no timezone.
    """
    return _apply(engine, invoice_id, InvoiceAction.VOID, now=now, actor=actor, reason=reason)


def mark_paid(engine: Engine, invoice_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """Record that an issued (or written-off, paid late) invoice was paid.

    Raises:
        InvoiceNotFound: unknown id.
        IllegalTransition: the invoice is a draft, void or already paid.
        ConcurrentUpdate: another writer moved it first.
        InvalidInput: `now` has no timezone.
    """
    return _apply(engine, invoice_id, InvoiceAction.MARK_PAID, now=now, actor=actor, reason=reason)


def mark_uncollectible(engine: Engine, invoice_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """Write off an issued invoice; a later payment can still mark it paid.

    Raises:
        InvoiceNotFound: unknown id.
        IllegalTransition: the invoice is not issued.
        ConcurrentUpdate: another writer moved it first.
        InvalidInput: `now` has no timezone.
    """
    return _apply(engine, invoice_id, InvoiceAction.MARK_UNCOLLECTIBLE, now=now, actor=actor, reason=reason)


def get_invoice(engine: Engine, invoice_id: str) -> dict[str, Any]:
    """One invoice in its public JSON shape, with lines and status history.

    Raises:
        InvoiceNotFound: unknown id.
    """
    with Session(engine) as session:
        return _invoice_json(session, invoice_id)


def invoice_parties(engine: Engine, invoice_id: str) -> tuple[str, str]:
    """The display names on an invoice: (organization name, customer name), e.g. for the HTML page.

    Raises:
        InvoiceNotFound: unknown id.
    """
    with Session(engine) as session:
        row = session.execute(
            select(m.Organization.name, m.Customer.name)
            .join(m.Invoice, m.Invoice.organization_id == m.Organization.id)
            .join(
                m.Customer,
                (m.Customer.organization_id == m.Invoice.organization_id) & (m.Customer.id == m.Invoice.customer_id),
            )
            .where(m.Invoice.id == invoice_id)
        ).one_or_none()
    if row is None:
        raise InvoiceNotFound(f"no invoice with id {invoice_id!r}")
    organization_name, customer_name = row
    return organization_name, customer_name


def _apply(
    engine: Engine, invoice_id: str, action: InvoiceAction, *, now: datetime, actor: str, reason: str
) -> dict[str, Any]:
    """Validate and persist one status change in one transaction (see the module docstring)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInput(f"the time of a status change needs a timezone, got {now.isoformat()}")
    now = now.astimezone(UTC)
    with Session(engine) as session, session.begin():
        inv = _load(session, invoice_id)
        current = InvoiceStatus(inv.status)
        target = advance_invoice(current, action, subject=f"invoice {invoice_id}")
        values: dict[str, Any] = {"status": target.value}
        if action is InvoiceAction.ISSUE:
            values |= _issue_values(session, inv.organization_id, now)
        moved = session.execute(
            update(m.Invoice)
            .where(m.Invoice.id == invoice_id, m.Invoice.status == current.value)
            .values(**values)
            .returning(m.Invoice.id)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if moved is None:
            # Raising rolls back the whole transaction, including a number taken for an issue.
            raise ConcurrentUpdate(
                f"invoice {invoice_id} is no longer {current}: another change won the race to {action}; "
                "re-read it and retry"
            )
        _append_history(session, invoice_id, current, target, at=now, actor=actor, reason=reason)
        return _invoice_json(session, invoice_id)


def _issue_values(session: Session, organization_id: str, now: datetime) -> dict[str, Any]:
    """Number and dates an invoice gets when issued; bumps the organization's sequence."""
    org = session.get_one(m.Organization, organization_id)
    return {
        "number": _next_number(session, org, now.year),
        "issued_at": now,
        "due_at": now + timedelta(days=org.payment_terms_days),
    }


def _next_number(session: Session, org: m.Organization, year: int) -> str:
    """The organization's next gapless number (shared with the period close)."""
    return format_number(org.invoice_prefix, year, reserve_numbers(session, {org.id: 1}, year)[org.id])


def _append_history(
    session: Session,
    invoice_id: str,
    from_status: InvoiceStatus,
    to_status: InvoiceStatus,
    *,
    at: datetime,
    actor: str,
    reason: str,
) -> None:
    """Add the next history row; the CAS above holds the invoice's row lock, so seq is ours."""
    last = session.scalar(
        select(func.coalesce(func.max(m.InvoiceStatusChange.seq), 0)).where(
            m.InvoiceStatusChange.invoice_id == invoice_id
        )
    )
    session.execute(
        insert(m.InvoiceStatusChange).values(
            invoice_id=invoice_id,
            seq=int(last or 0) + 1,
            from_status=from_status.value,
            to_status=to_status.value,
            at=at,
            reason=reason,
            actor=actor,
        )
    )


def _load(session: Session, invoice_id: str) -> m.Invoice:
    """The invoice as stored now (bypassing anything the session cached).

    Raises:
        InvoiceNotFound: unknown id.
    """
    inv = session.get(m.Invoice, invoice_id, populate_existing=True)
    if inv is None:
        raise InvoiceNotFound(f"no invoice with id {invoice_id!r}")
    return inv


def _invoice_json(session: Session, invoice_id: str) -> dict[str, Any]:
    inv = _load(session, invoice_id)
    lines = list(session.scalars(select(m.InvoiceLine).where(m.InvoiceLine.invoice_id == invoice_id)))
    history = list(
        session.scalars(
            select(m.InvoiceStatusChange)
            .where(m.InvoiceStatusChange.invoice_id == invoice_id)
            .execution_options(populate_existing=True)
        )
    )
    return invoice_json(inv, lines, history)
