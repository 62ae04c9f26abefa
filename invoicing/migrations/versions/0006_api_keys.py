"""API keys

Revision ID: 0006
Revises: 0005

* `api_keys`: one row per key of the HTTP API, owned by one organization. The secret is never
  stored: only its SHA-256 (`secret_sha256`, 32 bytes; the secret carries 256 random bits, so a
  plain hash is enough and a lookup stays one indexed read). `id` is the key's public part
  (the secret begins `vk_<id>_`), used to find the row before comparing hashes in constant time.
  `scopes` holds `resource:action` strings; `revoked_at`/`expires_at` end a key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("organization_id", sa.Text(), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("secret_sha256", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.CheckConstraint("octet_length(secret_sha256) = 32", name="api_key_hash_length"),
        sa.CheckConstraint("cardinality(scopes) >= 1", name="api_key_scopes"),
    )
    op.create_index("ix_api_keys_organization", "api_keys", ["organization_id"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_organization", table_name="api_keys")
    op.drop_table("api_keys")
