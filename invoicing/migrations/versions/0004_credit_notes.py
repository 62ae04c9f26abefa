"""credit notes: credit_notes, credit_note_lines, credit_note_sequences

Revision ID: 0004
Revises: 0003

New tables only; no existing row changes, so existing invoices have no credit notes
(credited 0, amount due = total). Constraints are spelled out here rather than imported,
so this revision keeps meaning what it meant when it was written.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credit_note_sequences",
        sa.Column("organization_id", sa.Text(), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "year"),
    )
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("organization_id", sa.Text(), nullable=False),
        sa.Column("invoice_id", sa.Text(), nullable=False),
        sa.Column("number", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("after_payment", sa.Boolean(), nullable=False),
        sa.Column("invoice_total_minor", sa.BigInteger(), nullable=False),
        sa.Column("credited_before_minor", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"]),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.UniqueConstraint("organization_id", "number", name="credit_note_number"),
        sa.UniqueConstraint("invoice_id", "credited_before_minor", name="credit_note_chain"),
        sa.UniqueConstraint("id", "invoice_id", name="credit_note_invoice"),
        sa.CheckConstraint("total_minor > 0", name="credit_note_positive"),
        sa.CheckConstraint(
            "credited_before_minor >= 0 AND credited_before_minor + total_minor <= invoice_total_minor",
            name="credit_note_within_invoice",
        ),
        sa.CheckConstraint("btrim(reason) <> ''", name="credit_note_reason"),
    )
    op.create_table(
        "credit_note_lines",
        sa.Column("credit_note_id", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Text(), nullable=False),
        sa.Column("line_key", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("line_amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("line_credited_before_minor", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("credit_note_id", "position"),
        sa.ForeignKeyConstraint(
            ["credit_note_id", "invoice_id"], ["credit_notes.id", "credit_notes.invoice_id"], ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["invoice_id", "line_key"], ["invoice_lines.invoice_id", "invoice_lines.line_key"]),
        sa.UniqueConstraint("credit_note_id", "line_key", name="credit_note_line_once"),
        sa.UniqueConstraint("invoice_id", "line_key", "line_credited_before_minor", name="credit_note_line_chain"),
        sa.CheckConstraint("amount_minor > 0", name="credit_note_line_positive"),
        sa.CheckConstraint(
            "(line_key IS NULL AND line_amount_minor IS NULL AND line_credited_before_minor IS NULL) OR "
            "(line_key IS NOT NULL AND line_amount_minor IS NOT NULL AND line_credited_before_minor IS NOT NULL "
            "AND line_credited_before_minor >= 0 AND line_credited_before_minor + amount_minor <= line_amount_minor)",
            name="credit_note_line_within_line",
        ),
    )


def downgrade() -> None:
    op.drop_table("credit_note_lines")
    op.drop_table("credit_notes")
    op.drop_table("credit_note_sequences")
