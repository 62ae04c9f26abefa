"""Invoice state commands: issue, void, mark paid, mark uncollectible, read one invoice; issue due drafts.

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

`issue_due_drafts` is the scheduler's `issue_drafts` job: it issues, in batches, the drafts
the close wrote for an organization with a draft grace period once `issue_after` has
passed. A draft issued or voided by hand before that is no longer a draft, so the job
never sees it again (every move also clears `issue_after`; a CHECK allows it on drafts only).
Hand issues lock the invoice before taking a number and the job claims with `SKIP LOCKED`,
so the two can run in parallel: each draft is issued once and numbering stays gapless.

A void is refused once the invoice has a credit note (`InvoiceHasCreditNotes`): the credit
already corrected part of it, and a void on top would correct that part twice. The void locks
the invoice's row before it looks, as `invoicing.credit_notes.credit_invoice` does before it
credits, so a racing credit note and void cannot both commit.

The clock is injected (`now`), never read here.

Errors:

    ValoraError
    ├── InvalidInput (ValueError)                 code "invalid_input"  (a `now` without a timezone)
    ├── IllegalTransition (invoicing.lifecycle)   code "illegal_transition"
    ├── ConcurrentUpdate                          code "concurrent_update"
    ├── InvoiceHasCreditNotes                     code "invoice_has_credit_notes"
    └── InvoiceNotFound (LookupError)             code "invoice_not_found"
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.lifecycle import InvoiceAction, InvoiceStatus, advance_invoice, require_aware
from invoicing.numbering import format_number, reserve_numbers
from invoicing.queries import credit_notes_of, invoice_json
from schemas.errors import ValoraError

DRAFT_GRACE_OVER = "draft grace period over"


class InvoiceNotFound(ValoraError, LookupError):
    """No invoice has this id."""

    code = "invoice_not_found"


class ConcurrentUpdate(ValoraError):
    """Another writer changed the invoice's status after we read it; nothing was written."""

    code = "concurrent_update"


class InvoiceHasCreditNotes(ValoraError):
    """The invoice has credit notes, so it cannot be voided (that would correct it twice); nothing was written."""

    code = "invoice_has_credit_notes"


def issue_invoice(engine: Engine, invoice_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """Issue a draft: give it the next gapless number, `issued_at = now` and its due date.

    Raises:
        InvoiceNotFound: unknown id.
        IllegalTransition: the invoice is not a draft.
        ConcurrentUpdate: another writer moved it first.
        InvalidInput: `now` has no timezone.
    """
    return _apply(engine, invoice_id, InvoiceAction.ISSUE, now=now, actor=actor, reason=reason)


def issue_due_drafts(
    engine: Engine,
    *,
    now: datetime,
    actor: str = "scheduler",
    limit: int = 500,
    statement_timeout_ms: int | None = None,
) -> int:
    """Issue every draft whose grace period is over (`issue_after <= now`); returns how many were issued.

    One transaction per batch of `limit`: claim drafts with `FOR UPDATE SKIP LOCKED` (so
    parallel jobs, and hand issues holding a row, are skipped rather than waited for),
    reserve the batch's gapless numbers per organization and give them out in the order
    organization, period start, subscription; set `issued_at = now`, the due date and a
    history row each. A job run alone numbers all due drafts in that order; racing jobs each
    number their own batches in it, and the sequence row keeps numbers gapless either way.

    Raises:
        InvalidInput: `now` has no timezone.
    """
    require_aware(now)
    now = now.astimezone(UTC)
    target = advance_invoice(InvoiceStatus.DRAFT, InvoiceAction.ISSUE, subject="a draft")
    issued = 0
    while True:
        with Session(engine) as session, session.begin():
            if statement_timeout_ms is not None:
                session.execute(text(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"))
            claimed = session.execute(
                select(m.Invoice.id, m.Invoice.organization_id)
                .where(m.Invoice.status == InvoiceStatus.DRAFT.value, m.Invoice.issue_after <= now)
                .order_by(m.Invoice.organization_id, m.Invoice.period_start, m.Invoice.subscription_id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if claimed:
                _issue_claimed(session, [(row.id, row.organization_id) for row in claimed], target, now, actor)
        issued += len(claimed)
        if len(claimed) < limit:
            return issued


def _issue_claimed(
    session: Session, claimed: list[tuple[str, str]], target: InvoiceStatus, now: datetime, actor: str
) -> None:
    """Number, date and record the claimed drafts (locked by this transaction, in numbering order)."""
    orgs = {
        o.id: o for o in session.scalars(select(m.Organization).where(m.Organization.id.in_({o for _, o in claimed})))
    }
    counts = Counter(org for _, org in claimed)
    firsts = reserve_numbers(session, counts, now.year)
    taken: Counter[str] = Counter()
    numbers, dues = [], []
    for _, org in claimed:
        numbers.append(format_number(orgs[org].invoice_prefix, now.year, firsts[org] + taken[org]))
        taken[org] += 1
        dues.append(now + timedelta(days=orgs[org].payment_terms_days))
    ids = [invoice_id for invoice_id, _ in claimed]
    session.execute(
        text(
            "UPDATE invoices i SET status = :status, number = u.num, issued_at = :now, due_at = u.due, "
            "issue_after = NULL FROM unnest(CAST(:ids AS text[]), CAST(:nums AS text[]), "
            "CAST(:dues AS timestamptz[])) AS u(id, num, due) WHERE i.id = u.id"
        ),
        {"status": target.value, "now": now, "ids": ids, "nums": numbers, "dues": dues},
    )
    session.execute(
        text(
            "INSERT INTO invoice_status_history (invoice_id, seq, from_status, to_status, at, reason, actor) "
            "SELECT u.id, coalesce((SELECT max(h.seq) FROM invoice_status_history h WHERE h.invoice_id = u.id), 0) "
            "+ 1, :from_status, :to_status, :now, :reason, :actor FROM unnest(CAST(:ids AS text[])) AS u(id)"
        ),
        {
            "from_status": InvoiceStatus.DRAFT.value,
            "to_status": target.value,
            "now": now,
            "reason": DRAFT_GRACE_OVER,
            "actor": actor,
            "ids": ids,
        },
    )


def void_invoice(engine: Engine, invoice_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """Void a draft, issued or uncollectible invoice; its number stays used (no gap).

    Raises:
        InvoiceNotFound: unknown id.
        IllegalTransition: the invoice is paid or already void.
        InvoiceHasCreditNotes: a credit note was issued against it.
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
        return invoice_json_locked(session, invoice_id)


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
    require_aware(now)
    with Session(engine) as session, session.begin():
        return move_invoice(session, invoice_id, action, now=now.astimezone(UTC), actor=actor, reason=reason)


def move_invoice(
    session: Session, invoice_id: str, action: InvoiceAction, *, now: datetime, actor: str, reason: str
) -> dict[str, Any]:
    """One status change inside the caller's transaction (steps 1-5 of the module docstring)."""
    inv = load_invoice(session, invoice_id)
    current = InvoiceStatus(inv.status)
    target = advance_invoice(current, action, subject=f"invoice {inv.number or invoice_id}")
    # Every move leaves draft (or was never in it), so a draft's grace deadline never outlives it.
    values: dict[str, Any] = {"status": target.value, "issue_after": None}
    if action is InvoiceAction.ISSUE:
        _lock_unchanged(session, invoice_id, current, action)
        values |= issue_values(session, inv.organization_id, now)
    elif action is InvoiceAction.VOID:
        _lock_unchanged(session, invoice_id, current, action)  # credit notes are written under this lock
        _refuse_if_credited(session, invoice_id)
    moved = session.execute(
        update(m.Invoice)
        .where(m.Invoice.id == invoice_id, m.Invoice.status == current.value)
        .values(**values)
        .returning(m.Invoice.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if moved is None:
        # Raising rolls back the whole transaction, including a number taken for an issue.
        raise _lost_race(invoice_id, current, action)
    _append_history(session, invoice_id, current, target, at=now, actor=actor, reason=reason)
    return invoice_json_locked(session, invoice_id)


def _lost_race(invoice_id: str, current: InvoiceStatus, action: InvoiceAction) -> ConcurrentUpdate:
    return ConcurrentUpdate(
        f"invoice {invoice_id} is no longer {current}: another change to it came first ({action.replace('_', ' ')} "
        "not done); re-read it and retry"
    )


def _lock_unchanged(session: Session, invoice_id: str, current: InvoiceStatus, action: InvoiceAction) -> None:
    """Lock the invoice's row if it is still `current` (the compare-and-set's first half).

    Issuing locks the invoice before it takes a number, in the same order as the
    `issue_drafts` job (invoice rows, then the sequence row), so the two never deadlock; a
    row another writer moved meanwhile fails the re-checked `WHERE` and nothing is taken.

    Raises:
        ConcurrentUpdate: another writer moved the invoice first.
    """
    locked = session.execute(
        select(m.Invoice.id).where(m.Invoice.id == invoice_id, m.Invoice.status == current.value).with_for_update()
    ).scalar_one_or_none()
    if locked is None:
        raise _lost_race(invoice_id, current, action)


def _refuse_if_credited(session: Session, invoice_id: str) -> None:
    """Raises InvoiceHasCreditNotes when a credit note was issued against the invoice."""
    numbers = list(
        session.scalars(
            select(m.CreditNote.number)
            .where(m.CreditNote.invoice_id == invoice_id)
            .order_by(m.CreditNote.credited_before_minor)
        )
    )
    if numbers:
        raise InvoiceHasCreditNotes(
            f"invoice {invoice_id} has credit notes ({', '.join(numbers)}): cannot void; "
            "a void would correct what they already corrected"
        )


def issue_values(session: Session, organization_id: str, now: datetime) -> dict[str, Any]:
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


def load_invoice(session: Session, invoice_id: str) -> m.Invoice:
    """The invoice as stored now (bypassing anything the session cached).

    Raises:
        InvoiceNotFound: unknown id.
    """
    inv = session.get(m.Invoice, invoice_id, populate_existing=True)
    if inv is None:
        raise InvoiceNotFound(f"no invoice with id {invoice_id!r}")
    return inv


def invoice_json_locked(session: Session, invoice_id: str) -> dict[str, Any]:
    inv = load_invoice(session, invoice_id)
    lines = list(session.scalars(select(m.InvoiceLine).where(m.InvoiceLine.invoice_id == invoice_id)))
    history = list(
        session.scalars(
            select(m.InvoiceStatusChange)
            .where(m.InvoiceStatusChange.invoice_id == invoice_id)
            .execution_options(populate_existing=True)
        )
    )
    return invoice_json(inv, lines, history, credit_notes_of(session, [invoice_id])[invoice_id])
