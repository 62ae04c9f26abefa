"""Credit notes: the correction that takes an amount off an issued or paid invoice.

An issued invoice never changes. To correct one, void it and bill again, or issue a credit
note against it with `credit_invoice`: what remains creditable of the whole invoice
(`CreditAll`), the remainder of chosen lines in full (`CreditLines`), or an exact amount in
the invoice's currency (`CreditAmount`). Each credit note takes the next number of its own
gapless series (`ACME-CN-2026-000001`, see `invoicing.numbering`) and is final once written.

The caps: an invoice's credit notes never add up to more than its total, and the credits on
one of its lines never to more than that line's amount. `credit_invoice` keeps them in one
transaction:

1. lock the invoice's row (`SELECT ... FOR UPDATE`): credit notes, voids and payments of
   the same invoice queue there, and each sees what the one before it committed;
2. refuse unless the invoice is issued or paid;
3. read what earlier credit notes took, per invoice and per line, and plan the new lines
   with the pure `plan_credit`, which raises `OverCredit` when they do not fit;
4. take the next credit note number and insert the note and its lines.

The database backs the caps without writing the invoice's row: every note stores what was
credited before it and the total it was checked against, CHECKs keep
`credited_before + total <= invoice total` (and the same per line), and unique
`(invoice, credited_before)` keys let only one of two writers that started from the same
balance commit. A void locks the same row and is refused once a credit note exists
(`invoicing.commands.InvoiceHasCreditNotes`): voiding as well would correct twice.

Signs: all amounts are positive minor units; a credit note only ever subtracts.
`credited_minor` (invoice JSON) is the sum of an invoice's credit notes, and
`amount_due_minor` its total minus the credits issued before it was paid. A credit note on a
paid invoice (`after_payment`) leaves the amount due as it was when paid: that money is owed
back to the customer, which Valora records but, as with payments, does not move.

`CreditAll` credits each line's remainder in full when those add up to the invoice's
remainder, the usual case. After an amount credit (which belongs to no line), or on an
invoice with a negative line, they add up to more, and the lines are credited in their
invoice order until the invoice's remainder is used up.

The clock is injected (`now`), never read here.

Errors:

    ValoraError
    ├── InvalidInput (ValueError)          code "invalid_input"          (naive `now`, blank reason, line twice, …)
    │   └── InvalidCreditAmount            code "invalid_credit_amount"  (not a decimal, not > 0, too many decimals)
    ├── InvoiceNotFound (LookupError)      code "invoice_not_found"      (invoicing.commands)
    ├── InvoiceLineNotFound (LookupError)  code "invoice_line_not_found"
    ├── CreditNoteNotFound (LookupError)   code "credit_note_not_found"
    ├── InvoiceNotCreditable               code "invoice_not_creditable" (a draft, void or uncollectible invoice)
    └── OverCredit                         code "over_credit"            (more than remains of the invoice or a line)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, insert, or_, select
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.commands import InvoiceNotFound
from invoicing.lifecycle import InvoiceStatus, require_aware
from invoicing.numbering import CREDIT_NOTES, format_number, reserve_numbers
from invoicing.queries import rfc3339
from rating.money import exact_minor, format_minor
from schemas.errors import InvalidInput, ValoraError

CREDITABLE = frozenset({InvoiceStatus.ISSUED, InvoiceStatus.PAID})
AMOUNT_CREDIT_DESCRIPTION = "Credit on the invoice total"
_DECIMAL = re.compile(r"[+-]?\d+(?:\.\d+)?")


class InvalidCreditAmount(InvalidInput):
    """A credit amount that is not a plain decimal, not above zero, or finer than the currency's minor unit."""

    code = "invalid_credit_amount"


class InvoiceLineNotFound(ValoraError, LookupError):
    """The invoice has no line with this key."""

    code = "invoice_line_not_found"


class CreditNoteNotFound(ValoraError, LookupError):
    """No credit note has this number or id."""

    code = "credit_note_not_found"


class InvoiceNotCreditable(ValoraError):
    """Only issued and paid invoices take credit notes (a draft can still change, a void one owes nothing)."""

    code = "invoice_not_creditable"


class OverCredit(ValoraError):
    """The credit would take more than remains of the invoice total or of a line's amount; nothing was written."""

    code = "over_credit"


# --- what to credit (pure) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreditAll:
    """Credit everything that remains creditable of the invoice."""


@dataclass(frozen=True, slots=True)
class CreditLines:
    """Credit the remainder of each of these invoice lines, in full."""

    line_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CreditAmount:
    """Credit exactly this amount, in the invoice's currency (major units), against no line in particular."""

    amount: Decimal


CreditRequest = CreditAll | CreditLines | CreditAmount


@dataclass(frozen=True, slots=True)
class LineBalance:
    """An invoice line as a credit note sees it: its amount and what earlier credit notes took off it."""

    line_key: str
    description: str
    amount_minor: int
    credited_minor: int

    @property
    def remaining_minor(self) -> int:
        """What may still be credited on the line (never below zero: a negative line has nothing to credit)."""
        return max(self.amount_minor - self.credited_minor, 0)


@dataclass(frozen=True, slots=True)
class PlannedLine:
    """A credit note line to write; `line` is the invoice line it credits (None: an amount credit)."""

    description: str
    amount_minor: int
    line: LineBalance | None = None


def parse_credit_amount(text: str) -> Decimal:
    """A credit amount as typed ("12.50"), read exactly as a `Decimal`; checked against the currency later.

    Raises:
        InvalidCreditAmount: not a plain decimal number (no exponent, no separators).
    """
    if not _DECIMAL.fullmatch(text.strip()):
        raise InvalidCreditAmount(f"credit amount {text!r} is not a decimal number such as 12.50")
    return Decimal(text.strip())


def plan_credit(
    request: CreditRequest,
    *,
    subject: str,
    currency: str,
    total_minor: int,
    credited_minor: int,
    lines: Sequence[LineBalance],
) -> list[PlannedLine]:
    """The lines of a credit note for `request`, given what earlier notes credited (`lines` in invoice order).

    `subject` names the invoice in error messages. The lines never take more than remains
    of the invoice (`total_minor - credited_minor`) or of any invoice line.

    Raises:
        InvalidCreditAmount: an amount that is not > 0 or has more decimals than the currency allows.
        InvalidInput: a line key given twice.
        InvoiceLineNotFound: a line key the invoice does not have.
        OverCredit: nothing remains to credit, or the request takes more than remains.
    """
    remaining = total_minor - credited_minor
    if remaining <= 0:
        raise OverCredit(
            f"{subject} has nothing left to credit (credited {format_minor(credited_minor, currency)} "
            f"of {format_minor(total_minor, currency)} {currency})"
        )
    if isinstance(request, CreditAmount):
        planned = [PlannedLine(AMOUNT_CREDIT_DESCRIPTION, _amount_minor(request.amount, currency))]
    elif isinstance(request, CreditLines):
        chosen = _chosen(request, lines, subject, currency)
        planned = [PlannedLine(line.description, line.remaining_minor, line) for line in chosen]
    else:
        # Never empty: what remains of the invoice is at most what remains of its positive lines.
        planned = _all_lines(lines, remaining)
    asked = sum(p.amount_minor for p in planned)
    if asked > remaining:
        raise OverCredit(
            f"{subject} has {format_minor(remaining, currency)} {currency} left to credit "
            f"(credited {format_minor(credited_minor, currency)} of {format_minor(total_minor, currency)}); "
            f"cannot credit {format_minor(asked, currency)} {currency}"
        )
    return planned


def _amount_minor(amount: Decimal, currency: str) -> int:
    try:
        amount_minor = exact_minor(amount, currency)
    except InvalidInput as exc:
        raise InvalidCreditAmount(f"credit {exc}") from None
    if amount_minor <= 0:
        raise InvalidCreditAmount(f"credit amount {amount} must be greater than zero")
    return amount_minor


def _chosen(request: CreditLines, lines: Sequence[LineBalance], subject: str, currency: str) -> list[LineBalance]:
    """The requested lines in the order given, each with something left to credit."""
    if not request.line_keys:
        raise InvalidInput("name at least one invoice line to credit")
    by_key = {line.line_key: line for line in lines}
    chosen: list[LineBalance] = []
    for key in request.line_keys:
        line = by_key.get(key)
        if line is None:
            raise InvoiceLineNotFound(f"{subject} has no line {key!r} (lines: {', '.join(by_key) or 'none'})")
        if line in chosen:
            raise InvalidInput(f"line {key!r} is given twice")
        if line.remaining_minor == 0:
            raise OverCredit(
                f"line {key!r} of {subject} has nothing left to credit (credited "
                f"{format_minor(line.credited_minor, currency)} of {format_minor(line.amount_minor, currency)} "
                f"{currency})"
            )
        chosen.append(line)
    return chosen


def _all_lines(lines: Sequence[LineBalance], remaining: int) -> list[PlannedLine]:
    """Each line's remainder in invoice order, stopping once the invoice's remainder is used up."""
    planned = []
    for line in lines:
        take = min(line.remaining_minor, remaining)
        if take > 0:
            planned.append(PlannedLine(line.description, take, line))
            remaining -= take
    return planned


# --- writing and reading ---------------------------------------------------------------------


def credit_invoice(
    engine: Engine,
    invoice_id: str,
    request: CreditRequest,
    *,
    now: datetime,
    actor: str,
    reason: str,
    organization: str | None = None,
) -> dict[str, Any]:
    """Issue a credit note against an issued or paid invoice (see the module docstring); returns its JSON.

    `organization`, when given, must own the invoice (else `InvoiceNotFound`).

    Raises:
        InvoiceNotFound: unknown id (or another organization's).
        InvoiceNotCreditable: the invoice is a draft, void or uncollectible.
        InvoiceLineNotFound, OverCredit, InvalidCreditAmount: see `plan_credit`.
        InvalidInput: `now` has no timezone, the reason is blank, or a line is given twice.
    """
    require_aware(now)
    now = now.astimezone(UTC)
    if not reason.strip():
        raise InvalidInput("a credit note needs a reason")
    with Session(engine) as session, session.begin():
        inv = session.get(m.Invoice, invoice_id, with_for_update=True, populate_existing=True)
        if inv is None or organization not in (None, inv.organization_id):
            owner = f" in organization {organization!r}" if organization else ""
            raise InvoiceNotFound(f"no invoice with id {invoice_id!r}{owner}")
        subject = f"invoice {invoice_id}"
        if inv.status not in CREDITABLE:
            raise InvoiceNotCreditable(f"{subject} is {inv.status}: only issued or paid invoices can be credited")
        credited = _credited_minor(session, invoice_id)
        balances = _line_balances(session, invoice_id)
        planned = plan_credit(
            request,
            subject=subject,
            currency=inv.currency,
            total_minor=inv.total_minor,
            credited_minor=credited,
            lines=balances,
        )
        note_id = _write(session, inv, planned, credited, now=now, actor=actor, reason=reason.strip())
        return _credit_note_json(session, note_id)


def get_credit_note(engine: Engine, number_or_id: str, *, organization: str | None = None) -> dict[str, Any]:
    """One credit note, by id or by number, in its public JSON shape.

    Numbers are unique per organization; `organization` picks one when several share a number.

    Raises:
        CreditNoteNotFound: no such credit note (in that organization).
        InvalidInput: the number belongs to credit notes of several organizations.
    """
    with Session(engine) as session:
        query = select(m.CreditNote.id, m.CreditNote.organization_id).where(
            or_(m.CreditNote.id == number_or_id, m.CreditNote.number == number_or_id)
        )
        if organization is not None:
            query = query.where(m.CreditNote.organization_id == organization)
        found = session.execute(query.order_by(m.CreditNote.organization_id)).all()
        if not found:
            owner = f" in organization {organization!r}" if organization else ""
            raise CreditNoteNotFound(f"no credit note with number or id {number_or_id!r}{owner}")
        if len(found) > 1:
            orgs = ", ".join(org for _, org in found)
            raise InvalidInput(f"credit note {number_or_id!r} exists in organizations {orgs}: pass --org")
        return _credit_note_json(session, found[0].id)


def credit_note_id(organization_id: str, number: str) -> str:
    """Deterministic id: the same organization and number always name the same credit note."""
    digest = hashlib.sha256(f"{organization_id}\x1f{number}".encode()).hexdigest()
    return f"cn_{digest[:24]}"


def _credited_minor(session: Session, invoice_id: str) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(m.CreditNote.total_minor), 0)).where(m.CreditNote.invoice_id == invoice_id)
    )
    return int(total or 0)


def _line_balances(session: Session, invoice_id: str) -> list[LineBalance]:
    """The invoice's lines in invoice order, each with what earlier credit notes took off it."""
    credited = (
        select(m.CreditNoteLine.line_key, func.sum(m.CreditNoteLine.amount_minor).label("minor"))
        .where(m.CreditNoteLine.invoice_id == invoice_id, m.CreditNoteLine.line_key.is_not(None))
        .group_by(m.CreditNoteLine.line_key)
        .subquery()
    )
    rows = session.execute(
        select(
            m.InvoiceLine.line_key,
            m.InvoiceLine.description,
            m.InvoiceLine.amount_minor,
            func.coalesce(credited.c.minor, 0),
        )
        .outerjoin(credited, credited.c.line_key == m.InvoiceLine.line_key)
        .where(m.InvoiceLine.invoice_id == invoice_id)
        .order_by(m.InvoiceLine.position)
    ).all()
    return [LineBalance(key, description, amount, int(done)) for key, description, amount, done in rows]


def _write(
    session: Session,
    inv: m.Invoice,
    planned: list[PlannedLine],
    credited_before: int,
    *,
    now: datetime,
    actor: str,
    reason: str,
) -> str:
    """Number the credit note and insert it with its lines; returns its id."""
    org = session.get_one(m.Organization, inv.organization_id)
    first = reserve_numbers(session, {org.id: 1}, now.year, CREDIT_NOTES)[org.id]
    number = format_number(org.invoice_prefix, now.year, first, CREDIT_NOTES)
    note_id = credit_note_id(org.id, number)
    session.execute(
        insert(m.CreditNote).values(
            id=note_id,
            organization_id=org.id,
            invoice_id=inv.id,
            number=number,
            currency=inv.currency,
            reason=reason,
            actor=actor,
            issued_at=now,
            after_payment=inv.status == InvoiceStatus.PAID.value,
            invoice_total_minor=inv.total_minor,
            credited_before_minor=credited_before,
            total_minor=sum(p.amount_minor for p in planned),
        )
    )
    session.execute(
        insert(m.CreditNoteLine),
        [
            {
                "credit_note_id": note_id,
                "position": position,
                "invoice_id": inv.id,
                "line_key": p.line.line_key if p.line else None,
                "description": p.description,
                "amount_minor": p.amount_minor,
                "line_amount_minor": p.line.amount_minor if p.line else None,
                "line_credited_before_minor": p.line.credited_minor if p.line else None,
            }
            for position, p in enumerate(planned, start=1)
        ],
    )
    return note_id


def _credit_note_json(session: Session, note_id: str) -> dict[str, Any]:
    """One credit note in its public JSON shape; stable key order, lines in note order."""
    note = session.get_one(m.CreditNote, note_id, populate_existing=True)
    inv = session.get_one(m.Invoice, note.invoice_id)
    lines = session.scalars(
        select(m.CreditNoteLine).where(m.CreditNoteLine.credit_note_id == note_id).order_by(m.CreditNoteLine.position)
    )
    return {
        "id": note.id,
        "number": note.number,
        "organization": note.organization_id,
        "invoice": note.invoice_id,
        "invoice_number": inv.number,
        "customer": inv.customer_id,
        "subscription": inv.subscription_id,
        "currency": note.currency,
        "issued_at": rfc3339(note.issued_at),
        "reason": note.reason,
        "actor": note.actor,
        "after_payment": note.after_payment,
        "lines": [
            {"line_key": line.line_key, "description": line.description, "amount_minor": line.amount_minor}
            for line in lines
        ],
        "total_minor": note.total_minor,
        "invoice_total_minor": note.invoice_total_minor,
        "credited_before_minor": note.credited_before_minor,
    }
