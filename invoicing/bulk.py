"""Bulk upserts as arrays: one parameter per column, whatever the number of rows.

`catalog apply` writes catalogs of 100,000 subscriptions in one transaction. A multi-row
`VALUES` list takes one bind parameter per cell (Postgres allows 65,535 per statement) and
SQLAlchemy compiles every one of them; `INSERT … SELECT FROM unnest(arrays)` sends each column
as one array, so a statement costs the same to build at any size. Rows go in slices of
`SLICE_ROWS` to bound the memory of one statement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

SLICE_ROWS = 10_000
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def upsert_rows(
    session: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    insert_only: frozenset[str] = frozenset(),
    update_sql: Mapping[str, str] | None = None,
) -> None:
    """Insert `rows` into `table`, updating the existing row on a conflict on `keys`.

    Every row has the same columns. `insert_only` columns keep their stored value on a
    conflict; `update_sql` gives a column an SQL expression instead of the new value (the
    stored row is `t`, the new one `excluded`). JSONB values are Python objects (or None).
    """
    if not rows:
        return
    cols = list(rows[0])
    types = {col: table.c[col].type.compile(dialect=_DIALECT) for col in cols}
    arrays = ", ".join(
        f"CAST(CAST(:c{i} AS text[]) AS jsonb[])" if types[col] == "JSONB" else f"CAST(:c{i} AS {types[col]}[])"
        for i, col in enumerate(cols)
    )
    overrides = dict(update_sql or {})
    updates = [
        f"{col} = {overrides.get(col, f'excluded.{col}')}" for col in cols if col not in keys and col not in insert_only
    ]
    conflict = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    statement = text(
        f"INSERT INTO {table.name} AS t ({', '.join(cols)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(keys)}) {conflict}"
    )
    for start in range(0, len(rows), SLICE_ROWS):
        part = rows[start : start + SLICE_ROWS]
        params = {f"c{i}": [_value(row[col], types[col]) for row in part] for i, col in enumerate(cols)}
        session.execute(statement, params)


def _value(value: Any, type_name: str) -> Any:
    if type_name == "JSONB":
        return None if value is None else json.dumps(value)
    return value
