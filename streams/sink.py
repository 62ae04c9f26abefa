"""Writing a batch to Postgres exactly once, in one transaction.

Steps, all in the same transaction:

1. Lock the batch's partitions in `consumer_offsets` and drop every record below
   the stored next offset (a replay after a crash or rebalance: already counted).
2. Plan the rest (decode, route, in-batch dedup).
3. COPY the candidate events into a temp table and insert them into `events`
   under its primary key; the keys that come back are the genuinely new events.
4. Fold only the new events' contributions into `usage_totals` (rows whose
   period is already closed refuse the update, and those contributions become
   late usage instead), and record dead letters.
5. Advance the stored offsets and the conservation counters.

A crash anywhere before COMMIT leaves nothing behind; after it, the offsets
guard the replay. Kafka's own committed offsets only decide where re-reading
starts, never what is counted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import psycopg

from invoicing.plan_changes import PLAN_CHANGE_LOCK
from schemas.catalog import Aggregation
from streams.batch import BatchPlan, Contribution, DeadLetter, Record, plan_batch
from streams.snapshot import CatalogSnapshot

_ENCODE_PROPS = msgspec.json.Encoder(decimal_format="number").encode

TotalKey = tuple[str, str, str, datetime, datetime]  # organization, subscription, meter, period, segment


@dataclass(slots=True)
class BatchResult:
    received: int = 0
    replayed: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    late: int = 0
    touched: set[tuple[str, str, datetime]] = field(default_factory=set)  # (organization, subscription, period)
    next_offsets: dict[int, int] = field(default_factory=dict)

    def merge(self, other: BatchResult) -> BatchResult:
        """Combine the results of consecutive parts of one batch."""
        return BatchResult(
            received=self.received + other.received,
            replayed=self.replayed + other.replayed,
            accepted=self.accepted + other.accepted,
            duplicates=self.duplicates + other.duplicates,
            dead_letters=self.dead_letters + other.dead_letters,
            late=self.late + other.late,
            touched=self.touched | other.touched,
            next_offsets={
                p: max(self.next_offsets.get(p, 0), other.next_offsets.get(p, 0))
                for p in self.next_offsets.keys() | other.next_offsets.keys()
            },
        )


_LATEST_TIME = "latest_time = GREATEST(t.latest_time, excluded.latest_time)"
_UPDATE_BY_AGG = {
    Aggregation.COUNT: f"quantity = t.quantity + excluded.quantity, {_LATEST_TIME}",
    Aggregation.SUM: f"quantity = t.quantity + excluded.quantity, {_LATEST_TIME}",
    Aggregation.UNIQUE_COUNT: f"quantity = t.quantity + excluded.quantity, {_LATEST_TIME}",
    Aggregation.MAX: f"quantity = GREATEST(t.quantity, excluded.quantity), {_LATEST_TIME}",
    Aggregation.LATEST: """quantity = CASE WHEN t.latest_time IS NULL
            OR (excluded.latest_time, excluded.latest_event) > (t.latest_time, t.latest_event)
            THEN excluded.quantity ELSE t.quantity END,
        latest_time = GREATEST(t.latest_time, excluded.latest_time),
        latest_event = CASE WHEN t.latest_time IS NULL
            OR (excluded.latest_time, excluded.latest_event) > (t.latest_time, t.latest_event)
            THEN excluded.latest_event ELSE t.latest_event END""",
}


def _lock_offsets(cur: psycopg.Cursor[Any], group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    cur.execute(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, "
        "received, accepted, duplicates, dead_lettered) "
        "SELECT %s, %s, p, 0, 0, 0, 0, 0 FROM unnest(%b::int[]) AS p ON CONFLICT DO NOTHING",
        (group, topic, list(partitions)),
    )
    cur.execute(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = %s AND topic = %s "
        "AND partition = ANY(%s) ORDER BY partition FOR UPDATE",
        (group, topic, list(partitions)),
    )
    return {p: o for p, o in cur.fetchall()}


class StaleSnapshot(Exception):
    """A plan change committed after the batch's catalog snapshot was loaded: plan it again."""


def _check_plan_version(cur: psycopg.Cursor[Any], snapshot: CatalogSnapshot) -> None:
    """Refuse to count a batch routed without a plan change that is already committed.

    The shared lock keeps a plan change (which takes it exclusively) from committing while
    this batch is open, so every batch is routed either wholly before or wholly after it.
    """
    cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (PLAN_CHANGE_LOCK,))
    cur.execute("SELECT coalesce(max(id), 0) FROM subscription_plan_changes")
    row = cur.fetchone()
    if row is not None and row[0] > snapshot.plan_version:
        raise StaleSnapshot(f"plan changes up to #{row[0]}, snapshot has #{snapshot.plan_version}")


def _insert_events(cur: psycopg.Cursor[Any], topic: str, plan: BatchPlan) -> set[tuple[str, str]]:
    """Insert candidate events; returns the (organization, dedup key) pairs that were NOT new.

    Only conflicts come back (usually none, or the re-sent few), not every inserted key:
    a row is ours exactly when its stored source topic/partition/offset is this record's.
    """
    if not plan.events:
        return set()
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS batch_events (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    with cur.copy(
        "COPY batch_events (organization_id, dedup_key, customer_id, event_type, event_time, properties, "
        "source_topic, source_partition, source_offset) FROM STDIN"
    ) as copy:
        write = copy.write_row
        for ev, rec in plan.events:
            write(
                (
                    ev.organization,
                    ev.dedup_key,
                    ev.customer,
                    ev.type,
                    ev.time,
                    _ENCODE_PROPS(ev.properties).decode(),
                    topic,
                    rec.partition,
                    rec.offset,
                )
            )
    cur.execute("INSERT INTO events SELECT * FROM batch_events ON CONFLICT DO NOTHING")
    if cur.rowcount == len(plan.events):
        return set()
    cur.execute(
        "SELECT b.organization_id, b.dedup_key FROM batch_events b JOIN events e "
        "ON e.organization_id = b.organization_id AND e.dedup_key = b.dedup_key "
        "WHERE (e.source_topic, e.source_partition, e.source_offset) "
        "IS DISTINCT FROM (b.source_topic, b.source_partition, b.source_offset)"
    )
    return {(o, k) for o, k in cur.fetchall()}


def _insert_unique_values(cur: psycopg.Cursor[Any], contributions: list[Contribution]) -> dict[TotalKey, int]:
    """Insert distinct values; returns how many were new per total."""
    rows = [
        (c.organization, c.subscription, c.meter, c.period_start, c.segment_start, c.unique_value)
        for c in contributions
    ]
    if not rows:
        return {}
    cur.execute(
        "INSERT INTO usage_unique_values (organization_id, subscription_id, meter_key, period_start, segment_start, "
        "value) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[], "
        "%b::text[]) ON CONFLICT DO NOTHING "
        "RETURNING organization_id, subscription_id, meter_key, period_start, segment_start",
        [list(col) for col in zip(*rows, strict=True)],
    )
    fresh: dict[TotalKey, int] = defaultdict(int)
    for row in cur.fetchall():
        fresh[(row[0], row[1], row[2], row[3], row[4])] += 1
    return fresh


def _fold(contributions: list[Contribution], unique_fresh: dict[TotalKey, int]) -> dict[TotalKey, list[Any]]:
    """Collapse contributions per total: [agg, period_end, quantity, count, latest_time, latest_event].

    `latest_time` is the latest event time for every aggregation; the event id only for `latest`.
    """
    folded: dict[TotalKey, list[Any]] = {}
    for c in contributions:
        key = (c.organization, c.subscription, c.meter, c.period_start, c.segment_start)
        row = folded.get(key)
        if row is None:
            row = folded[key] = [c.aggregation, c.period_end, None, 0, None, None]
        row[3] += 1
        agg = c.aggregation
        if agg is Aggregation.LATEST:
            if row[4] is None or (c.time, c.event_id) > (row[4], row[5]):
                row[2], row[4], row[5] = c.value, c.time, c.event_id
            continue
        if row[4] is None or c.time > row[4]:
            row[4] = c.time
        if agg is Aggregation.UNIQUE_COUNT:
            row[2] = Decimal(unique_fresh.get(key, 0))
        elif agg is Aggregation.MAX:
            row[2] = c.value if row[2] is None else max(row[2], c.value)
        else:  # count, sum
            row[2] = c.value if row[2] is None else row[2] + c.value
    return folded


def _upsert_totals(cur: psycopg.Cursor[Any], folded: dict[TotalKey, list[Any]]) -> set[TotalKey]:
    """Apply folded totals to open rows; returns the keys that were applied."""
    applied: set[TotalKey] = set()
    by_agg: dict[Aggregation, list[tuple[Any, ...]]] = defaultdict(list)
    for key, (agg, end, qty, count, ltime, levent) in folded.items():
        by_agg[agg].append((*key, end, qty, count, ltime, levent))
    for agg, rows in by_agg.items():
        cur.execute(
            "INSERT INTO usage_totals AS t (organization_id, subscription_id, meter_key, period_start, "
            "segment_start, period_end, quantity, event_count, latest_time, latest_event, closed) "
            "SELECT o, s, m, ps, ss, pe, q, n, lt, le, false FROM unnest(%b::text[], %b::text[], %b::text[], "
            "%b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::numeric[], %b::bigint[], "
            "%b::timestamptz[], %b::text[]) AS u(o, s, m, ps, ss, pe, q, n, lt, le) "
            "ON CONFLICT (organization_id, subscription_id, meter_key, period_start, segment_start) DO UPDATE SET "
            f"{_UPDATE_BY_AGG[agg]}, event_count = t.event_count + excluded.event_count "
            "WHERE NOT t.closed RETURNING organization_id, subscription_id, meter_key, period_start, segment_start",
            [list(col) for col in zip(*rows, strict=True)],
        )
        applied.update((r[0], r[1], r[2], r[3], r[4]) for r in cur.fetchall())
    return applied


def _record_late(cur: psycopg.Cursor[Any], late: list[Contribution]) -> None:
    if not late:
        return
    rows = [
        (
            c.organization,
            c.dedup_key,
            c.subscription,
            c.meter,
            c.period_start,
            c.period_end,
            c.segment_start,
            Decimal(1) if c.aggregation is Aggregation.UNIQUE_COUNT else c.value,
        )
        for c in late
    ]
    cur.execute(
        "INSERT INTO late_usage (organization_id, dedup_key, subscription_id, meter_key, period_start, period_end, "
        "segment_start, value) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], "
        "%b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::numeric[]) "
        "ON CONFLICT DO NOTHING",
        [list(col) for col in zip(*rows, strict=True)],
    )


def _record_dead_letters(cur: psycopg.Cursor[Any], topic: str, dead: list[DeadLetter]) -> None:
    if not dead:
        return
    cur.executemany(
        'INSERT INTO dead_letters (topic, partition, "offset", organization_id, code, detail, key, value) '
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        [(topic, d.partition, d.offset, d.organization, d.code.value, d.detail, d.key, d.value) for d in dead],
    )


def _advance(
    cur: psycopg.Cursor[Any], group: str, topic: str, records: Sequence[Record], counts: dict[int, list[int]]
) -> dict[int, int]:
    last: dict[int, int] = {}
    for rec in records:
        last[rec.partition] = max(last.get(rec.partition, -1), rec.offset)
    rows = [(group, topic, p, off + 1, *counts.get(p, [0, 0, 0, 0])) for p, off in sorted(last.items())]
    cur.executemany(
        "UPDATE consumer_offsets SET next_offset = GREATEST(next_offset, %s), received = received + %s, "
        "accepted = accepted + %s, duplicates = duplicates + %s, dead_lettered = dead_lettered + %s "
        "WHERE consumer_group = %s AND topic = %s AND partition = %s",
        [(nxt, r, a, d, x, g, t, p) for g, t, p, nxt, r, a, d, x in rows],
    )
    return {p: off + 1 for p, off in last.items()}


def _without_replays(plan: BatchPlan, stored: dict[int, int]) -> BatchPlan:
    """Drop what the offset guard says is already committed (records are per-partition ordered)."""

    def fresh(partition: int, offset: int) -> bool:
        return offset >= stored.get(partition, 0)

    events = [(ev, rec) for ev, rec in plan.events if fresh(rec.partition, rec.offset)]
    if len(events) == len(plan.events) and all(fresh(d.partition, d.offset) for d in plan.dead_letters):
        return plan
    keys = {(ev.organization, ev.dedup_key) for ev, _ in events}
    return BatchPlan(
        events=events,
        contributions=[c for c in plan.contributions if (c.organization, c.dedup_key) in keys],
        dead_letters=[d for d in plan.dead_letters if fresh(d.partition, d.offset)],
    )


def write_batch(
    conn: psycopg.Connection[Any],
    records: Sequence[Record],
    snapshot: CatalogSnapshot,
    *,
    group: str,
    topic: str,
    now: datetime,
    future_tolerance: timedelta,
    plan: BatchPlan | None = None,
    before_commit: Callable[[list[DeadLetter]], None] | None = None,
) -> BatchResult:
    """Process one batch exactly once; see the module docstring for the steps.

    `plan` may be computed beforehand (off the transaction, so planning the next batch
    overlaps this one's I/O); records the offset guard rejects are dropped from it here.
    `before_commit` receives the dead letters so they can be produced to the DLQ topic
    before the offsets move (at-least-once on the DLQ, never zero times).
    """
    if plan is None:
        plan = plan_batch(records, snapshot, now=now, future_tolerance=future_tolerance)
    result = BatchResult()
    with conn.transaction(), conn.cursor() as cur:
        stored = _lock_offsets(cur, group, topic, sorted({r.partition for r in records}))
        _check_plan_version(cur, snapshot)
        fresh = [r for r in records if r.offset >= stored.get(r.partition, 0)]
        result.replayed = len(records) - len(fresh)
        plan = _without_replays(plan, stored)
        old_keys = _insert_events(cur, topic, plan)
        counts = _partition_counts(fresh, plan, old_keys)
        if old_keys:
            new_contrib = [c for c in plan.contributions if (c.organization, c.dedup_key) not in old_keys]
        else:  # the common case: nothing re-sent from an earlier batch
            new_contrib = plan.contributions
        unique_fresh = _insert_unique_values(cur, [c for c in new_contrib if c.unique_value is not None])
        folded = _fold(new_contrib, unique_fresh)
        applied = _upsert_totals(cur, folded)
        late = (
            []
            if len(applied) == len(folded)
            else [
                c
                for c in new_contrib
                if (c.organization, c.subscription, c.meter, c.period_start, c.segment_start) not in applied
            ]
        )
        _record_late(cur, late)
        _record_dead_letters(cur, topic, plan.dead_letters)
        advanced = _advance(cur, group, topic, records, counts) if records else {}
        # Never hand Kafka an offset below what Postgres already stored (a partition re-read after a rebalance).
        result.next_offsets = {p: max(o, stored.get(p, 0)) for p, o in advanced.items()}
        if before_commit is not None:
            before_commit(plan.dead_letters)
    result.received = len(fresh)
    result.accepted = len(plan.events) - len(old_keys)
    result.duplicates = len(fresh) - result.accepted - len(plan.dead_letters)
    result.dead_letters = plan.dead_letters
    result.late = len(late)
    result.touched = {(k[0], k[1], k[3]) for k in applied}
    return result


def _partition_counts(fresh: Sequence[Record], plan: BatchPlan, old_keys: set[tuple[str, str]]) -> dict[int, list[int]]:
    """Per partition: [received, accepted, duplicates, dead_lettered] for the conservation counters."""
    received = Counter(r.partition for r in fresh)
    accepted = Counter(rec.partition for ev, rec in plan.events if (ev.organization, ev.dedup_key) not in old_keys)
    dead = Counter(d.partition for d in plan.dead_letters)
    return {p: [n, accepted[p], n - accepted[p] - dead[p], dead[p]] for p, n in received.items()}
