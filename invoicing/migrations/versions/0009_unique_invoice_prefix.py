"""invoice prefixes unique across organizations

Revision ID: 0009
Revises: 0008

Invoice numbers are `PREFIX-YEAR-000001`; two organizations with one prefix (`acme` and
`ac-me` both defaulted to ACME) issued the same numbers. `organizations.invoice_prefix` gets
a unique constraint, checked at commit (one catalog may swap two prefixes). Where
organizations already share a prefix, the one that issued an invoice first (then the first
by id) keeps it; each other one gets the prefix's first 7 characters plus 5 hex digits of its
id's SHA-256, the rule `valora catalog apply` uses for a default that is taken
(`invoicing.catalog_guards.default_prefix`). Numbers already issued are kept.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
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
    # Deferred to the commit, so one catalog may swap two organizations' prefixes.
    op.create_unique_constraint(
        "organization_invoice_prefix", "organizations", ["invoice_prefix"], deferrable=True, initially="DEFERRED"
    )


def downgrade() -> None:
    op.drop_constraint("organization_invoice_prefix", "organizations", type_="unique")
