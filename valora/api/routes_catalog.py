"""Routes for the catalog (meters, plans, customers) and subscriptions.

`PUT` creates or replaces one entry by id through the same validation and guards as
`valora catalog apply` (`invoicing.operations.catalog`); the organization is the key's.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from invoicing.operations import catalog as ops
from invoicing.operations.invoices import DEFAULT_LIMIT, MAX_LIMIT
from invoicing.operations.keys import Principal
from schemas import catalog as c
from schemas.api import (
    CancelRequest,
    ChangePlanRequest,
    CustomerList,
    CustomerOut,
    MeterList,
    MeterOut,
    PlanList,
    PlanOut,
    RevokeCancelRequest,
    Scope,
    SubscriptionList,
    SubscriptionOut,
)
from schemas.plans import Plan
from valora.api.deps import actor, body_of, caller, context, raw_body
from valora.api.docs import body, catalog_ref, model_ref, problems

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="entries per page")]
READ, WRITE, SUBS = Scope.CATALOG_READ, Scope.CATALOG_WRITE, Scope.SUBSCRIPTIONS_WRITE


@router.get("/v1/meters", response_model=MeterList, responses=problems(), summary="List meters (cursor pages by key)")
def list_meters(
    request: Request, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None, principal: Principal = caller(READ)
) -> MeterList:
    return ops.list_meters(context(request).engine, principal.organization, ops.Page(limit, cursor))


@router.get("/v1/meters/{meter}", response_model=MeterOut, responses=problems("404"), summary="One meter")
def get_meter(request: Request, meter: str, principal: Principal = caller(READ)) -> MeterOut:
    return ops.get_meter(context(request).engine, principal.organization, meter)


@router.put(
    "/v1/meters/{meter}",
    response_model=MeterOut,
    responses=problems("422"),
    openapi_extra=body(catalog_ref("MeterEntry", c.Meter, ("organization", "key"))),
    summary="Create or replace a meter",
)
def put_meter(
    request: Request, meter: str, principal: Principal = caller(WRITE), payload: Any = raw_body()
) -> MeterOut:
    return ops.put_meter(context(request).engine, principal.organization, meter, payload)


@router.get("/v1/plans", response_model=PlanList, responses=problems(), summary="List plans")
def list_plans(
    request: Request, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None, principal: Principal = caller(READ)
) -> PlanList:
    return ops.list_plans(context(request).engine, principal.organization, ops.Page(limit, cursor))


@router.get("/v1/plans/{plan}", response_model=PlanOut, responses=problems("404"), summary="One plan")
def get_plan(request: Request, plan: str, principal: Principal = caller(READ)) -> PlanOut:
    return ops.get_plan(context(request).engine, principal.organization, plan)


@router.put(
    "/v1/plans/{plan}",
    response_model=PlanOut,
    responses=problems("422"),
    openapi_extra=body(catalog_ref("PlanEntry", Plan, ("code",))),
    summary="Create or replace a plan (decimals as strings or exact JSON numbers)",
)
def put_plan(request: Request, plan: str, principal: Principal = caller(WRITE), payload: Any = raw_body()) -> PlanOut:
    return ops.put_plan(context(request).engine, principal.organization, plan, payload)


@router.get("/v1/customers", response_model=CustomerList, responses=problems(), summary="List customers")
def list_customers(
    request: Request, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None, principal: Principal = caller(READ)
) -> CustomerList:
    return ops.list_customers(context(request).engine, principal.organization, ops.Page(limit, cursor))


@router.get("/v1/customers/{customer}", response_model=CustomerOut, responses=problems("404"), summary="One customer")
def get_customer(request: Request, customer: str, principal: Principal = caller(READ)) -> CustomerOut:
    return ops.get_customer(context(request).engine, principal.organization, customer)


@router.put(
    "/v1/customers/{customer}",
    response_model=CustomerOut,
    responses=problems("422"),
    openapi_extra=body(catalog_ref("CustomerEntry", c.Customer, ("organization", "id"))),
    summary="Create or replace a customer",
)
def put_customer(
    request: Request, customer: str, principal: Principal = caller(WRITE), payload: Any = raw_body()
) -> CustomerOut:
    return ops.put_customer(context(request).engine, principal.organization, customer, payload)


@router.get("/v1/subscriptions", response_model=SubscriptionList, responses=problems(), summary="List subscriptions")
def list_subscriptions(
    request: Request,
    customer: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: str | None = None,
    principal: Principal = caller(READ),
) -> SubscriptionList:
    page = ops.Page(limit, cursor)
    return ops.list_subscriptions(context(request).engine, principal.organization, page, customer=customer)


@router.get(
    "/v1/subscriptions/{subscription}", response_model=SubscriptionOut, responses=problems("404"),
    summary="One subscription with its status history and plan changes",
)
def get_subscription(request: Request, subscription: str, principal: Principal = caller(READ)) -> SubscriptionOut:
    return ops.get_subscription(context(request).engine, principal.organization, subscription)


@router.put(
    "/v1/subscriptions/{subscription}",
    response_model=SubscriptionOut,
    responses=problems("422"),
    openapi_extra=body(catalog_ref("SubscriptionEntry", c.Subscription, ("organization", "id"))),
    summary="Create or replace a subscription (the plan it starts on is fixed once billed: use change-plan)",
)
def put_subscription(
    request: Request, subscription: str, principal: Principal = caller(SUBS), payload: Any = raw_body()
) -> SubscriptionOut:
    ctx = context(request)
    return ops.put_subscription(ctx.engine, principal.organization, subscription, payload, now=ctx.clock())


@router.post(
    "/v1/subscriptions/{subscription}/cancel",
    response_model=SubscriptionOut,
    responses=problems("404", "409", "422"),
    openapi_extra=body(model_ref(CancelRequest)),
    summary="Cancel now (final prorated invoice) or at the period's end",
)
def cancel(
    request: Request,
    subscription: str,
    principal: Principal = caller(SUBS),
    payload: CancelRequest = body_of(CancelRequest),
) -> SubscriptionOut:
    ctx = context(request)
    now, who = ctx.clock(), actor(principal)
    return ops.cancel(ctx.engine, principal.organization, subscription, payload, now=now, actor=who)


@router.post(
    "/v1/subscriptions/{subscription}/revoke-cancel",
    response_model=SubscriptionOut,
    responses=problems("404", "409", "422"),
    openapi_extra=body(model_ref(RevokeCancelRequest)),
    summary="Revoke a cancel scheduled for the period's end",
)
def revoke_cancel(
    request: Request,
    subscription: str,
    principal: Principal = caller(SUBS),
    payload: RevokeCancelRequest = body_of(RevokeCancelRequest),
) -> SubscriptionOut:
    ctx = context(request)
    return ops.revoke_cancel(
        ctx.engine, principal.organization, subscription, payload, now=ctx.clock(), actor=actor(principal)
    )


@router.post(
    "/v1/subscriptions/{subscription}/change-plan",
    response_model=SubscriptionOut,
    responses=problems("404", "409", "422"),
    openapi_extra=body(model_ref(ChangePlanRequest)),
    summary="Bill under another plan from `at` (default now) on",
)
def change_plan(
    request: Request,
    subscription: str,
    principal: Principal = caller(SUBS),
    payload: ChangePlanRequest = body_of(ChangePlanRequest),
) -> SubscriptionOut:
    ctx = context(request)
    return ops.move_plan(
        ctx.engine, principal.organization, subscription, payload, now=ctx.clock(), actor=actor(principal)
    )
