"""plan changes and in-advance billing

Revision ID: 0005
Revises: 0004

* `subscription_plan_changes`: one row per plan change, effective at an instant; the plan
  in force at t is the last change at or before t, else `subscriptions.plan_code` (the plan
  the subscription started on). `id` only ever grows: the worker compares its largest value
  with the one its catalog snapshot was loaded with.
* Usage is kept per plan segment: `segment_start` (the period's start, or the plan change
  that began the segment) joins the keys of `usage_totals` and `usage_unique_values`, and is
  recorded on `late_usage`. Existing rows get their period's start: no change, one segment.
* `usage_totals.latest_time` now holds the latest event time of every total (it was kept
  for `latest` meters only); a plan change checks it so no counted usage is re-segmented.
* In-advance billing: `subscriptions.opening_pending` (the opening invoice, billing the first
  period's flat fees in advance, is still to be written) and `advance_billed_until` (the end
  of the time in-advance flat fees have been billed for); `invoices.billing_reason`
  ('period': a period's close, 'opening': the first in-advance invoice) joins the
  invoice's unique period key. Existing rows: 'period', nothing pending.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subscription_plan_changes",
        sa.Column("organization_id", sa.Text(), nullable=False),
        sa.Column("subscription_id", sa.Text(), nullable=False),
        sa.Column("effective_at", TS, nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("from_plan", sa.Text(), nullable=False),
        sa.Column("to_plan", sa.Text(), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "subscription_id"], ["subscriptions.organization_id", "subscriptions.id"]
        ),
        sa.ForeignKeyConstraint(["organization_id", "from_plan"], ["plans.organization_id", "plans.code"]),
        sa.ForeignKeyConstraint(["organization_id", "to_plan"], ["plans.organization_id", "plans.code"]),
        sa.CheckConstraint("from_plan <> to_plan", name="plan_change_changes"),
        sa.PrimaryKeyConstraint("organization_id", "subscription_id", "effective_at"),
        sa.UniqueConstraint("id", name="plan_change_id"),
    )
    for table in ("usage_totals", "usage_unique_values", "late_usage"):
        op.add_column(table, sa.Column("segment_start", TS, nullable=True))
        op.execute(f"UPDATE {table} SET segment_start = period_start")
        op.alter_column(table, "segment_start", nullable=False)
    op.drop_constraint("usage_totals_pkey", "usage_totals", type_="primary")
    op.create_primary_key(
        "usage_totals_pkey",
        "usage_totals",
        ["organization_id", "subscription_id", "meter_key", "period_start", "segment_start"],
    )
    op.drop_constraint("usage_unique_values_pkey", "usage_unique_values", type_="primary")
    op.create_primary_key(
        "usage_unique_values_pkey",
        "usage_unique_values",
        ["organization_id", "subscription_id", "meter_key", "period_start", "segment_start", "value"],
    )
    op.create_check_constraint(
        "usage_segment", "usage_totals", "segment_start >= period_start AND segment_start < period_end"
    )
    op.add_column(
        "subscriptions", sa.Column("opening_pending", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("subscriptions", sa.Column("advance_billed_until", TS, nullable=True))
    op.add_column(
        "invoices", sa.Column("billing_reason", sa.Text(), server_default=sa.text("'period'"), nullable=False)
    )
    op.create_check_constraint("invoice_billing_reason", "invoices", "billing_reason IN ('period', 'opening')")
    op.drop_constraint("invoice_period", "invoices", type_="unique")
    op.create_unique_constraint(
        "invoice_period", "invoices", ["organization_id", "subscription_id", "period_start", "billing_reason"]
    )


def downgrade() -> None:
    op.drop_constraint("invoice_period", "invoices", type_="unique")
    op.execute("DELETE FROM invoices WHERE billing_reason <> 'period'")
    op.create_unique_constraint("invoice_period", "invoices", ["organization_id", "subscription_id", "period_start"])
    op.drop_constraint("invoice_billing_reason", "invoices", type_="check")
    op.drop_column("invoices", "billing_reason")
    op.drop_column("subscriptions", "advance_billed_until")
    op.drop_column("subscriptions", "opening_pending")
    op.drop_constraint("usage_segment", "usage_totals", type_="check")
    # Segments fold back into their periods' totals only by re-aggregating events; a downgrade
    # keeps each period's first segment, which is all there is unless a plan changed.
    op.execute("DELETE FROM usage_unique_values WHERE segment_start <> period_start")
    op.execute("DELETE FROM usage_totals WHERE segment_start <> period_start")
    op.drop_constraint("usage_unique_values_pkey", "usage_unique_values", type_="primary")
    op.create_primary_key(
        "usage_unique_values_pkey",
        "usage_unique_values",
        ["organization_id", "subscription_id", "meter_key", "period_start", "value"],
    )
    op.drop_constraint("usage_totals_pkey", "usage_totals", type_="primary")
    op.create_primary_key(
        "usage_totals_pkey", "usage_totals", ["organization_id", "subscription_id", "meter_key", "period_start"]
    )
    for table in ("usage_totals", "usage_unique_values", "late_usage"):
        op.drop_column(table, "segment_start")
    op.drop_table("subscription_plan_changes")
