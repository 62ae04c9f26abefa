"""draft grace period: organizations.draft_grace_s, invoices.issue_after

Revision ID: 0003
Revises: 0002

Existing organizations get a grace of 0 (the close issues at once, as before); existing
invoices get no `issue_after`. Values are spelled out here rather than imported, so this
revision keeps meaning what it meant when it was written.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "organizations", sa.Column("draft_grace_s", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.create_check_constraint("organization_draft_grace", "organizations", "draft_grace_s >= 0")
    op.add_column("invoices", sa.Column("issue_after", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint("invoice_issue_after_draft", "invoices", "issue_after IS NULL OR status = 'draft'")
    op.create_index("ix_invoices_drafts_due", "invoices", ["issue_after"], postgresql_where=sa.text("status = 'draft'"))


def downgrade() -> None:
    op.drop_index("ix_invoices_drafts_due", table_name="invoices")
    op.drop_constraint("invoice_issue_after_draft", "invoices", type_="check")
    op.drop_column("invoices", "issue_after")
    op.drop_constraint("organization_draft_grace", "organizations", type_="check")
    op.drop_column("organizations", "draft_grace_s")
