"""Migration 0007 fills the state late usage needs on rows written before it; 0007 and 0008 round-trip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from invoicing.db import MIGRATIONS, make_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    try:
        yield eng
    finally:
        eng.dispose()


def _migrate(engine: Engine, target: str, *, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, target)


def test_late_rows_from_before_0007_get_aggregation_time_and_id(engine: Engine) -> None:
    _migrate(engine, "0005")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO organizations (id, name, currency, payment_terms_days, invoice_prefix) "
                "VALUES ('acme', 'Acme', 'USD', 30, 'ACME')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO meters (organization_id, key, event_type, aggregation, value_property) "
                "VALUES ('acme', 'peak', 'storage', 'max', 'gb')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO events (organization_id, dedup_key, customer_id, event_type, event_time, properties, "
                "source_topic, source_partition, source_offset) VALUES ('acme', 'ce:/src' || chr(31) || 'e1', 'c', "
                "'storage', '2026-01-20T10:00:00Z', '{}', 't', 0, 1)"
            )
        )
        for dedup, meter in (("ce:/src" + "\x1f" + "e1", "peak"), ("gone", "old_meter")):
            conn.execute(
                text(
                    "INSERT INTO late_usage (organization_id, dedup_key, subscription_id, meter_key, period_start, "
                    "period_end, segment_start, value) VALUES ('acme', :d, 's', :m, '2026-01-01Z', '2026-02-01Z', "
                    "'2026-01-01Z', 5)"
                ),
                {"d": dedup, "m": meter},
            )
    _migrate(engine, "head")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT meter_key, aggregation, event_time, event_id FROM late_usage ORDER BY meter_key")
        ).all()
    assert [(r[0], r[1], r[2].isoformat(), r[3]) for r in rows] == [
        ("old_meter", "sum", "2026-01-01T00:00:00+00:00", "gone"),
        ("peak", "max", "2026-01-20T10:00:00+00:00", "e1"),
    ]
    _migrate(engine, "0005", down=True)
    _migrate(engine, "head")
