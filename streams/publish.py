"""Publishing usage events with confluent-kafka (demo, benchmarks, tests, backfills)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException, Producer


def publish(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]], *, timeout_s: float = 60.0
) -> int:
    """Produce (key, value) records and wait until every one is acknowledged.

    Raises:
        KafkaException: a record was not delivered.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    sent = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        sent += 1
        if sent % 10000 == 0:
            producer.poll(0)
    remaining = producer.flush(timeout_s)
    if remaining or errors:
        raise KafkaException(f"{remaining} record(s) undelivered; first error: {errors[0] if errors else 'timeout'}")
    return sent
