"""The totals upsert implements `rating.aggregation.merge`: each SQL rule against the pure definition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from random import Random

import psycopg
import pytest

from invoicing.db import make_engine, psycopg_connect_args, upgrade
from rating.aggregation import EMPTY, MERGE_RULE, Total, merge
from schemas.catalog import Aggregation
from streams.batch import Contribution
from streams.sink import MERGE_SQL, _group, _upsert_totals

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _total(rnd: Random, aggregation: Aggregation, *, may_be_empty: bool) -> Total:
    """A random partial total, with values that tie and go negative; an empty one is a row the close made."""
    if may_be_empty and rnd.random() < 0.15:
        return EMPTY
    latest = aggregation is Aggregation.LATEST
    return Total(
        Decimal(rnd.randint(-5, 5)) / rnd.choice([1, 10, 1000]) + Decimal("1e30") * rnd.randint(0, 1),
        rnd.randint(1, 4),
        T0 + timedelta(seconds=rnd.randint(0, 3)),
        f"e{rnd.randint(0, 3)}" if latest else None,
    )


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_upsert_rule_is_the_pure_merge(database_url: str, aggregation: Aggregation) -> None:
    rnd = Random(f"merge-{aggregation}")
    rule = MERGE_SQL[MERGE_RULE[aggregation]]
    with psycopg.connect(**psycopg_connect_args(database_url), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t_merge (k int PRIMARY KEY, quantity numeric NOT NULL, event_count bigint NOT NULL, "
            "latest_time timestamptz, latest_event text)"
        )
        for k in range(300):
            stored = _total(rnd, aggregation, may_be_empty=True)
            batch = _total(rnd, aggregation, may_be_empty=False)  # a batch total has events
            for row in (stored, batch):
                got = conn.execute(
                    "INSERT INTO t_merge AS t VALUES (%s, %s, %s, %s, %s) ON CONFLICT (k) DO UPDATE SET "
                    f"{rule}, event_count = t.event_count + excluded.event_count "
                    "RETURNING quantity, event_count, latest_time, latest_event",
                    (k, row.quantity, row.events, row.latest_time, row.latest_event),
                ).fetchone()
            expected = merge(aggregation, stored, batch)
            assert got is not None
            assert (got[0], got[1], got[2]) == (expected.quantity, expected.events, expected.latest_time), (
                stored,
                batch,
            )
            if aggregation is Aggregation.LATEST and expected.events:
                assert got[3] == expected.latest_event, (stored, batch)


def test_a_batch_sum_that_cannot_be_exact_is_refused_as_data(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    end = T0 + timedelta(days=31)
    huge = [
        Contribution("o", "s", "gb", Aggregation.SUM, T0, end, T0, f"k{i}", Decimal(v), T0, f"e{i}")
        for i, v in enumerate(["1e100", "1e-100"])
    ]
    refused = pytest.raises(psycopg.errors.NumericValueOutOfRange, match="sum not exact")
    with psycopg.connect(**psycopg_connect_args(database_url)) as conn, conn.cursor() as cur, refused:
        _upsert_totals(cur, _group(huge))
