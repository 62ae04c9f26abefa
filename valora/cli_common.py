"""Helpers shared by the CLI's command modules: settings, service resolution, time parsing."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


class CliError(Exception):
    """A one-line failure for the user."""


def now_utc() -> datetime:
    return datetime.now(UTC)


# The instants the CLI accepts (`--as-of`, `--at`, quote periods): wide enough for any real
# billing history and plan, narrow enough that period arithmetic (anchor + k months) and the
# invoice-number year never leave what Python and Postgres represent.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2200, 1, 1, tzinfo=UTC)


def parse_time(value: str) -> datetime:
    """An RFC 3339 instant with a timezone, in [EARLIEST_TIME, LATEST_TIME), as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an RFC 3339 time (e.g. 2026-02-01T00:00:00Z)") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs a timezone (e.g. a trailing Z)")
    out_of_range = argparse.ArgumentTypeError(
        f"{value!r} is out of range ({EARLIEST_TIME.year} to {LATEST_TIME.year - 1})"
    )
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:  # the offset moves it below year 1 or above 9999
        raise out_of_range from None
    if not EARLIEST_TIME <= parsed < LATEST_TIME:
        raise out_of_range
    return parsed


def positive_int(limit: int) -> Callable[[str], int]:
    """An argparse type: a whole number in 1..limit."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not 1 <= number <= limit:
            raise argparse.ArgumentTypeError(f"{value} is out of range (1 to {limit:,})")
        return number

    return parse


def positive_seconds(limit: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds above 0 and at most `limit`."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
        if not 0 < number <= limit:  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"{value} is out of range (above 0, at most {limit:g})")
        return number

    return parse


# --- resolving services -------------------------------------------------------------------


def load_settings() -> Any:
    from valora.settings import Settings

    return Settings.from_env()


def resolve_database_url(settings: Any) -> str:
    if settings.database_url:
        return str(settings.database_url)
    from valora.devservices import read_state

    state = read_state(settings.state_dir)
    if state is None:
        raise CliError("no database configured: set VALORA_DATABASE_URL or run `valora dev up`")
    return state.database_url


def resolve_bootstrap(settings: Any, *, check: bool = True) -> str:
    from valora.devservices import read_state
    from valora.service_probes import broker_answers

    bootstrap = settings.kafka_bootstrap
    if not bootstrap:
        state = read_state(settings.state_dir)
        if state is None:
            raise CliError("no Kafka broker configured: set VALORA_KAFKA_BOOTSTRAP or run `valora dev up`")
        bootstrap = state.kafka_bootstrap
    if check and not broker_answers(bootstrap, timeout_s=5.0):
        raise CliError(
            f"Kafka broker at {bootstrap} does not answer (check VALORA_KAFKA_BOOTSTRAP or run `valora dev up`)"
        )
    return str(bootstrap)


def connect_engine(settings: Any) -> Any:
    from invoicing.db import connect

    return connect(resolve_database_url(settings))


def services_for(settings: Any) -> tuple[str, str]:
    """Kafka bootstrap and Postgres URL from the settings, starting the embedded dev services for what is unset."""
    from valora.devservices import resolve_or_start

    return resolve_or_start(settings.kafka_bootstrap, settings.database_url, settings.state_dir)
