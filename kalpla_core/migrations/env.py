"""Alembic environment: the core's history (branch ``core``) plus one branch per plugin, in
one ``alembic_version`` table. Run through ``kalpla db …``, which passes the app's engine."""

from __future__ import annotations

from alembic import context

from kalpla_core.db import Base

config = context.config
connection = config.attributes["connection"]

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    user_module_prefix="kalpla_core.db.",
)
with context.begin_transaction():
    context.run_migrations()
