"""Alembic environment: runs on the engine or connection the caller hands in."""

from __future__ import annotations

from alembic import context

from digest.services.storage.db import Base
from digest.services.storage.tables import load_all_models

load_all_models()
config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: open our own
    with config.attributes["engine"].begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
