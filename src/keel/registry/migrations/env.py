"""Alembic environment: runs migrations on the connection Keel hands over."""

from __future__ import annotations

from alembic import context

from keel.registry.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - Keel always passes a connection
    raise RuntimeError("keel registry migrations run through keel.registry.db.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
