"""The one table from Valora's error codes to HTTP statuses (RFC 9457 problems) and CLI exits.

Every error Valora raises on purpose is a `ValoraError` with a stable `code` (the tree is in
`schemas/errors.py`). `kind_of` finds the entry of an exception's nearest class in
`TABLE`; the API turns it into `application/problem+json` and the CLI can print
`cli_line` and exit with `cli_exit`. An error class missing here falls back to its
parent's entry (a LookupError-like `…NotFound` to 404 through `ResourceNotFound` only if
listed, so add new classes here when you add them to the tree).
"""

from __future__ import annotations

from dataclasses import dataclass

from invoicing.catalog import InvalidCatalog
from invoicing.catalog_guards import BilledHistoryChange
from invoicing.commands import ConcurrentUpdate, InvoiceHasCreditNotes, InvoiceNotFound
from invoicing.credit_notes import (
    CreditNoteNotFound,
    InvalidCreditAmount,
    InvoiceLineNotFound,
    InvoiceNotCreditable,
    OverCredit,
)
from invoicing.db import DatabaseUnavailable, SchemaOutOfDate
from invoicing.lifecycle import IllegalTransition
from invoicing.operations.keys import ApiKeyNotFound, MissingScope, Unauthenticated
from invoicing.operations.usage import NoCurrentPeriod
from invoicing.plan_changes import PlanChangeRefused, PlanNotFound
from invoicing.reissue import InvoiceNotReissuable
from invoicing.subscriptions import SubscriptionNotFound
from schemas.errors import InvalidInput, InvalidParameter, InvalidPlan, ResourceNotFound, ValoraError
from streams.ingest import BrokerUnavailable, PayloadTooLarge

PROBLEM_TYPE = "urn:valora:problem:"


class MethodNotAllowed(ValoraError):
    code = "method_not_allowed"


class UnsupportedMediaType(ValoraError):
    code = "unsupported_media_type"


class InternalError(ValoraError):
    code = "internal_error"


@dataclass(frozen=True)
class ErrorKind:
    status: int
    title: str
    cli_exit: int = 1


TABLE: dict[type[BaseException], ErrorKind] = {
    ValoraError: ErrorKind(500, "Internal error"),
    InternalError: ErrorKind(500, "Internal error"),
    InvalidInput: ErrorKind(422, "Invalid input"),
    InvalidParameter: ErrorKind(422, "Invalid input"),
    InvalidPlan: ErrorKind(422, "Invalid plan"),
    InvalidCatalog: ErrorKind(422, "Invalid catalog entry"),
    BilledHistoryChange: ErrorKind(409, "Would rewrite billed history"),
    InvalidCreditAmount: ErrorKind(422, "Invalid credit amount"),
    InvoiceLineNotFound: ErrorKind(422, "No such invoice line"),
    PlanNotFound: ErrorKind(422, "No such plan"),
    OverCredit: ErrorKind(422, "Credit exceeds what remains"),
    ResourceNotFound: ErrorKind(404, "Not found"),
    InvoiceNotFound: ErrorKind(404, "Not found"),
    CreditNoteNotFound: ErrorKind(404, "Not found"),
    SubscriptionNotFound: ErrorKind(404, "Not found"),
    ApiKeyNotFound: ErrorKind(404, "Not found"),
    IllegalTransition: ErrorKind(409, "Not allowed in the current state"),
    ConcurrentUpdate: ErrorKind(409, "Changed concurrently; re-read and retry"),
    InvoiceHasCreditNotes: ErrorKind(409, "Invoice has credit notes"),
    InvoiceNotCreditable: ErrorKind(409, "Invoice cannot be credited"),
    InvoiceNotReissuable: ErrorKind(409, "Invoice cannot be reissued"),
    PlanChangeRefused: ErrorKind(409, "Plan change refused"),
    NoCurrentPeriod: ErrorKind(409, "No current billing period"),
    Unauthenticated: ErrorKind(401, "Unauthenticated"),
    MissingScope: ErrorKind(403, "Forbidden"),
    MethodNotAllowed: ErrorKind(405, "Method not allowed"),
    UnsupportedMediaType: ErrorKind(415, "Unsupported media type"),
    PayloadTooLarge: ErrorKind(413, "Payload too large"),
    BrokerUnavailable: ErrorKind(503, "Broker unavailable"),
    DatabaseUnavailable: ErrorKind(503, "Database unavailable"),
    SchemaOutOfDate: ErrorKind(503, "Database schema out of date"),
}


def kind_of(exc: BaseException) -> ErrorKind:
    """The table entry of the exception's nearest listed class (500 for anything else)."""
    return kind_for_class(type(exc))


def kind_for_class(error: type[BaseException]) -> ErrorKind:
    for cls in error.__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return TABLE[InternalError]


def code_of(exc: BaseException) -> str:
    return exc.code if isinstance(exc, ValoraError) else InternalError.code


def problem(exc: BaseException, *, detail: str | None = None) -> dict[str, object]:
    """The RFC 9457 body for an exception (`field` when one named input is at fault)."""
    kind, code = kind_of(exc), code_of(exc)
    body: dict[str, object] = {
        "type": PROBLEM_TYPE + code,
        "title": kind.title,
        "status": kind.status,
        "detail": detail if detail is not None else (str(exc) if isinstance(exc, ValoraError) else kind.title),
        "code": code,
    }
    field = getattr(exc, "field", None)
    if isinstance(field, str):
        body["field"] = field
    return body


def cli_line(exc: BaseException) -> str:
    """The one line the CLI prints for an expected error."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return f"valora: error: {text}"
