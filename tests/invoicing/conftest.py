"""Database fixtures for invoicing tests: a migrated database with the issue catalog and one closed period."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.db import make_engine, upgrade
from tests.helpers import ISSUE_CATALOG

CLOSE_AT = datetime(2026, 2, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url, pool_size=8)
    upgrade(eng)
    apply_catalog(eng, parse_catalog(ISSUE_CATALOG))
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def issued_id(engine: Engine) -> str:
    """The January invoice written (issued, numbered) by a period close."""
    with warnings.catch_warnings():
        # invoicing/close.py still calls Result.tuples(), deprecated in SQLAlchemy 2.1; not this module's to fix.
        warnings.filterwarnings("ignore", r"The Result\.tuples\(\) method is deprecated", DeprecationWarning)
        summary = close_due(engine, as_of=CLOSE_AT, grace=timedelta(hours=1), clock=lambda: CLOSE_AT)
    assert summary.invoices == 1
    return summary.invoice_ids[0]
