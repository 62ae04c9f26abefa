"""Routes for ingestion, usage, invoices, credit notes and dead letters.

Each route: the caller (key → organization, scope checked), then one operation with that
organization. Sync routes run in FastAPI's thread pool (the operations use blocking SQL);
`POST /v1/events` is async so many requests can wait on Kafka acknowledgements at once.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import AwareDatetime

from invoicing.html import render_credit_note_html, render_invoice_html
from invoicing.operations import invoices as inv_ops
from invoicing.operations import usage as usage_ops
from invoicing.operations.keys import Principal
from schemas.api import (
    CreditNote,
    CreditNoteRequest,
    DeadLetterPage,
    EventResult,
    IngestResult,
    Invoice,
    InvoiceAction,
    InvoicePage,
    InvoicePreview,
    InvoiceStatus,
    MeterQueryResult,
    Scope,
    SubscriptionUsage,
    Window,
)
from schemas.events import CloudEvent, NativeEvent
from streams.ingest import MAX_BATCH, MAX_BODY_BYTES, check_events, split_body
from valora.api.deps import actor, body_of, caller, context, read_body
from valora.api.docs import REF, body, model_ref, problems, register_components
from valora.problems import UnsupportedMediaType

router = APIRouter()

_EVENT_TYPES = {
    "application/json": None,
    "application/cloudevents+json": "object",
    "application/cloudevents-batch+json": "array",
}


def _event_body_doc() -> dict[str, Any]:
    (native, cloud), components = msgspec.json.schema_components(
        [NativeEvent, CloudEvent], ref_template=REF.replace("{model}", "{name}")
    )
    register_components(components)
    single = {"oneOf": [native, cloud]}
    many = {"type": "array", "items": single, "minItems": 1, "maxItems": MAX_BATCH}
    content = {
        "application/json": {"schema": {"oneOf": [single, many]}},
        "application/cloudevents+json": {"schema": cloud},
        "application/cloudevents-batch+json": {"schema": {**many, "items": cloud}},
    }
    return {"requestBody": {"required": True, "content": content}}


@router.post(
    "/v1/events",
    status_code=202,
    response_model=IngestResult,
    responses=problems("413", "415", "422", "503"),
    openapi_extra=_event_body_doc(),
    summary="Post usage events",
    description=(
        f"One event or an array of them (native or CloudEvents 1.0), at most {MAX_BATCH} events and "
        f"{MAX_BODY_BYTES} bytes per request. Each is checked with the worker's decoder under the key's "
        "organization; valid ones are produced to the events topic, and the answer lists each event's result."
    ),
)
async def post_events(request: Request, principal: Principal = caller(Scope.EVENTS_WRITE)) -> IngestResult:
    ctx = context(request)
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media not in _EVENT_TYPES:
        raise UnsupportedMediaType(f"content type {media!r}: use one of {', '.join(_EVENT_TYPES)}")
    values = split_body(await read_body(request), expect=_EVENT_TYPES[media])
    checked = check_events(
        principal.organization,
        values,
        now=ctx.clock(),
        future_tolerance=ctx.future_tolerance,
        cloudevents_only=media != "application/json",
    )
    valid = [c.value for c in checked if c.rejection is None]
    if ctx.producer is None:
        raise RuntimeError("the API was started without a producer")
    await ctx.producer.send(principal.organization, valid)
    results = [
        EventResult(index=c.index, id=c.event_id, status="accepted")
        if c.rejection is None
        else EventResult(index=c.index, id=None, status="rejected", code=c.rejection.code, detail=c.rejection.detail)
        for c in checked
    ]
    return IngestResult(accepted=len(valid), rejected=len(checked) - len(valid), results=results)


@router.get(
    "/v1/subscriptions/{subscription}/usage",
    response_model=SubscriptionUsage,
    responses=problems("404", "409"),
    summary="The current period's usage and amounts so far (as `valora usage --json`)",
)
def get_usage(
    request: Request, subscription: str, principal: Principal = caller(Scope.USAGE_READ)
) -> SubscriptionUsage:
    ctx = context(request)
    return usage_ops.subscription_usage(ctx.engine, principal.organization, subscription, at=ctx.clock())


@router.get(
    "/v1/subscriptions/{subscription}/invoice-preview",
    response_model=InvoicePreview,
    responses=problems("404", "409"),
    summary="The invoice the current period would get if it closed now",
)
def get_invoice_preview(
    request: Request, subscription: str, principal: Principal = caller(Scope.USAGE_READ)
) -> InvoicePreview:
    ctx = context(request)
    return usage_ops.invoice_preview(ctx.engine, principal.organization, subscription, at=ctx.clock())


@router.get(
    "/v1/meters/{meter}/query",
    response_model=MeterQueryResult,
    responses=problems("404", "422"),
    summary="Aggregate a meter's stored events over time windows",
)
def query_meter(
    request: Request,
    meter: str,
    start: Annotated[AwareDatetime, Query(alias="from")],
    end: Annotated[AwareDatetime, Query(alias="to")],
    window: Window | None = None,
    customer: str | None = None,
    group_by: Annotated[list[str] | None, Query(max_length=usage_ops.MAX_GROUP_BY)] = None,
    principal: Principal = caller(Scope.USAGE_READ),
) -> MeterQueryResult:
    ctx = context(request)
    q = usage_ops.MeterQuery(start=start, end=end, window=window, customer=customer, group_by=tuple(group_by or ()))
    return usage_ops.meter_query(ctx.engine, principal.organization, meter, q)


@router.get("/v1/invoices", response_model=InvoicePage, responses=problems("422"), summary="List invoices")
def list_invoices(
    request: Request,
    customer: str | None = None,
    subscription: str | None = None,
    status: InvoiceStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=inv_ops.MAX_LIMIT)] = inv_ops.DEFAULT_LIMIT,
    cursor: str | None = None,
    principal: Principal = caller(Scope.INVOICES_READ),
) -> InvoicePage:
    flt = inv_ops.InvoiceFilter(customer, subscription, status, limit, cursor)
    return inv_ops.list_invoices(context(request).engine, principal.organization, flt)


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


_HTML: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "JSON, or the HTML page"}
}


@router.get(
    "/v1/invoices/{invoice}",
    response_model=Invoice,
    responses={**problems("404"), **_HTML},
    summary="One invoice by id or number (JSON, or the HTML page with Accept: text/html)",
)
def get_invoice(request: Request, invoice: str, principal: Principal = caller(Scope.INVOICES_READ)) -> Any:
    engine = context(request).engine
    if _wants_html(request):
        doc, org_name, customer_name = inv_ops.invoice_document(engine, principal.organization, invoice)
        return HTMLResponse(render_invoice_html(doc, organization_name=org_name, customer_name=customer_name))
    return inv_ops.get_invoice(engine, principal.organization, invoice)


def _add_invoice_action(action: str) -> None:
    def move(
        request: Request,
        invoice: str,
        principal: Principal = caller(Scope.INVOICES_WRITE),
        payload: InvoiceAction = body_of(InvoiceAction),
    ) -> Invoice:
        ctx = context(request)
        return inv_ops.move_invoice(
            ctx.engine, principal.organization, invoice, action, now=ctx.clock(), actor=actor(principal),
            reason=payload.reason,
        )

    move.__name__ = f"invoice_{action.replace('-', '_')}"
    extra = body(model_ref(InvoiceAction))
    extra["requestBody"]["required"] = False
    router.post(
        f"/v1/invoices/{{invoice}}/{action}",
        response_model=Invoice,
        responses=problems("404", "409", "422"),
        openapi_extra=extra,
        summary=f"{action.replace('-', ' ').capitalize()} an invoice",
    )(move)


for _action in inv_ops.ACTIONS:
    _add_invoice_action(_action)


@router.post(
    "/v1/invoices/{invoice}/credit-notes",
    status_code=201,
    response_model=CreditNote,
    responses=problems("404", "409", "422"),
    openapi_extra=body(model_ref(CreditNoteRequest)),
    summary="Issue a credit note against an issued or paid invoice",
)
def post_credit_note(
    request: Request,
    invoice: str,
    principal: Principal = caller(Scope.INVOICES_WRITE),
    payload: CreditNoteRequest = body_of(CreditNoteRequest),
) -> CreditNote:
    ctx = context(request)
    return inv_ops.credit(ctx.engine, principal.organization, invoice, payload, now=ctx.clock(), actor=actor(principal))


@router.get(
    "/v1/credit-notes/{credit_note}",
    response_model=CreditNote,
    responses={**problems("404"), **_HTML},
    summary="One credit note by id or number (JSON, or the HTML page with Accept: text/html)",
)
def get_credit_note(request: Request, credit_note: str, principal: Principal = caller(Scope.INVOICES_READ)) -> Any:
    engine = context(request).engine
    if _wants_html(request):
        doc, org_name, customer_name = inv_ops.credit_note_document(engine, principal.organization, credit_note)
        return HTMLResponse(render_credit_note_html(doc, organization_name=org_name, customer_name=customer_name))
    return inv_ops.credit_note(engine, principal.organization, credit_note)


@router.get(
    "/v1/dead-letters",
    response_model=DeadLetterPage,
    responses=problems("422"),
    summary="The organization's rejected records (routing failures the worker dead-lettered)",
)
def list_dead_letters(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=inv_ops.MAX_LIMIT)] = inv_ops.DEFAULT_LIMIT,
    cursor: str | None = None,
    principal: Principal = caller(Scope.USAGE_READ),
) -> DeadLetterPage:
    return inv_ops.dead_letters(context(request).engine, principal.organization, limit=limit, cursor=cursor)
