"""Offsets that cannot skip: checking that the log still holds each stored next offset.

Postgres stores, per partition, the next offset the worker will count (`consumer_offsets`).
When the log no longer holds it, reading on would skip records without a trace:

* the stored offset is past the log's end (the topic was recreated, or the broker lost its
  log): new records sit below it and the offset guard would drop them as replays;
* the stored offset is below the log's start (retention deleted records never counted).

`find_gaps` says which partitions are in either state. The worker refuses to read them:
`--until-idle` exits non-zero with one line, a running worker pauses those partitions, logs
an error and sets `valora_worker_offset_gap{partition}` (the other partitions go on). The
operator chooses with `valora worker --reset-offsets earliest`: each such partition's stored
offset moves to the log's start, so everything the log holds now is read again. That is
exact for whatever is still in the log (events already counted are duplicates by id);
records deleted before they were read are gone and cannot be counted.

High watermarks are not trusted alone: some Kafka-compatible brokers (Tansu) report less
than the log holds. A stored offset above the reported end is confirmed by fetching the
record just below it; only when that record is missing is the partition a gap.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from schemas.errors import ValoraError

_PROBE_TIMEOUT_S = 5.0


class OffsetsOutOfRange(ValoraError):
    """The log no longer holds a partition's stored next offset; the message says what to run."""

    code = "offsets_out_of_range"


@dataclass(frozen=True)
class Gap:
    partition: int
    stored: int
    log_start: int
    log_end: int  # as the broker reports it

    def describe(self, topic: str) -> str:
        where = "below the log start" if self.stored < self.log_start else "past the end of the log"
        return (
            f"{topic}[{self.partition}]: stored next offset {self.stored} is {where} "
            f"(log {self.log_start}..{self.log_end})"
        )


def refusal(topic: str, gaps: Mapping[int, Gap]) -> OffsetsOutOfRange:
    """The one-line error for the CLI, naming the partitions and the operator's choice."""
    first = gaps[min(gaps)].describe(topic)
    more = f" (and {len(gaps) - 1} more partition(s))" if len(gaps) > 1 else ""
    return OffsetsOutOfRange(
        f"{first}{more}; records would be skipped: the topic was recreated or its log lost. "
        "Run `valora worker --reset-offsets earliest` to read each such partition from its log start"
    )


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "valora-offset-check", "enable.auto.commit": False}
    )


def find_gaps(bootstrap: str, topic: str, stored: Mapping[int, int], timeout_s: float = 15.0) -> dict[int, Gap]:
    """Partitions whose stored next offset the log does not hold (see the module docstring)."""
    consumer = _consumer(bootstrap)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        partitions = set(meta.partitions) if meta.error is None else set()
        gaps: dict[int, Gap] = {}
        suspects: dict[int, Gap] = {}
        for p, nxt in sorted(stored.items()):
            if nxt <= 0:
                continue
            if p not in partitions:
                gaps[p] = Gap(p, nxt, 0, 0)
                continue
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
            if nxt < low:
                gaps[p] = Gap(p, nxt, low, high)
            elif nxt > high:
                suspects[p] = Gap(p, nxt, low, high)
        if suspects:
            found = _probe(consumer, topic, {p: g.stored - 1 for p, g in suspects.items()})
            gaps.update({p: g for p, g in suspects.items() if p not in found})
        return gaps
    finally:
        consumer.close()


def _probe(consumer: Consumer, topic: str, offsets: Mapping[int, int]) -> set[int]:
    """The partitions whose record at the given offset can be fetched."""
    consumer.assign([TopicPartition(topic, p, off) for p, off in offsets.items()])
    found: set[int] = set()
    deadline = time.monotonic() + _PROBE_TIMEOUT_S
    while len(found) < len(offsets) and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=100, timeout=0.2):
            partition = msg.partition()
            if msg.error() is None and partition is not None and msg.offset() == offsets.get(partition):
                found.add(partition)
    return found


def reset_to_earliest(conn: psycopg.Connection[Any], group: str, topic: str, gaps: Mapping[int, Gap]) -> None:
    """Move each gap partition's stored next offset to its log start (one transaction)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "UPDATE consumer_offsets SET next_offset = %s WHERE consumer_group = %s AND topic = %s AND partition = %s",
            [(g.log_start, group, topic, p) for p, g in gaps.items()],
        )
