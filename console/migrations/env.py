"""Alembic environment: migrations run on the connection the console hands over (`console.db.migrate`)."""

from __future__ import annotations

from alembic import context

from console.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `console.db.migrate` runs these migrations
    raise RuntimeError("run the console's migrations through `lifeline console --migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
