"""Golden JSON Schemas of the wire and config contracts: a contract change shows up in review.

Regenerate on purpose with `pytest tests/test_wire_schemas.py --update-golden`.
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


@pytest.mark.parametrize("name", sorted(_current()))
def test_contract_matches_its_golden_schema(name: str, request: pytest.FixtureRequest) -> None:
    text = json.dumps(_current()[name], indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"{name}.json"
    if request.config.getoption("--update-golden"):
        path.write_text(text)
    assert path.exists(), f"no golden schema for {name}: run with --update-golden"
    assert text == path.read_text(), f"the {name} contract changed; if intended, rerun with --update-golden"
