"""Configuration from `VALORA_*` environment variables, read once at the edge."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from schemas.errors import InvalidInput

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: str, name: str) -> timedelta:
    """`90`, `90s`, `15m`, `1h`, `35d` (plain numbers are seconds)."""
    match = _DURATION.match(value)
    if not match:
        raise InvalidInput(f"{name}={value!r} is not a duration (examples: 3600, 90s, 15m, 1h, 35d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} is not a whole number") from None


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

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        metrics = env.get("VALORA_METRICS_PORT")
        return cls(
            kafka_bootstrap=env.get("VALORA_KAFKA_BOOTSTRAP") or None,
            database_url=env.get("VALORA_DATABASE_URL") or None,
            state_dir=Path(env.get("VALORA_STATE_DIR", ".valora")),
            events_topic=env.get("VALORA_EVENTS_TOPIC", "usage.events"),
            dlq_topic=env.get("VALORA_DLQ_TOPIC", "usage.events.dlq"),
            totals_topic=env.get("VALORA_TOTALS_TOPIC", "usage.totals"),
            partitions=_int(env, "VALORA_TOPIC_PARTITIONS", 8),
            consumer_group=env.get("VALORA_CONSUMER_GROUP", "valora-worker"),
            late_grace=parse_duration(env.get("VALORA_LATE_GRACE", "1h"), "VALORA_LATE_GRACE"),
            future_tolerance=parse_duration(env.get("VALORA_FUTURE_TOLERANCE", "5m"), "VALORA_FUTURE_TOLERANCE"),
            batch_max=_int(env, "VALORA_BATCH_MAX", 5000),
            metrics_port=int(metrics) if metrics else None,
            session_timeout_ms=_int(env, "VALORA_SESSION_TIMEOUT_MS", 10000),
            metrics_addr=env.get("VALORA_METRICS_ADDR") or "127.0.0.1",
        )
