"""Writing a batch to Postgres exactly once, in one transaction.

Steps, all in the same transaction:

1. Lock the batch's partitions in `consumer_offsets` and drop every record below
   the stored next offset (a replay after a crash or rebalance: already counted).
2. Plan the rest (decode, route, in-batch dedup), unless the worker planned the
   batch, and rendered its `COPY` rows, while the previous one committed.
3. COPY the candidate events into a temp table and insert them into `events`
   under its primary key; the keys that come back are the duplicates of earlier
   batches (candidates the insert did not return).
4. Fold only the new events' contributions into `usage_totals` (rows whose
   period is already closed refuse the update and come back, and those
   contributions become late usage instead), and record dead letters.
5. Advance the stored offsets and the conservation counters.

A crash anywhere before COMMIT leaves nothing behind; after it, the offsets
guard the replay. Kafka's own committed offsets only decide where re-reading
starts, never what is counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import psycopg

from invoicing.plan_changes import PLAN_CHANGE_LOCK
from rating.aggregation import MERGE_RULE, MergeRule, fold_row
from streams.batch import BatchPlan, Contribution, DeadLetter, Record, plan_batch
from streams.conflicts import record_conflicts
from streams.decode import Reason
from streams.snapshot import CatalogSnapshot

_ENCODE_PROPS = msgspec.json.Encoder(decimal_format="number").encode

_ZERO = Decimal(0)

TotalKey = tuple[str, str, str, datetime, datetime]  # organization, subscription, meter, period, segment


@dataclass(slots=True)
class BatchResult:
    received: int = 0
    replayed: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    late: int = 0
    conflicts: int = 0  # re-sends whose payload differs from the event counted (rows in dedup_conflicts)
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
            conflicts=self.conflicts + other.conflicts,
            touched=self.touched | other.touched,
            next_offsets={
                p: max(self.next_offsets.get(p, 0), other.next_offsets.get(p, 0))
                for p in self.next_offsets.keys() | other.next_offsets.keys()
            },
        )


# The upsert of each `rating.aggregation.MergeRule`: `merge(stored, batch total)` in SQL, on
# (quantity, event_count, latest_time, latest_event); tests/streams/test_merge_sql.py checks each
# against the pure definition. A row with no events yet is the empty total, whatever it holds.
_LATEST_TIME = "latest_time = GREATEST(t.latest_time, excluded.latest_time)"
_NEWER = (
    "(t.event_count = 0 OR t.latest_time IS NULL OR "
    "(excluded.latest_time, excluded.latest_event) > (t.latest_time, coalesce(t.latest_event, '')))"
)
MERGE_SQL: dict[MergeRule, str] = {
    MergeRule.ADD: f"quantity = t.quantity + excluded.quantity, {_LATEST_TIME}",
    MergeRule.MAX: "quantity = CASE WHEN t.event_count = 0 THEN excluded.quantity "
    f"ELSE GREATEST(t.quantity, excluded.quantity) END, {_LATEST_TIME}",
    MergeRule.LATEST: f"""quantity = CASE WHEN {_NEWER} THEN excluded.quantity ELSE t.quantity END,
        latest_event = CASE WHEN {_NEWER} THEN excluded.latest_event ELSE t.latest_event END,
        {_LATEST_TIME}""",
}
_UPSERT = {agg: (rule, rule.value) for agg, rule in MERGE_RULE.items()}  # aggregation -> its rule and its name
_TOTAL_KEY = "organization_id, subscription_id, meter_key, period_start, segment_start"


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


def _copy_text(value: str) -> str:
    """A string as a field of COPY's text format."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def render_events(plan: BatchPlan, topic: str) -> bytes:
    """The plan's candidate events as COPY text rows for `batch_events`.

    Pure CPU, so the worker renders a batch while the previous one commits. Timestamps and
    properties are written by msgspec (its datetime encoding is ~10x faster than isoformat);
    a row is escaped field by field only when it holds a backslash, tab or line break.
    """
    encode, topic_text, lines = _ENCODE_PROPS, _copy_text(topic), []
    for ev, rec in plan.events:
        try:
            when, props = encode(ev.time)[1:-1].decode(), encode(ev.properties).decode()
        except Exception as exc:  # the record alone is dead-lettered, the batch goes on
            plan.reject(ev, rec, Reason.UNPROCESSABLE, f"{type(exc).__name__}: {str(exc)[:200]}")
            return render_events(plan, topic)
        line = f"{ev.organization}\t{ev.dedup_key}\t{ev.customer}\t{ev.type}\t{when}\t{props}"
        if "\\" in line or "\n" in line or "\r" in line or line.count("\t") != 5:
            line = "\t".join(map(_copy_text, (ev.organization, ev.dedup_key, ev.customer, ev.type, when, props)))
        lines.append(f"{line}\t{topic_text}\t{rec.partition}\t{rec.offset}\n")
    return "".join(lines).encode()


def _insert_events(cur: psycopg.Cursor[Any], topic: str, plan: BatchPlan) -> dict[tuple[str, str], int]:
    """Insert candidate events; returns the (organization, dedup key) pairs that were NOT new, with their partition.

    Only conflicts come back (usually none, or the re-sent few), not every inserted key: the
    INSERT returns the rows it wrote, and the candidates missing from them (told apart by
    their source partition and offset) are the duplicates of earlier batches.
    """
    if not plan.events:
        return {}
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS batch_events (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    with cur.copy(
        "COPY batch_events (organization_id, dedup_key, customer_id, event_type, event_time, properties, "
        "source_topic, source_partition, source_offset) FROM STDIN"
    ) as copy:
        copy.write(plan.event_rows if plan.event_rows is not None else render_events(plan, topic))
    cur.execute(
        "WITH new AS (INSERT INTO events SELECT * FROM batch_events ON CONFLICT DO NOTHING "
        "RETURNING source_partition, source_offset) "
        "SELECT b.organization_id, b.dedup_key, b.source_partition FROM batch_events b WHERE NOT EXISTS "
        "(SELECT FROM new n WHERE n.source_partition = b.source_partition AND n.source_offset = b.source_offset)"
    )
    return {(o, k): p for o, k, p in cur.fetchall()}


def _insert_unique_values(cur: psycopg.Cursor[Any], contributions: list[Contribution]) -> list[Contribution]:
    """Insert distinct values; returns `contributions` with each value 1 when new to its segment, else 0.

    `usage_unique_values` is the set `rating.aggregation.unique_observation` models: the
    first contribution of a value the insert returned counts, every other one adds 0.
    """
    unique = [c for c in contributions if c.unique_value is not None]
    if not unique:
        return contributions
    rows = [(c.organization, c.subscription, c.meter, c.period_start, c.segment_start, c.unique_value) for c in unique]
    cur.execute(
        "INSERT INTO usage_unique_values (organization_id, subscription_id, meter_key, period_start, segment_start, "
        "value) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[], "
        "%b::text[]) ON CONFLICT DO NOTHING "
        "RETURNING organization_id, subscription_id, meter_key, period_start, segment_start, value",
        [list(col) for col in zip(*rows, strict=True)],
    )
    fresh = {tuple(row) for row in cur.fetchall()}
    out = []
    for c in contributions:
        if c.unique_value is not None:
            ident = (c.organization, c.subscription, c.meter, c.period_start, c.segment_start, c.unique_value)
            if ident in fresh:
                fresh.discard(ident)  # later contributions of the same value are not new
            else:
                c = c._replace(value=_ZERO)
        out.append(c)
    return out


def _group(contributions: list[Contribution]) -> dict[TotalKey, list[Contribution]]:
    """The batch's contributions per total: (organization, subscription, meter, period, segment)."""
    groups: dict[TotalKey, list[Contribution]] = {}
    for c in contributions:
        key = (c.organization, c.subscription, c.meter, c.period_start, c.segment_start)
        group = groups.get(key)
        if group is None:
            groups[key] = [c]
        else:
            group.append(c)
    return groups


def _upsert_totals(cur: psycopg.Cursor[Any], groups: dict[TotalKey, list[Contribution]]) -> set[TotalKey]:
    """Fold each total's contributions (`rating.aggregation.fold`) and apply it to its open row.

    Returns the keys that were NOT applied (their period is closed).

    The totals go in with one COPY; each upsert returns the rows it changed, and the rows of
    the batch missing from them are the refused ones (usually none).
    """
    if not groups:
        return set()
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS batch_totals (organization_id text, subscription_id text, meter_key text, "
        "period_start timestamptz, segment_start timestamptz, period_end timestamptz, upsert text, quantity numeric, "
        "event_count bigint, latest_time timestamptz, latest_event text) ON COMMIT DELETE ROWS"
    )
    rules: set[MergeRule] = set()
    with cur.copy("COPY batch_totals FROM STDIN") as copy:
        write = copy.write_row
        for key, group in groups.items():
            first = group[0]
            rule, name = _UPSERT[first.aggregation]
            rules.add(rule)
            try:
                folded = fold_row(first.aggregation, group)
            except ArithmeticError as exc:  # a sum past EXACT_SUM: refuse the batch as data, so it is split up
                raise psycopg.errors.NumericValueOutOfRange(f"meter {key[2]!r}: sum not exact ({exc!r})") from exc
            write((*key, first.period_end, name, *folded))
    refused: set[TotalKey] = set()
    for rule in sorted(rules):
        cur.execute(
            "WITH applied AS (INSERT INTO usage_totals AS t (organization_id, subscription_id, meter_key, "
            "period_start, segment_start, period_end, quantity, event_count, latest_time, latest_event, closed) "
            "SELECT organization_id, subscription_id, meter_key, period_start, segment_start, period_end, quantity, "
            "event_count, latest_time, latest_event, false FROM batch_totals WHERE upsert = %(group)s "
            f"ON CONFLICT ({_TOTAL_KEY}) DO UPDATE SET "
            f"{MERGE_SQL[rule]}, event_count = t.event_count + excluded.event_count "
            f"WHERE NOT t.closed RETURNING {_TOTAL_KEY}) "
            f"SELECT {_TOTAL_KEY} FROM batch_totals b WHERE upsert = %(group)s AND NOT EXISTS "
            "(SELECT FROM applied a WHERE a.organization_id = b.organization_id "
            "AND a.subscription_id = b.subscription_id AND a.meter_key = b.meter_key "
            "AND a.period_start = b.period_start AND a.segment_start = b.segment_start)",
            {"group": rule.value},
        )
        refused.update((r[0], r[1], r[2], r[3], r[4]) for r in cur.fetchall())
    return refused


def _record_late(cur: psycopg.Cursor[Any], late: list[Contribution]) -> None:
    """Keep late contributions with what folding them later needs (`rating.aggregation`)."""
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
            c.value,
            c.aggregation.value,
            c.time,
            c.event_id,
            c.unique_value,
        )
        for c in late
    ]
    cur.execute(
        "INSERT INTO late_usage (organization_id, dedup_key, subscription_id, meter_key, period_start, period_end, "
        "segment_start, value, aggregation, event_time, event_id, unique_value) SELECT * FROM unnest(%b::text[], "
        "%b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::numeric[], "
        "%b::text[], %b::timestamptz[], %b::text[], %b::text[]) ON CONFLICT DO NOTHING",
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
    others = [(d.partition, d.offset) for d in plan.dead_letters] + [(r.partition, r.offset) for _, r in plan.conflicts]
    if len(events) == len(plan.events) and all(fresh(p, o) for p, o in others):
        return plan
    keys = {(ev.organization, ev.dedup_key) for ev, _ in events}
    return BatchPlan(
        events=events,
        contributions=[c for c in plan.contributions if (c.organization, c.dedup_key) in keys],
        dead_letters=[d for d in plan.dead_letters if fresh(d.partition, d.offset)],
        conflicts=[(ev, rec) for ev, rec in plan.conflicts if fresh(rec.partition, rec.offset)],
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
        if result.replayed:
            plan = _without_replays(plan, stored)
        old_keys = _insert_events(cur, topic, plan)
        counts = _partition_counts(fresh, plan, old_keys)
        if old_keys:
            new_contrib = [c for c in plan.contributions if (c.organization, c.dedup_key) not in old_keys]
        else:  # the common case: nothing re-sent from an earlier batch
            new_contrib = plan.contributions
        new_contrib = _insert_unique_values(cur, new_contrib)
        folded = _group(new_contrib)
        refused = _upsert_totals(cur, folded)
        late = (
            [
                c
                for c in new_contrib
                if (c.organization, c.subscription, c.meter, c.period_start, c.segment_start) in refused
            ]
            if refused
            else []
        )
        _record_late(cur, late)
        _record_dead_letters(cur, topic, plan.dead_letters)
        result.conflicts = record_conflicts(cur, topic, plan, old_keys.keys())
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
    result.touched = {(k[0], k[1], k[3]) for k in folded if k not in refused}
    return result


def _partition_counts(
    fresh: Sequence[Record], plan: BatchPlan, old_keys: dict[tuple[str, str], int]
) -> dict[int, list[int]]:
    """Per partition: [received, accepted, duplicates, dead_lettered] for the conservation counters."""
    received = Counter(r.partition for r in fresh)
    accepted = Counter(rec.partition for _, rec in plan.events)
    accepted.subtract(old_keys.values())
    dead = Counter(d.partition for d in plan.dead_letters)
    return {p: [n, accepted[p], n - accepted[p] - dead[p], dead[p]] for p, n in received.items()}
