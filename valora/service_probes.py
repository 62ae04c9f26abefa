"""Probing the services: does a Kafka broker or a Postgres server answer, and if not, why."""

from __future__ import annotations

from invoicing.db import psycopg_connect_args

POLL_S = 0.05


class ServiceError(Exception):
    """A dev service could not be started, reached or stopped; `str()` is one line."""


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True if a Kafka-protocol broker at `bootstrap` returns cluster metadata in time."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 0: librdkafka would otherwise print a "Connection refused" line to
    # stderr every few milliseconds while the broker is down; the answer is the bool.
    client = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        client.list_topics(timeout=max(timeout_s, 0.1))
    except KafkaException:
        return False
    return True


def redact_url(database_url: str) -> str:
    """The URL with any password masked, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def postgres_problem(database_url: str, timeout_s: float) -> str | None:
    """None if `SELECT 1` works on `database_url`, else the first line of the error."""
    import psycopg
    from sqlalchemy.exc import ArgumentError

    try:
        args = psycopg_connect_args(database_url)
    except ArgumentError as exc:
        return f"not a database URL ({exc})"
    # libpq rounds connect_timeout to whole seconds and treats anything below 2 as 2.
    args["connect_timeout"] = max(2, round(timeout_s))
    try:
        with psycopg.connect(**args) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as exc:
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return None


def postgres_answers(database_url: str, timeout_s: float = 2.0) -> bool:
    """True if `SELECT 1` succeeds; accepts `postgresql://` and `postgresql+psycopg://`."""
    return postgres_problem(database_url, timeout_s) is None
