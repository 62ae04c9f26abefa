"""Recording re-sends that disagree with the event already counted under their id.

Dedup keeps the first event counted under an (organization, dedup key) and counts every
re-send as a duplicate, whatever it carries. A re-send whose payload (customer, type, time
or properties) differs is still counted once, but it is not silent: the sink writes it to
`dedup_conflicts`, in the batch's transaction, and the worker counts it in
`valora_worker_dedup_conflicts_total`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec
import psycopg

from streams.batch import BatchPlan

_ENCODE_PROPS = msgspec.json.Encoder(decimal_format="number").encode

_CONFLICT_COLUMNS = (
    'topic, partition, "offset", organization_id, dedup_key, customer_id, event_type, event_time, properties'
)


def record_conflicts(
    cur: psycopg.Cursor[Any], topic: str, plan: BatchPlan, earlier: Collection[tuple[str, str]]
) -> int:
    """Record re-sends whose payload differs from the event counted; returns how many.

    Those within the batch were found while planning; those of an earlier batch (`earlier`:
    the (organization, dedup key) of candidates that were not new) are found by comparing
    just those candidates with their stored events, so a batch without re-sends costs nothing.
    """
    found = 0
    if earlier:
        orgs, keys = zip(*earlier, strict=True)
        cur.execute(
            f"WITH old (organization_id, dedup_key) AS (SELECT * FROM unnest(%s::text[], %s::text[])) "
            f"INSERT INTO dedup_conflicts ({_CONFLICT_COLUMNS}) "
            "SELECT b.source_topic, b.source_partition, b.source_offset, b.organization_id, b.dedup_key, "
            "b.customer_id, b.event_type, b.event_time, b.properties FROM old "
            "JOIN batch_events b ON b.organization_id = old.organization_id AND b.dedup_key = old.dedup_key "
            "JOIN events e ON e.organization_id = b.organization_id AND e.dedup_key = b.dedup_key "
            "WHERE (e.source_topic, e.source_partition, e.source_offset) "
            "IS DISTINCT FROM (b.source_topic, b.source_partition, b.source_offset) "
            "AND (e.customer_id, e.event_type, e.event_time, e.properties) "
            "IS DISTINCT FROM (b.customer_id, b.event_type, b.event_time, b.properties) ON CONFLICT DO NOTHING",
            (list(orgs), list(keys)),
        )
        found += max(cur.rowcount, 0)
    if plan.conflicts:
        rows = [
            (topic, r.partition, r.offset, e.organization, e.dedup_key, e.customer, e.type, e.time,
             _ENCODE_PROPS(e.properties).decode())
            for e, r in plan.conflicts
        ]
        cur.executemany(
            f"INSERT INTO dedup_conflicts ({_CONFLICT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) "
            "ON CONFLICT DO NOTHING",
            rows,
        )
        found += len(rows)
    return found
