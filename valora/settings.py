"""Configuration from `VALORA_*` environment variables, read once at the edge and validated.

Every variable has a documented form and range (the README's configuration table, the
`LIMITS` below); a value outside them is an `InvalidSetting` naming the variable, so a
typo in the environment is one line at startup, never a traceback deep inside a worker.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from schemas.errors import InvalidInput


class InvalidSetting(InvalidInput):
    """A `VALORA_*` environment variable is malformed or out of range; the message names it."""

    code = "invalid_setting"


# name -> (smallest, largest) accepted value: whole numbers, and durations in seconds.
LIMITS: dict[str, tuple[int, int]] = {
    "VALORA_TOPIC_PARTITIONS": (1, 1024),
    "VALORA_BATCH_MAX": (1, 100_000),
    "VALORA_METRICS_PORT": (1, 65_535),
    "VALORA_API_PORT": (1, 65_535),
    "VALORA_SESSION_TIMEOUT_MS": (1_000, 3_600_000),
    "VALORA_LATE_GRACE": (0, 90 * 86_400),
    "VALORA_FUTURE_TOLERANCE": (0, 3_650 * 86_400),
}
LOG_LEVELS = ("debug", "info", "warning", "error")
# Kafka's own rule for topic names; consumer groups are any printable text up to 255 characters.
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_GROUP = re.compile(r"^[\x21-\x7e]{1,255}$")
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_DURATION = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,6})?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_DATABASE_DRIVERS = ("postgresql", "postgresql+psycopg")


def parse_duration(value: str, name: str) -> timedelta:
    """`90`, `90s`, `15m`, `1h`, `35d` (plain numbers are seconds), within `LIMITS[name]` if it has one."""
    match = _DURATION.match(value)
    if not match:
        raise InvalidSetting(f"{name}={value!r} is not a duration (examples: 3600, 90s, 15m, 1h, 35d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    low, high = LIMITS.get(name, (0, 3_650 * 86_400))
    if not low <= seconds <= high:
        raise InvalidSetting(f"{name}={value!r} is out of range ({_span(low)} to {_span(high)})")
    return timedelta(seconds=seconds)


def _span(seconds: int) -> str:
    return f"{seconds // 86_400}d" if seconds and seconds % 86_400 == 0 else f"{seconds}s"


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidSetting(f"{name}={raw!r} is not a whole number") from None
    low, high = LIMITS[name]
    if not low <= value <= high:
        raise InvalidSetting(f"{name}={raw!r} is out of range ({low} to {high})")
    return value


def _topic(env: dict[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    if not _TOPIC.match(value):
        raise InvalidSetting(f"{name}={value!r} is not a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)")
    return value


def _bootstrap(raw: str | None) -> str | None:
    if not raw:
        return None
    for server in raw.split(","):
        match = _HOST_PORT.match(server.strip())
        if not match or not 1 <= int(match.group(1)) <= 65_535:
            raise InvalidSetting(
                f"VALORA_KAFKA_BOOTSTRAP={raw!r} is not a list of host:port (e.g. kafka:9092,kafka2:9092)"
            )
    return raw


def _database_url(raw: str | None) -> str | None:
    if not raw:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    example = "e.g. postgresql+psycopg://valora@db:5432/valora"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise InvalidSetting(f"VALORA_DATABASE_URL is not a database URL ({example})") from None
    if url.drivername not in _DATABASE_DRIVERS:
        raise InvalidSetting(
            f"VALORA_DATABASE_URL names {url.drivername!r}; Valora needs Postgres: postgresql:// or "
            f"postgresql+psycopg:// ({example})"
        )
    return raw


def default_state_dir() -> Path:
    """`.valora` in the project when running from a checkout, else the user's state directory.

    Never the shell's working directory: `valora dev status` must find the services that
    `make demo` started from whatever folder it is run in.
    """
    project = Path(__file__).resolve().parents[1]
    if (project / "pyproject.toml").is_file() and (project / "valora").is_dir():
        return project / ".valora"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "valora"


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str | None
    database_url: str | None
    state_dir: Path
    events_topic: str
    dlq_topic: str
    totals_topic: str
    partitions: int
    consumer_group: str
    late_grace: timedelta
    future_tolerance: timedelta
    batch_max: int
    metrics_port: int | None
    session_timeout_ms: int
    metrics_addr: str = "127.0.0.1"  # loopback unless told: metrics and health are not for the internet
    log_level: str = "warning"
    api_host: str | None = None
    api_port: int | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read and validate every `VALORA_*` variable.

        Raises:
            InvalidSetting: the first variable that is malformed or out of range, by name.
        """
        env = dict(os.environ if env is None else env)
        group = env.get("VALORA_CONSUMER_GROUP") or "valora-worker"
        if not _GROUP.match(group):
            raise InvalidSetting(f"VALORA_CONSUMER_GROUP={group!r} must be 1-255 printable characters, no spaces")
        log_level = (env.get("VALORA_LOG_LEVEL") or "warning").lower()
        if log_level not in LOG_LEVELS:
            raise InvalidSetting(f"VALORA_LOG_LEVEL={log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        state_dir = env.get("VALORA_STATE_DIR")
        return cls(
            kafka_bootstrap=_bootstrap(env.get("VALORA_KAFKA_BOOTSTRAP")),
            database_url=_database_url(env.get("VALORA_DATABASE_URL")),
            state_dir=Path(state_dir).absolute() if state_dir else default_state_dir(),
            events_topic=_topic(env, "VALORA_EVENTS_TOPIC", "usage.events"),
            dlq_topic=_topic(env, "VALORA_DLQ_TOPIC", "usage.events.dlq"),
            totals_topic=_topic(env, "VALORA_TOTALS_TOPIC", "usage.totals"),
            partitions=_int(env, "VALORA_TOPIC_PARTITIONS", 8),
            consumer_group=group,
            late_grace=parse_duration(env.get("VALORA_LATE_GRACE") or "1h", "VALORA_LATE_GRACE"),
            future_tolerance=parse_duration(env.get("VALORA_FUTURE_TOLERANCE") or "5m", "VALORA_FUTURE_TOLERANCE"),
            batch_max=_int(env, "VALORA_BATCH_MAX", 5000),
            metrics_port=_int(env, "VALORA_METRICS_PORT", 0) or None,
            session_timeout_ms=_int(env, "VALORA_SESSION_TIMEOUT_MS", 10000),
            metrics_addr=env.get("VALORA_METRICS_ADDR") or "127.0.0.1",
            log_level=log_level,
            api_host=env.get("VALORA_API_HOST") or None,
            api_port=_int(env, "VALORA_API_PORT", 0) or None,
        )
