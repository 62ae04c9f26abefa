"""stream limits: negative meter values, re-send conflicts

Revision ID: 0010
Revises: 0009

* `meters.allow_negative`: whether the meter accepts negative values (default false: the
  worker dead-letters them `negative_value`). Existing meters: false.
* `dedup_conflicts`: one row per re-sent record whose payload (customer, type, time or
  properties) differs from the event already counted under its id; the first one counted
  stays, the re-send is counted as a duplicate and recorded here with its own payload.
  Keyed by the re-sent record's source (topic, partition, offset), so a replay writes nothing new.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "meters", sa.Column("allow_negative", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.create_table(
        "dedup_conflicts",
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("organization_id", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("event_time", TS, nullable=False),
        sa.Column("properties", JSONB(), nullable=False),
        sa.Column("recorded_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition", "offset"),
    )
    op.create_index("dedup_conflicts_event", "dedup_conflicts", ["organization_id", "dedup_key"])


def downgrade() -> None:
    op.drop_index("dedup_conflicts_event", table_name="dedup_conflicts")
    op.drop_table("dedup_conflicts")
    op.drop_column("meters", "allow_negative")
