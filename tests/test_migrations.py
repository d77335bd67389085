"""The migrations build exactly the tables the models declare, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from digest.db import Base, load_all_models, open_database


def test_migrations_match_the_models(database_url: str) -> None:
    db = open_database(database_url)
    load_all_models()
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        db.dispose()
    # A difference means a model changed without a migration (or the reverse).
    assert diff == []
