"""OpenAPI pieces FastAPI cannot derive: request bodies read by `deps`, problem responses, security.

Bodies are read by our own dependencies (exact decimals, authentication first), so their
schemas are registered here and merged into `components.schemas` by `openapi_document`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from schemas.api import Problem

_COMPONENTS: dict[str, Any] = {}
REF = "#/components/schemas/{model}"
PROBLEM_STATUSES = {
    "401": "No valid API key",
    "403": "The key lacks the route's scope",
    "404": "No such resource in the key's organization",
    "422": "Invalid input; `field` names it",
}


def _register(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})
    _COMPONENTS.update(defs)
    _COMPONENTS[name] = schema
    return {"$ref": REF.format(model=name)}


def register_components(schemas: dict[str, Any]) -> None:
    """Schemas referenced as `#/components/schemas/<name>` by hand-written request bodies."""
    _COMPONENTS.update(schemas)


def model_ref(model: type[BaseModel]) -> dict[str, Any]:
    return _register(model.__name__, model.model_json_schema(ref_template=REF))


def catalog_ref(name: str, model: type[BaseModel], optional: tuple[str, ...]) -> dict[str, Any]:
    """A catalog entry's schema (the catalog's own model) with `optional` fields (org, id) not required."""
    schema = model.model_json_schema(ref_template=REF)
    schema["required"] = [f for f in schema.get("required", []) if f not in optional]
    schema["title"] = name
    return _register(name, schema)


def body(ref: dict[str, Any], *media_types: str) -> dict[str, Any]:
    """`openapi_extra` declaring a required JSON request body."""
    types = media_types or ("application/json",)
    return {"requestBody": {"required": True, "content": {t: {"schema": ref} for t in types}}}


def problems(*statuses: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries: problem+json bodies for the given statuses (401, 403 and 422 always)."""
    wanted = ("401", "403", "422", *statuses)
    return {
        int(s): {
            "description": PROBLEM_STATUSES.get(s, "Problem"),
            "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}},
        }
        for s in dict.fromkeys(wanted)
    }


PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def route_scopes(app: FastAPI) -> list[tuple[str, str, str]]:
    """(path, method, scope) of every route guarded by `deps.caller` (its dependency names the scope).

    The routers are the ones `create_app` included (kept in `app.state.routers`, without prefixes).
    """
    out = []
    for route in [r for router in app.state.routers for r in router.routes]:
        if not isinstance(route, APIRoute):
            continue
        for dep in route.dependant.dependencies:
            name = getattr(dep.call, "__name__", "")
            if name.startswith("caller_"):
                scope = name.removeprefix("caller_").replace("_", ":", 1)
                out += [(route.path, method.lower(), scope) for method in route.methods or ()]
    return out


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document, with our body schemas, the Problem schema and bearer auth."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title="Valora API",
        version="1",
        openapi_version="3.1.0",
        description=app.description,
        routes=app.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    model_ref(Problem)
    for name, schema in _COMPONENTS.items():
        schemas.setdefault(name, schema)
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    doc["security"] = [{"bearer": []}]
    for path, method, scope in route_scopes(app):
        doc["paths"][path][method]["x-required-scope"] = scope
    for path in PUBLIC_PATHS & set(doc["paths"]):
        for operation in doc["paths"][path].values():
            operation["security"] = []
    app.openapi_schema = doc
    return doc
