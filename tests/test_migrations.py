"""The migrations build exactly the tables the models declare, on both databases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from digest.services.storage.db import HEAD_REVISION, Base, open_database
from digest.services.storage.tables import load_all_models


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


def test_head_revision_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    from digest.services.storage.db import alembic_config, make_engine
    config = alembic_config(make_engine("sqlite://"))
    # A new migration must raise HEAD_REVISION, or databases would never get it.
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


def test_opening_a_database_at_head_does_not_load_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/at-head.db"
    open_database(url).dispose()  # creates the schema
    code = ("import sys\nfrom digest.services.storage.db import open_database, schema_revision\n"
            f"db = open_database({url!r})\n"
            "print(schema_revision(db.engine), 'alembic' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == [HEAD_REVISION, "False"]


def test_an_old_schema_is_upgraded_on_open(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from digest.services.storage.db import make_engine, schema_revision, upgrade
    url = f"sqlite:///{tmp_path}/old.db"
    engine = make_engine(url)
    upgrade(engine, "0004")
    assert schema_revision(engine) == "0004"
    engine.dispose()
    db = open_database(url)
    try:
        assert schema_revision(db.engine) == HEAD_REVISION
        assert "counts" in {c["name"] for c in inspect(db.engine).get_columns("issues")}
    finally:
        db.dispose()


def test_a_list_made_before_its_own_lookback_keeps_the_setting(tmp_path: Path) -> None:
    # 0014 adds lists.lookback_days; a list from before has none, so its issues keep
    # looking back `lookback_days`, and the migration goes down again cleanly.
    from sqlalchemy import inspect, text

    from digest.services.storage.db import downgrade, make_engine, schema_revision, upgrade
    url = f"sqlite:///{tmp_path}/old.db"
    engine = make_engine(url)
    upgrade(engine, "0013")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO lists (name, title, description, when_nothing_matches,"
                          " created_at) VALUES ('weekly', 'Weekly', '', 'skip', "
                          "'2026-12-01 00:00:00')"))
    engine.dispose()
    db = open_database(url)
    try:
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT lookback_days FROM lists")).all() == [(None,)]
    finally:
        db.dispose()
    engine = make_engine(url)
    try:
        downgrade(engine, "0013")
        assert schema_revision(engine) == "0013"
        assert "lookback_days" not in {c["name"] for c in inspect(engine).get_columns("lists")}
    finally:
        engine.dispose()


def test_among_finds_exactly_the_values_given(database_url: str) -> None:
    # The lists bound as one parameter (JSON text on SQLite, an array literal on
    # PostgreSQL) must match awkward strings exactly, and ints.
    from sqlalchemy import select

    from digest.services.storage.db import among
    from digest.services.storage.subscriber_models import Subscriber
    db = open_database(database_url)
    keys = ['a"b@x.org', "c\\d@x.org", "x,y@x.org", "{z}@x.org", "plain@x.org", "é@x.org"]
    try:
        with db.session() as session:
            session.add_all(Subscriber(email=k, email_key=k) for k in [*keys, "other@x.org"])
        with db.session() as session:
            found = session.scalars(select(Subscriber.email_key).where(
                among(Subscriber.email_key, db.is_postgres, keys))).all()
            assert sorted(found) == sorted(keys)
            ids = session.scalars(select(Subscriber.id).where(
                among(Subscriber.email_key, db.is_postgres, keys[:2]))).all()
            again = session.scalars(select(Subscriber.email_key).where(
                among(Subscriber.id, db.is_postgres, ids))).all()
            assert sorted(again) == sorted(keys[:2])
            assert session.scalars(select(Subscriber.id).where(
                among(Subscriber.id, db.is_postgres, []))).all() == []
    finally:
        db.dispose()
