"""subscription lifecycle: status, scheduled cancel, trial end, status history

Revision ID: 0002
Revises: 0001

Existing subscriptions become `active` with no cancel scheduled and no trial, and get
one history row (seq 1, from NULL) so every subscription's history starts at seq 1.
Values are spelled out here rather than imported, so this revision keeps meaning what
it meant when it was written.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_LIVE = "('trialing','active','past_due')"


def upgrade() -> None:
    op.add_column("subscriptions", sa.Column("status", sa.Text(), server_default="active", nullable=False))
    op.add_column(
        "subscriptions", sa.Column("cancel_at_period_end", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("subscriptions", sa.Column("trial_end", _TS, nullable=True))
    op.add_column("subscriptions", sa.Column("canceled_at", _TS, nullable=True))
    op.create_check_constraint(
        "subscription_status", "subscriptions", "status IN ('trialing','active','past_due','canceled','ended')"
    )
    op.create_check_constraint("subscription_trial", "subscriptions", "trial_end IS NULL OR trial_end > start_at")
    op.create_check_constraint(
        "subscription_trialing", "subscriptions", "status <> 'trialing' OR trial_end IS NOT NULL"
    )
    op.create_check_constraint(
        "subscription_cancel_scheduled",
        "subscriptions",
        f"NOT cancel_at_period_end OR (status IN {_LIVE} AND end_at IS NOT NULL AND canceled_at IS NOT NULL)",
    )
    op.create_check_constraint(
        "subscription_canceled",
        "subscriptions",
        "status <> 'canceled' OR (end_at IS NOT NULL AND canceled_at IS NOT NULL)",
    )
    op.create_index(
        "ix_subscriptions_trialing", "subscriptions", ["trial_end"], postgresql_where=sa.text("status = 'trialing'")
    )
    op.create_index(
        "ix_subscriptions_past_due",
        "subscriptions",
        ["organization_id", "id"],
        postgresql_where=sa.text("status = 'past_due'"),
    )
    op.create_index("ix_invoices_unpaid_due", "invoices", ["due_at"], postgresql_where=sa.text("status = 'issued'"))
    op.create_table(
        "subscription_status_history",
        sa.Column("organization_id", sa.Text(), nullable=False),
        sa.Column("subscription_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.Text(), nullable=True),
        sa.Column("to_status", sa.Text(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.CheckConstraint("seq >= 1", name="subscription_history_seq"),
        sa.ForeignKeyConstraint(
            ["organization_id", "subscription_id"], ["subscriptions.organization_id", "subscriptions.id"]
        ),
        sa.PrimaryKeyConstraint("organization_id", "subscription_id", "seq"),
    )
    op.execute(
        "INSERT INTO subscription_status_history "
        "(organization_id, subscription_id, seq, from_status, to_status, at, reason, actor) "
        "SELECT organization_id, id, 1, NULL, status, now(), 'status introduced by migration 0002', 'migration' "
        "FROM subscriptions"
    )


def downgrade() -> None:
    op.drop_table("subscription_status_history")
    op.drop_index("ix_invoices_unpaid_due", table_name="invoices")
    op.drop_index("ix_subscriptions_past_due", table_name="subscriptions")
    op.drop_index("ix_subscriptions_trialing", table_name="subscriptions")
    for name in (
        "subscription_canceled",
        "subscription_cancel_scheduled",
        "subscription_trialing",
        "subscription_trial",
        "subscription_status",
    ):
        op.drop_constraint(name, "subscriptions", type_="check")
    for column in ("canceled_at", "trial_end", "cancel_at_period_end", "status"):
        op.drop_column("subscriptions", column)
