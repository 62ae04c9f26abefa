"""Invoice and credit-note operations, scoped by organization.

Each operation first resolves the id or number inside the caller's organization (another
organization's invoice is `InvoiceNotFound`, exactly like one that does not exist), then
calls the existing command or query (`invoicing.commands`, `invoicing.credit_notes`,
`invoicing.queries`) and returns the frozen read model from `schemas.api`.

Lists are cursor-paginated in a stable order: invoices by (period start, id), dead letters
by (topic, partition, offset). A cursor is opaque base64url JSON of the last row's key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select, tuple_
from sqlalchemy.orm import Session

from invoicing import commands
from invoicing import models as m
from invoicing.commands import InvoiceNotFound
from invoicing.credit_notes import CreditAll, CreditAmount, CreditLines, credit_invoice, get_credit_note
from invoicing.credit_notes import parse_credit_amount as _parse_amount
from invoicing.queries import credit_notes_of, invoice_json
from schemas.api import (
    CreditNote,
    CreditNoteRequest,
    DeadLetter,
    DeadLetterPage,
    Invoice,
    InvoicePage,
    InvoiceStatus,
)
from schemas.errors import InvalidParameter

MAX_LIMIT = 100
DEFAULT_LIMIT = 20

Command = Callable[..., dict[str, Any]]
ACTIONS: dict[str, tuple[Command, str]] = {
    "issue": (commands.issue_invoice, "issued by hand"),
    "void": (commands.void_invoice, "voided"),
    "mark-paid": (commands.mark_paid, "payment recorded"),
    "mark-uncollectible": (commands.mark_uncollectible, "written off"),
}


@dataclass(frozen=True)
class InvoiceFilter:
    customer: str | None = None
    subscription: str | None = None
    status: InvoiceStatus | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The key a cursor holds. Raises InvalidParameter("cursor") for anything this code did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (ValueError, binascii.Error):
        raise InvalidParameter("cursor", "not a cursor this API returned") from None
    if not isinstance(key, list) or len(key) != arity:
        raise InvalidParameter("cursor", "not a cursor this API returned")
    return key


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameter("limit", f"must be from 1 to {MAX_LIMIT}")


def resolve_invoice(session: Session, organization: str, id_or_number: str) -> str:
    """The id of the organization's invoice with this id or number. Raises InvoiceNotFound."""
    found = session.scalar(
        select(m.Invoice.id).where(
            m.Invoice.organization_id == organization,
            or_(m.Invoice.id == id_or_number, m.Invoice.number == id_or_number),
        )
    )
    if found is None:
        raise InvoiceNotFound(f"no invoice {id_or_number!r}")
    return found


def _resolve(engine: Engine, organization: str, id_or_number: str) -> str:
    with Session(engine) as session:
        return resolve_invoice(session, organization, id_or_number)


def get_invoice(engine: Engine, organization: str, id_or_number: str) -> Invoice:
    return Invoice.model_validate(commands.get_invoice(engine, _resolve(engine, organization, id_or_number)))


def invoice_document(engine: Engine, organization: str, id_or_number: str) -> tuple[dict[str, Any], str, str]:
    """The invoice JSON and its display names (organization, customer), for rendering the page."""
    invoice_id = _resolve(engine, organization, id_or_number)
    org_name, customer_name = commands.invoice_parties(engine, invoice_id)
    return commands.get_invoice(engine, invoice_id), org_name, customer_name


def list_invoices(engine: Engine, organization: str, flt: InvoiceFilter) -> InvoicePage:
    """One page of the organization's invoices, ordered by (period start, id)."""
    check_limit(flt.limit)
    inv = m.Invoice
    query = select(inv).where(inv.organization_id == organization)
    if flt.customer is not None:
        query = query.where(inv.customer_id == flt.customer)
    if flt.subscription is not None:
        query = query.where(inv.subscription_id == flt.subscription)
    if flt.status is not None:
        query = query.where(inv.status == flt.status.value)
    if flt.cursor is not None:
        after_start, after_id = decode_cursor(flt.cursor, 2)
        try:
            start = datetime.fromisoformat(str(after_start))
        except ValueError:
            raise InvalidParameter("cursor", "not a cursor this API returned") from None
        query = query.where(tuple_(inv.period_start, inv.id) > tuple_(start, str(after_id)))
    with Session(engine) as session:
        rows = list(session.scalars(query.order_by(inv.period_start, inv.id).limit(flt.limit + 1)))
        page, more = rows[: flt.limit], len(rows) > flt.limit
        data = [Invoice.model_validate(doc) for doc in _documents(session, page)]
    nxt = encode_cursor([page[-1].period_start.isoformat(), page[-1].id]) if more else None
    return InvoicePage(data=data, next_cursor=nxt)


def _documents(session: Session, invoices: list[m.Invoice]) -> list[dict[str, Any]]:
    """Invoice JSON for several invoices with one query per table (`invoicing.queries.invoice_json`)."""
    ids = [i.id for i in invoices]
    lines: dict[str, list[m.InvoiceLine]] = defaultdict(list)
    for line in session.scalars(select(m.InvoiceLine).where(m.InvoiceLine.invoice_id.in_(ids))):
        lines[line.invoice_id].append(line)
    history: dict[str, list[m.InvoiceStatusChange]] = defaultdict(list)
    for change in session.scalars(select(m.InvoiceStatusChange).where(m.InvoiceStatusChange.invoice_id.in_(ids))):
        history[change.invoice_id].append(change)
    notes = credit_notes_of(session, ids)
    return [invoice_json(i, lines[i.id], history[i.id], notes[i.id]) for i in invoices]


def move_invoice(
    engine: Engine, organization: str, id_or_number: str, action: str, *, now: datetime, actor: str, reason: str | None
) -> Invoice:
    """Issue, void, mark paid or mark uncollectible (`invoicing.commands`), in the caller's organization."""
    command, default_reason = ACTIONS[action]
    invoice_id = _resolve(engine, organization, id_or_number)
    return Invoice.model_validate(
        command(engine, invoice_id, now=now, actor=actor, reason=reason or default_reason)
    )


def credit(
    engine: Engine, organization: str, id_or_number: str, request: CreditNoteRequest, *, now: datetime, actor: str
) -> CreditNote:
    """Issue a credit note (`invoicing.credit_notes.credit_invoice`) against the organization's invoice."""
    what: CreditAll | CreditLines | CreditAmount
    if request.all:
        what = CreditAll()
    elif request.lines:
        what = CreditLines(tuple(request.lines))
    else:
        what = CreditAmount(_parse_amount(request.amount or ""))
    invoice_id = _resolve(engine, organization, id_or_number)
    note = credit_invoice(
        engine, invoice_id, what, now=now, actor=actor, reason=request.reason, organization=organization
    )
    return CreditNote.model_validate(note)


def credit_note(engine: Engine, organization: str, number_or_id: str) -> CreditNote:
    return CreditNote.model_validate(get_credit_note(engine, number_or_id, organization=organization))


def credit_note_document(engine: Engine, organization: str, number_or_id: str) -> tuple[dict[str, Any], str, str]:
    note = get_credit_note(engine, number_or_id, organization=organization)
    org_name, customer_name = commands.invoice_parties(engine, note["invoice"])
    return note, org_name, customer_name


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def dead_letters(engine: Engine, organization: str, *, limit: int, cursor: str | None) -> DeadLetterPage:
    """The organization's rejected records (those whose key named it), by topic, partition and offset."""
    check_limit(limit)
    dl = m.DeadLetter
    query = select(dl).where(dl.organization_id == organization)
    if cursor is not None:
        topic, partition, offset = decode_cursor(cursor, 3)
        if not isinstance(partition, int) or not isinstance(offset, int):
            raise InvalidParameter("cursor", "not a cursor this API returned")
        query = query.where(tuple_(dl.topic, dl.partition, dl.offset) > tuple_(str(topic), partition, offset))
    with Session(engine) as session:
        rows = list(session.scalars(query.order_by(dl.topic, dl.partition, dl.offset).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    data = [
        DeadLetter(
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            code=r.code,
            detail=r.detail,
            key=_text(r.key),
            value=_text(r.value),
        )
        for r in page
    ]
    nxt = encode_cursor([page[-1].topic, page[-1].partition, page[-1].offset]) if more else None
    return DeadLetterPage(data=data, next_cursor=nxt)
