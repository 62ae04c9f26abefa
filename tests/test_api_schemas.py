"""Golden JSON Schemas of the HTTP API's inputs and read models (schemas/api.py): a contract
change shows up in review. Regenerate on purpose with `pytest tests/test_api_schemas.py --update-golden`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.api import models_for_golden
from tests.test_wire_schemas import _contract

GOLDEN = Path(__file__).resolve().parents[1] / "schemas" / "json" / "api"


@pytest.mark.parametrize("name", sorted(models_for_golden()))
def test_api_model_matches_its_golden_schema(name: str, request: pytest.FixtureRequest) -> None:
    current = models_for_golden()[name].model_json_schema(mode="serialization")
    path = GOLDEN / f"{name}.json"
    if request.config.getoption("--update-golden"):
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"no golden schema for {name}: run with --update-golden"
    assert _contract(current) == _contract(json.loads(path.read_text())), (
        f"the API's {name} contract changed; if intended, rerun with --update-golden")


def test_every_golden_file_has_a_model() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} == set(models_for_golden())
