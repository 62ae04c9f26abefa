"""Golden JSON Schemas of the wire and config contracts: a contract change shows up in review.

Regenerate on purpose with `pytest tests/test_wire_schemas.py --update-golden`.

The comparison covers what we own (field names, types, required fields, enums, bounds, defaults),
not prose: `description` and `title` are rendered by pydantic and msgspec from docstrings, and
their whitespace changed between msgspec releases with no change to the contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.catalog import Catalog
from schemas.events import json_schemas
from schemas.plans import Plan

GOLDEN = Path(__file__).resolve().parents[1] / "schemas" / "json"


def _current() -> dict[str, Any]:
    return {**json_schemas(), "catalog": Catalog.model_json_schema(), "plan": Plan.model_json_schema()}


_PROSE = frozenset({"description", "title"})


def _contract(schema: Any) -> Any:
    """The schema without its prose: what a producer or catalog author must actually match."""
    if isinstance(schema, dict):
        return {key: _contract_child(key, value) for key, value in schema.items() if key not in _PROSE}
    if isinstance(schema, list):
        return [_contract(item) for item in schema]
    return schema


def _contract_child(key: str, value: Any) -> Any:
    # Under these keywords the keys are names we own (a field may be called `description`).
    if key in ("properties", "$defs", "patternProperties") and isinstance(value, dict):
        return {name: _contract(sub) for name, sub in value.items()}
    return _contract(value)


@pytest.mark.parametrize("name", sorted(_current()))
def test_contract_matches_its_golden_schema(name: str, request: pytest.FixtureRequest) -> None:
    current = _current()[name]
    path = GOLDEN / f"{name}.json"
    if request.config.getoption("--update-golden"):
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"no golden schema for {name}: run with --update-golden"
    golden = json.loads(path.read_text())
    assert _contract(current) == _contract(golden), (
        f"the {name} contract changed; if intended, rerun with --update-golden")


def test_contract_comparison_ignores_prose_but_not_fields() -> None:
    schema = _current()["usage_total"]
    reworded = json.loads(json.dumps(schema))
    reworded["description"] = "    re-indented\n    prose"
    assert reworded != schema and _contract(reworded) == _contract(schema)
    fewer = json.loads(json.dumps(schema))
    fewer.setdefault("required", []).append("a_field_we_never_had")
    assert _contract(fewer) != _contract(schema)
