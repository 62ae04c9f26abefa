"""The HTTP API's contract: typed inputs and frozen read models.

The operations in `invoicing.operations` take the inputs and return the read models; the
app shell (`valora.api`) serves them and FastAPI derives the OpenAPI document from them.
Golden JSON Schemas of every model live in `schemas/json/api/` (tests/test_api_schemas.py),
so a contract change shows up in review like a wire change does.

Conventions: timestamps are RFC 3339 UTC (`Z`), money is integer minor units with a
currency, quantities and other exact decimals are strings. Inputs reject unknown fields;
read models ignore fields the operations add later (the golden files catch those).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

DECIMAL_PATTERN = r"^-?\d+(\.\d+)?$"
DecimalText = Annotated[str, Field(pattern=DECIMAL_PATTERN, examples=["12.5"])]
MAX_REASON = 500


class _Input(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Read(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Scope(StrEnum):
    """What an API key may do: `resource:action`, checked on every route."""

    EVENTS_WRITE = "events:write"
    USAGE_READ = "usage:read"
    CATALOG_READ = "catalog:read"
    CATALOG_WRITE = "catalog:write"
    SUBSCRIPTIONS_WRITE = "subscriptions:write"
    INVOICES_READ = "invoices:read"
    INVOICES_WRITE = "invoices:write"


# --- problems and keys -------------------------------------------------------------------


class Problem(_Read):
    """RFC 9457 problem details, with Valora's stable error `code`."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    field: str | None = None


class ApiKey(_Read):
    """An API key as listed: never its secret."""

    id: str
    organization: str
    name: str | None
    scopes: list[Scope]
    created_at: AwareDatetime
    expires_at: AwareDatetime | None
    revoked_at: AwareDatetime | None


class CreatedApiKey(ApiKey):
    """A new key: the only time its `secret` is shown."""

    secret: str


# --- events ---------------------------------------------------------------------------------


class EventResult(_Read):
    """One posted event: accepted (produced to the events topic) or rejected with a reason code."""

    index: int
    id: str | None
    status: str = Field(pattern="^(accepted|rejected)$")
    code: str | None = None
    detail: str | None = None


class IngestResult(_Read):
    accepted: int
    rejected: int
    results: list[EventResult]


# --- usage ------------------------------------------------------------------------------------


class RatedLine(_Read):
    charge: str
    kind: str
    quantity: DecimalText
    amount_minor: int
    description: str
    service_start: AwareDatetime
    service_end: AwareDatetime


class UsageSegment(_Read):
    plan: str
    start: AwareDatetime
    end: AwareDatetime
    meters: dict[str, DecimalText]


class SubscriptionUsage(_Read):
    """The current period so far: the same JSON `valora usage --json` prints for the subscription."""

    organization: str
    subscription: str
    customer: str
    plan: str
    currency: str
    period_start: AwareDatetime
    period_end: AwareDatetime
    meters: dict[str, DecimalText]
    segments: list[UsageSegment]
    lines: list[RatedLine]
    subtotal_minor: int
    total_minor: int


class InvoicePreview(_Read):
    """The invoice the current period's close would write now (without later usage or late adjustments)."""

    organization: str
    customer: str
    subscription: str
    status: str = "preview"
    currency: str
    period_start: AwareDatetime
    period_end: AwareDatetime
    lines: list[RatedLine]
    subtotal_minor: int
    total_minor: int


class Window(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class MeterQueryRow(_Read):
    window_start: AwareDatetime
    window_end: AwareDatetime
    customer: str | None = None
    group: dict[str, str | None] = Field(default_factory=dict)
    value: DecimalText


class MeterQueryResult(_Read):
    meter: str
    aggregation: str
    window: Window | None
    data: list[MeterQueryRow]


# --- invoices and credit notes ----------------------------------------------------------------


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    ISSUED = "issued"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class InvoiceLine(_Read):
    line_key: str
    charge: str
    kind: str
    description: str
    quantity: DecimalText
    amount: DecimalText
    amount_minor: int
    service_start: AwareDatetime
    service_end: AwareDatetime
    details: dict[str, Any] | None = None


class StatusChange(_Read):
    from_: str | None = Field(alias="from")
    to: str
    at: AwareDatetime
    reason: str
    actor: str


class InvoiceCreditNote(_Read):
    number: str
    issued_at: AwareDatetime
    total_minor: int
    after_payment: bool
    reason: str


class Invoice(_Read):
    id: str
    number: str | None
    organization: str
    customer: str
    subscription: str
    status: InvoiceStatus
    currency: str
    period_start: AwareDatetime
    period_end: AwareDatetime
    issued_at: AwareDatetime | None
    due_at: AwareDatetime | None
    lines: list[InvoiceLine]
    subtotal_minor: int
    total_minor: int
    status_history: list[StatusChange]
    credited_minor: int
    amount_due_minor: int
    credit_notes: list[InvoiceCreditNote]
    billing_reason: str


class InvoicePage(_Read):
    """One page of a list, in a stable order; pass `next_cursor` back as `cursor` for the next page."""

    data: list[Invoice]
    next_cursor: str | None


class CreditNoteLine(_Read):
    line_key: str | None
    description: str
    amount_minor: int


class CreditNote(_Read):
    id: str
    number: str
    organization: str
    invoice: str
    invoice_number: str | None
    customer: str
    subscription: str
    currency: str
    issued_at: AwareDatetime
    reason: str
    actor: str
    after_payment: bool
    lines: list[CreditNoteLine]
    total_minor: int
    invoice_total_minor: int
    credited_before_minor: int


class InvoiceAction(_Input):
    """A status move; `reason` is recorded in the invoice's status history."""

    reason: str | None = Field(default=None, min_length=1, max_length=MAX_REASON)


class CreditNoteRequest(_Input):
    """Credit what remains (`all`), the remainder of some lines (`lines`), or an exact `amount`: exactly one."""

    reason: str = Field(min_length=1, max_length=MAX_REASON)
    all: bool = False
    lines: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=500
    )
    amount: DecimalText | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CreditNoteRequest:
        chosen = [name for name, on in (("all", self.all), ("lines", self.lines), ("amount", self.amount)) if on]
        if len(chosen) != 1:
            raise ValueError("give exactly one of all, lines, amount")
        return self


class DeadLetter(_Read):
    topic: str
    partition: int
    offset: int
    code: str
    detail: str
    key: str | None
    value: str | None


class DeadLetterPage(_Read):
    data: list[DeadLetter]
    next_cursor: str | None


# --- catalog and subscriptions -------------------------------------------------------------


class MeterOut(_Read):
    key: str
    event_type: str
    aggregation: str
    value_property: str | None
    filters: dict[str, list[Any]] | None


class CustomerOut(_Read):
    id: str
    name: str


class PlanOut(_Read):
    code: str
    currency: str
    spec: dict[str, Any]


class SubscriptionOut(_Read):
    organization: str
    id: str
    customer: str
    plan: str
    status: str
    cancel_at_period_end: bool
    start_at: AwareDatetime
    billing_anchor: AwareDatetime
    trial_end: AwareDatetime | None
    end_at: AwareDatetime | None
    canceled_at: AwareDatetime | None
    next_period_start: AwareDatetime
    next_close_at: AwareDatetime | None
    status_history: list[dict[str, Any]]
    plan_changes: list[dict[str, Any]]


class CancelRequest(_Input):
    at_period_end: bool = False
    reason: str | None = Field(default=None, min_length=1, max_length=MAX_REASON)


class RevokeCancelRequest(_Input):
    reason: str | None = Field(default=None, min_length=1, max_length=MAX_REASON)


class ChangePlanRequest(_Input):
    plan: str = Field(min_length=1, max_length=128)
    at: AwareDatetime | None = None
    reason: str | None = Field(default=None, min_length=1, max_length=MAX_REASON)


def models_for_golden() -> dict[str, type[BaseModel]]:
    """Every API model with a golden JSON Schema file (schemas/json/api/<name>.json)."""
    return {
        cls.__name__: cls
        for cls in (
            Problem, ApiKey, CreatedApiKey, EventResult, IngestResult, SubscriptionUsage, InvoicePreview,
            MeterQueryResult, Invoice, InvoicePage, CreditNote, InvoiceAction, CreditNoteRequest, DeadLetterPage,
            MeterOut, CustomerOut, PlanOut, SubscriptionOut, MeterList, PlanList, CustomerList, SubscriptionList,
            CancelRequest, RevokeCancelRequest, ChangePlanRequest,
        )
    }


def utc_text(value: datetime) -> str:
    """An aware timestamp as the API writes it (UTC, trailing Z)."""
    return value.isoformat().replace("+00:00", "Z")


class MeterList(_Read):
    data: list[MeterOut]
    next_cursor: str | None


class PlanList(_Read):
    data: list[PlanOut]
    next_cursor: str | None


class CustomerList(_Read):
    data: list[CustomerOut]
    next_cursor: str | None


class SubscriptionList(_Read):
    data: list[SubscriptionOut]
    next_cursor: str | None
