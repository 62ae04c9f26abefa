"""reissued invoices

Revision ID: 0008
Revises: 0007

`valora invoices reissue ID` voids an invoice and issues a new one for the same service
period with a new number: `invoices.replaces_invoice_id` links the new invoice to the voided
one (unique: an invoice is replaced at most once), and its `billing_reason` is 'reissue'. The
one-invoice-per-period key (`invoice_period`) now leaves reissues out, since a period that was
reissued has the voided invoice and its replacement.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("invoices", sa.Column("replaces_invoice_id", sa.Text(), nullable=True))
    op.create_foreign_key("invoice_replaces", "invoices", "invoices", ["replaces_invoice_id"], ["id"])
    op.create_unique_constraint("invoice_replaced_once", "invoices", ["replaces_invoice_id"])
    op.drop_constraint("invoice_billing_reason", "invoices", type_="check")
    op.create_check_constraint(
        "invoice_billing_reason", "invoices", "billing_reason IN ('period', 'opening', 'reissue')"
    )
    op.create_check_constraint(
        "invoice_reissue_link", "invoices", "(billing_reason = 'reissue') = (replaces_invoice_id IS NOT NULL)"
    )
    op.drop_constraint("invoice_period", "invoices", type_="unique")
    op.create_index(
        "invoice_period",
        "invoices",
        ["organization_id", "subscription_id", "period_start", "billing_reason"],
        unique=True,
        postgresql_where=sa.text("billing_reason <> 'reissue'"),
    )


def downgrade() -> None:
    op.drop_index("invoice_period", "invoices")
    reissued = "(SELECT id FROM invoices WHERE billing_reason = 'reissue')"
    op.execute(f"UPDATE late_usage SET billed_invoice_id = NULL WHERE billed_invoice_id IN {reissued}")
    op.execute(f"DELETE FROM invoice_lines WHERE invoice_id IN {reissued}")
    op.execute(f"DELETE FROM invoice_status_history WHERE invoice_id IN {reissued}")
    op.execute("DELETE FROM invoices WHERE billing_reason = 'reissue'")
    op.create_unique_constraint(
        "invoice_period", "invoices", ["organization_id", "subscription_id", "period_start", "billing_reason"]
    )
    op.drop_constraint("invoice_reissue_link", "invoices", type_="check")
    op.drop_constraint("invoice_billing_reason", "invoices", type_="check")
    op.create_check_constraint("invoice_billing_reason", "invoices", "billing_reason IN ('period', 'opening')")
    op.drop_constraint("invoice_replaced_once", "invoices", type_="unique")
    op.drop_constraint("invoice_replaces", "invoices", type_="foreignkey")
    op.drop_column("invoices", "replaces_invoice_id")
