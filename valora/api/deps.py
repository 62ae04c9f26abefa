"""What every route needs: the app's services, the caller (from the Bearer key) and JSON bodies.

Authentication runs before anything about the request is parsed, so a request without a
valid key is a 401 whatever its body; then the scope (403); then the input (422).
Bodies are read here rather than by FastAPI so numbers parse as exact `Decimal`s (plans
refuse binary floats) and so an invalid body cannot be reported before a missing key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine

from invoicing.operations.keys import Principal, authenticate
from schemas.api import Scope
from schemas.errors import InvalidParameter
from streams.ingest import MAX_BODY_BYTES, EventProducer, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


@dataclass
class ApiContext:
    """The process's services, injected once when the app is built (tests pass their own)."""

    engine: Engine
    producer: EventProducer | None
    clock: Callable[[], datetime]
    future_tolerance: timedelta
    bootstrap: str | None
    ready: Callable[[], dict[str, bool]]


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.valora
    return ctx


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def caller(scope: Scope) -> Any:
    """A dependency: the authenticated caller, who must hold `scope`.

    Raises (to the problem handler):
        Unauthenticated: no valid key (401).
        MissingScope: a valid key without `scope` (403).
    """

    def dependency(request: Request) -> Principal:
        ctx = context(request)
        principal = authenticate(ctx.engine, bearer(request), now=ctx.clock())
        principal.require(scope)
        for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
            check_text(name, value)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"caller_{scope.value.replace(':', '_')}"
    return Depends(dependency)


def check_text(field: str, value: Any) -> None:
    """Refuse text Postgres cannot store: U+0000 and lone surrogates (not UTF-8). Raises InvalidParameter."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidParameter(field, "text may not contain U+0000")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameter(field, "text must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(field, key)
            check_text(f"{field}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(f"{field}[{index}]", item)


def actor(principal: Principal) -> str:
    """Who a change is recorded as: the API key, never a name the caller chose."""
    return f"api-key:{principal.key_id}"


async def read_body(request: Request) -> bytes:
    """The request body, refused (PayloadTooLarge) past MAX_BODY_BYTES without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body is over the limit of {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> Any:
    """The request body as JSON with exact decimals. Raises PayloadTooLarge, InvalidParameter("body")."""
    body = await read_body(request)
    if not body.strip():
        return {}
    try:
        data = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidParameter("body", f"not valid JSON: {exc}") from None
    check_text("body", data)
    return data


def validated(model: type[M], data: Any) -> M:
    """`data` as `model`, or InvalidParameter naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidParameter(where, str(err["msg"]).removeprefix("Value error, ")) from None


def body_of(model: type[M]) -> Any:
    """A dependency: the JSON body validated as `model` (after authentication, which is listed first)."""

    async def dependency(request: Request) -> M:
        return validated(model, await read_json(request))

    dependency.__name__ = f"body_{model.__name__}"
    return Depends(dependency)


def raw_body() -> Any:
    async def dependency(request: Request) -> Any:
        return await read_json(request)

    return Depends(dependency)
