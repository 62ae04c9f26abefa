"""invoice prefixes unique across organizations

Revision ID: 0006
Revises: 0005

Invoice numbers are `PREFIX-YEAR-000001`; two organizations with one prefix (`acme` and
`ac-me` both defaulted to ACME) issued the same numbers. `organizations.invoice_prefix` gets
a unique constraint. Organizations that already share a prefix keep it for the one that
issued an invoice first (then by id); each other one gets the prefix's first 7 characters
plus 5 hex digits of its id's SHA-256, the rule `valora catalog apply` uses for a default
that is taken (`invoicing.catalog_guards.default_prefix`). Numbers already issued are kept.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE organizations o SET invoice_prefix = left(o.invoice_prefix, 7) "
        "|| upper(substr(encode(sha256(convert_to(o.id, 'UTF8')), 'hex'), 1, 5)) "
        "FROM (SELECT id, row_number() OVER (PARTITION BY invoice_prefix ORDER BY "
        "(SELECT min(i.issued_at) FROM invoices i WHERE i.organization_id = organizations.id) NULLS LAST, id) AS rn "
        "FROM organizations) d WHERE d.id = o.id AND d.rn > 1"
    )
    op.create_unique_constraint("organization_invoice_prefix", "organizations", ["invoice_prefix"])


def downgrade() -> None:
    op.drop_constraint("organization_invoice_prefix", "organizations", type_="unique")
