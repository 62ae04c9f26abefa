"""Database fixtures for invoicing tests: a migrated database with the issue catalog and one closed period."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.db import make_engine, upgrade
from tests.helpers import ISSUE_CATALOG

CLOSE_AT = datetime(2026, 2, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated database holding tests.helpers.ISSUE_CATALOG (org acme, customer cus_1, sub_1)."""
    eng = make_engine(database_url, pool_size=8)
    try:
        upgrade(eng)
        apply_catalog(eng, parse_catalog(ISSUE_CATALOG))
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def issued_id(engine: Engine) -> str:
    """The January invoice written (issued, numbered ACME-2026-000001) by a period close."""
    summary = close_due(engine, as_of=CLOSE_AT, grace=timedelta(hours=1), clock=lambda: CLOSE_AT)
    assert summary.invoices == 1
    return summary.invoice_ids[0]


def history_rows(engine: Engine, invoice_id: str) -> list[tuple[int, str | None, str, str, str]]:
    with Session(engine) as session:
        rows = session.execute(
            select(
                m.InvoiceStatusChange.seq,
                m.InvoiceStatusChange.from_status,
                m.InvoiceStatusChange.to_status,
                m.InvoiceStatusChange.actor,
                m.InvoiceStatusChange.reason,
            )
            .where(m.InvoiceStatusChange.invoice_id == invoice_id)
            .order_by(m.InvoiceStatusChange.seq)
        )
        return [(seq, src, dst, actor, reason) for seq, src, dst, actor, reason in rows]
