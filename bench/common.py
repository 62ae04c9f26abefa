"""Shared set-up for benchmarks: services, a fresh database, a synthetic catalog."""

from __future__ import annotations

import json
from typing import Any

from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.db import make_engine


def synthetic_catalog(organizations: int, subscriptions_per_org: int = 1) -> dict[str, Any]:
    """Organizations `org0000…`, each with customers `c0…` on a plan with three usage charges."""
    cat: dict[str, list[Any]] = {k: [] for k in ("organizations", "meters", "plans", "customers", "subscriptions")}
    for o in range(organizations):
        org = f"org{o:04d}"
        cat["organizations"].append({"id": org, "name": f"Org {o}", "currency": "USD"})
        cat["meters"] += [
            {"organization": org, "key": "calls", "event_type": "api_request", "aggregation": "count"},
            {
                "organization": org,
                "key": "tokens",
                "event_type": "api_request",
                "aggregation": "sum",
                "value_property": "tokens",
            },
            {
                "organization": org,
                "key": "peak",
                "event_type": "api_request",
                "aggregation": "max",
                "value_property": "tokens",
            },
        ]
        cat["plans"].append(
            {
                "organization": org,
                "code": "usage",
                "currency": "USD",
                "interval": "month",
                "charges": [
                    {"key": "base", "model": "flat", "amount": "20"},
                    {"key": "calls", "meter": "calls", "model": "per_unit", "unit_amount": "0.001"},
                    {
                        "key": "tokens",
                        "meter": "tokens",
                        "model": "graduated",
                        "tiers": [
                            {"up_to": "100000", "unit_amount": "0.00002"},
                            {"up_to": None, "unit_amount": "0.00001"},
                        ],
                    },
                    {
                        "key": "peak",
                        "meter": "peak",
                        "model": "volume",
                        "tiers": [{"up_to": "1000", "unit_amount": "0.01"}, {"up_to": None, "unit_amount": "0.005"}],
                    },
                ],
            }
        )
        for c in range(subscriptions_per_org):
            cat["customers"].append({"organization": org, "id": f"c{c}", "name": f"Customer {c}"})
            cat["subscriptions"].append(
                {
                    "organization": org,
                    "id": f"s{c}",
                    "customer": f"c{c}",
                    "plan": "usage",
                    "start": "2026-01-01T00:00:00Z",
                }
            )
    return cat


def apply_synthetic_catalog(db_url: str, organizations: int, subscriptions_per_org: int = 1) -> None:
    engine = make_engine(db_url)
    data = json.loads(json.dumps(synthetic_catalog(organizations, subscriptions_per_org)))
    apply_catalog(engine, parse_catalog(data))
    engine.dispose()
