"""late usage keeps what its aggregation needs

Revision ID: 0007
Revises: 0006

Late usage is priced as billed(all events) − billed(on-time events) for every aggregation
(`rating.aggregation`), so each `late_usage` row keeps what folding it needs:

* `aggregation`: the meter's aggregation when the event arrived;
* `event_time` and `event_id`: for `latest` meters, whether the late event is newer than
  the billed one (and the tie-break between events at the same instant);
* `unique_value`: for `unique_count` meters, the distinct value itself; `value` is then 1
  when the value was new to the period's segment and 0 when it was already counted.

Existing rows are filled from `events` and `meters` (the aggregation defaults to `sum`, the
way those rows were billed, when the meter is gone).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("late_usage", sa.Column("aggregation", sa.Text(), nullable=True))
    op.add_column("late_usage", sa.Column("event_time", sa.DateTime(timezone=True), nullable=True))
    op.add_column("late_usage", sa.Column("event_id", sa.Text(), nullable=True))
    op.add_column("late_usage", sa.Column("unique_value", sa.Text(), nullable=True))
    op.execute(
        "UPDATE late_usage l SET aggregation = coalesce((SELECT aggregation FROM meters m "
        "WHERE m.organization_id = l.organization_id AND m.key = l.meter_key), 'sum'), "
        "event_time = coalesce((SELECT event_time FROM events e WHERE e.organization_id = l.organization_id "
        "AND e.dedup_key = l.dedup_key), l.period_start), "
        "event_id = CASE WHEN l.dedup_key LIKE 'ce:%' THEN split_part(l.dedup_key, chr(31), 2) ELSE l.dedup_key END"
    )
    op.alter_column("late_usage", "aggregation", nullable=False)
    op.alter_column("late_usage", "event_time", nullable=False)
    op.alter_column("late_usage", "event_id", nullable=False)
    op.create_check_constraint(
        "late_usage_aggregation", "late_usage", "aggregation IN ('count', 'sum', 'max', 'unique_count', 'latest')"
    )


def downgrade() -> None:
    op.drop_constraint("late_usage_aggregation", "late_usage")
    for column in ("unique_value", "event_id", "event_time", "aggregation"):
        op.drop_column("late_usage", column)
