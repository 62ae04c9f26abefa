"""HTTP ingestion's stream edge: check posted events with the worker's decoder, produce the valid ones.

A request body is one event (a JSON object) or a batch (a JSON array), native or CloudEvents.
Each element is kept as its raw bytes (`msgspec.Raw`, nothing re-encoded), checked with
`streams.decode.decode_record` under the caller's organization as the record key (the
worker runs the same function on the same bytes), and, when valid, produced to the events
topic with that key. So the organization comes only from the API key: a native event whose
`organization` differs is rejected (`schema`), as the worker would. Routing checks (unknown
customer, no subscription) and duplicates stay the worker's: they depend on the catalog and
on what was already counted, and end in the dead-letter topic or the duplicate counter.

Limits (documented in the README): a body of at most `MAX_BODY_BYTES`, at most `MAX_BATCH`
events (`PayloadTooLarge`, HTTP 413).

`EventProducer` wraps one confluent-kafka `Producer` for the process: a thread serves its
delivery callbacks, and `send` resolves an asyncio future once every record of a request is
acknowledged (idempotent producer, acks=all), so a 202 means the broker has the events.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from confluent_kafka import KafkaError, Producer

from schemas.errors import InvalidParameter, ValoraError
from streams.decode import MAX_DEPTH, Reason, Rejection, decode_record, nesting_depth

MAX_BODY_BYTES = 1_048_576
MAX_BATCH = 1_000
_ONE = msgspec.json.Decoder(msgspec.Raw)
_MANY = msgspec.json.Decoder(list[msgspec.Raw])


class PayloadTooLarge(ValoraError):
    """A request body or batch over the documented limits; nothing of it was produced."""

    code = "payload_too_large"


class BrokerUnavailable(ValoraError):
    """The events could not be handed to Kafka in time; the client may retry (the worker dedups by id)."""

    code = "broker_unavailable"


@dataclass(frozen=True, slots=True)
class Checked:
    """One posted element: its raw bytes and event id when valid, else the rejection."""

    index: int
    value: bytes
    event_id: str | None
    rejection: Rejection | None


def split_body(body: bytes, *, expect: str | None = None) -> list[bytes]:
    """The raw elements of a body: one object, or each element of an array.

    `expect` is "object" or "array" when the content type fixes which one.

    Raises:
        PayloadTooLarge: over MAX_BODY_BYTES or MAX_BATCH.
        InvalidParameter: not JSON, or neither an object nor an array (field "body").
    """
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    head = body.lstrip()[:1]
    kind = {b"{": "object", b"[": "array"}.get(head)
    if kind is None or (expect is not None and kind != expect):
        raise InvalidParameter("body", f"must be a JSON {expect or 'object or array'} of events")
    limit = MAX_DEPTH + (kind == "array")  # parsing recurses: refuse what the worker would call too_deep first
    if body.count(b"{") + body.count(b"[") > limit and nesting_depth(body) > limit:
        raise InvalidParameter("body", f"an event may be nested at most {MAX_DEPTH} levels deep")
    try:
        raws = [_ONE.decode(body)] if kind == "object" else _MANY.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidParameter("body", f"not valid JSON: {exc}") from None
    if len(raws) > MAX_BATCH:
        raise PayloadTooLarge(f"{len(raws)} events in one request; the limit is {MAX_BATCH}")
    if not raws:
        raise InvalidParameter("body", "an empty batch")
    return [bytes(raw) for raw in raws]


def check_events(
    organization: str,
    values: list[bytes],
    *,
    now: datetime,
    future_tolerance: timedelta,
    cloudevents_only: bool = False,
) -> list[Checked]:
    """Decode each element as the worker will, under the caller's organization."""
    key = organization.encode()
    out = []
    for index, value in enumerate(values):
        try:
            if cloudevents_only and b'"specversion"' not in value:
                raise Rejection(Reason.SCHEMA, "a CloudEvents content type needs 'specversion' in every event")
            event = decode_record(key, value, now=now, future_tolerance=future_tolerance)
        except Rejection as rej:
            out.append(Checked(index, value, None, rej))
        else:
            out.append(Checked(index, value, event.id, None))
    return out


class EventProducer:
    """One idempotent producer per process, with its delivery callbacks served on a thread."""

    def __init__(self, bootstrap: str, topic: str, *, delivery_timeout_ms: int = 10_000) -> None:
        self.topic = topic
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 2,
                "compression.type": "lz4",
                "delivery.timeout.ms": delivery_timeout_ms,
                "queue.buffering.max.messages": 500_000,
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="valora-api-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, organization: str, values: list[bytes]) -> None:
        """Produce `values` keyed by `organization`; returns once all are acknowledged.

        Raises:
            BrokerUnavailable: a record failed or the local queue stayed full.
        """
        if not values:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()
        pending = [len(values)]
        lock = threading.Lock()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            with lock:
                pending[0] -= 1
                last = pending[0] == 0
            if err is not None:
                loop.call_soon_threadsafe(_settle, done, str(err))
            elif last:
                loop.call_soon_threadsafe(_settle, done, None)

        key = organization.encode()
        try:
            for value in values:
                self._producer.produce(self.topic, key=key, value=value, on_delivery=delivered)
        except BufferError as exc:
            raise BrokerUnavailable("the producer's queue is full; retry shortly") from exc
        error = await done
        if error is not None:
            raise BrokerUnavailable(f"the events topic did not take the events: {error}")

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        self._producer.flush(timeout_s)
        self._producer.close()  # stops librdkafka's threads now, not whenever the object is collected


def _settle(future: asyncio.Future[str | None], error: str | None) -> None:
    if not future.done():
        future.set_result(error)
