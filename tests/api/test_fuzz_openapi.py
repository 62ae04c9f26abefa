"""Schemathesis against the live app (real Postgres, real broker) with a valid key of every scope:
no 5xx, every status documented, every body matching its declared content type and schema.

Examples are bounded (`MAX_EXAMPLES` per operation, no shrinking deadline) so the run takes about
a minute or two on the 2-core machine; the database and app are shared by the module's cases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from psycopg import sql
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.engine import make_url

from tests.api.conftest import ApiWorld, build_world
from tests.conftest import _admin_connect

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_world(pg_admin_url: str, broker: str) -> Iterator[ApiWorld]:
    name = f"valora_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect(pg_admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    world, producer = build_world(url, broker, f"t{uuid.uuid4().hex[:10]}.")
    try:
        yield world
    finally:
        producer.close()
        world.engine.dispose()
        with _admin_connect(pg_admin_url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _run(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    examples: int,
    headers: dict[str, str],
    path_parameters: dict[str, str] | None = None,
) -> None:
    @given(case=operation.as_strategy(mode, path_parameters=path_parameters))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:
            return  # nothing to negate: the operation takes no parameters and no body
        raise
    except Exception as exc:
        raise AssertionError(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}") from exc


def _operations(world: ApiWorld) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.app)
    return [result.ok() for result in schema.get_all_operations()]


def test_no_server_error_and_no_schema_violation(fuzz_world: ApiWorld) -> None:
    """Each operation in turn: generated inputs, invalid ones (negative mode), and the caller's own ids.

    (Schemathesis's pytest plugin does not load under this pytest, so the loop is ours.)
    """
    headers = {"Authorization": f"Bearer {fuzz_world.a.key}"}
    operations = _operations(fuzz_world)
    assert len(operations) >= 28
    own_ids = fuzz_world.a.ids
    for operation in operations:
        _run(operation, GenerationMode.POSITIVE, MAX_EXAMPLES, headers)
        _run(operation, GenerationMode.NEGATIVE, MAX_EXAMPLES // 2, headers)
        names = [p.name for p in operation.path_parameters]
        if names:  # the caller's own resources, so bodies are fuzzed against things that exist
            own = {n: own_ids[n] for n in names}
            _run(operation, GenerationMode.POSITIVE, MAX_EXAMPLES // 2, headers, path_parameters=own)
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in fuzz_world.client(None).get("/metrics").text.splitlines()
        if line.startswith("valora_api_requests_total{")
    )
    assert served >= 5 * len(operations), served  # the examples really reached the app
