"""Alembic environment: runs online against the connection handed in by invoicing.db."""

from __future__ import annotations

from alembic import context

from invoicing.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
