"""Reading dead letters back: what the worker rejected, why, and where it came from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from invoicing import models as m

MAX_LIST = 10_000  # rows one listing returns at most (`--limit`)


def list_dead_letters(
    engine: Engine, organization: str, *, code: str | None = None, topic: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """An organization's dead letters in log order (topic, partition, offset), at most `limit`.

    The organization is the record's key as the worker read it, so records rejected as
    `unknown_organization` are listed under the id they named.
    """
    query = select(m.DeadLetter).where(m.DeadLetter.organization_id == organization)
    if code is not None:
        query = query.where(m.DeadLetter.code == code)
    if topic is not None:
        query = query.where(m.DeadLetter.topic == topic)
    query = query.order_by(m.DeadLetter.topic, m.DeadLetter.partition, m.DeadLetter.offset)
    with Session(engine) as session:
        rows = session.scalars(query.limit(max(1, min(limit, MAX_LIST)))).all()
        return [
            {
                "topic": row.topic,
                "partition": row.partition,
                "offset": row.offset,
                "organization": row.organization_id,
                "code": row.code,
                "detail": row.detail,
                "value": None if row.value is None else row.value.decode("utf-8", "replace"),
            }
            for row in rows
        ]
