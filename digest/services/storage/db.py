"""The database: engine, sessions, migrations and column types shared by every package."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    Engine,
    Select,
    String,
    any_,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import NullType, TypeDecorator

from digest.errors import ConfigError, DigestError
from digest.services.storage.files import create_private

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision, so that opening a database already at it costs one
# query instead of loading Alembic and every migration script in every command.
# tests/test_migrations.py fails when a new migration does not raise it.
HEAD_REVISION = "0015"


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and always read back timezone-aware.

    SQLite keeps no zone; storing UTC everywhere makes both databases agree.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class _JSONList(TypeDecorator[list[Any]]):
    """A list bound as one JSON text parameter (for SQLite's json_each)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(list(value))


class _ArrayText(TypeDecorator[list[Any]]):
    """A list bound as one PostgreSQL array literal ('{1,2,3}', '{"a","b"}'), cast to an
    array in the statement: psycopg's own array dumper is Python, value by value, and a
    batch binds thousands.

    The parameter goes untyped (no "::VARCHAR"), so PostgreSQL takes it as the array the
    cast names, parsed once; cast from a typed text it would be parsed again for every
    row compared, so a lookup's cost would grow with its keys times the rows it reads.
    """

    impl = NullType
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return "{" + ",".join(
            str(v) if isinstance(v, int) else
            '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in value) + "}"


def among(column: Any, postgres: bool, values: Any = None,
          name: str = "among") -> ColumnElement[bool]:
    """``column`` is one of ``values`` (given now, or as the parameter ``name`` when the
    statement runs), the list bound as one parameter: an array on PostgreSQL, JSON text
    read by json_each on SQLite.

    PostgreSQL parses and plans an IN list of a thousand parameters anew each time;
    SQLAlchemy does work in Python for each value of an IN list (expanding or not); and
    SQLite finds a thousand rows through json_each sooner than through as many parameters.
    """
    value = None if values is None else list(values)
    if postgres:
        array = cast(bindparam(name, value, type_=_ArrayText()), ARRAY(column.type))
        return column == any_(array)  # type: ignore[no-any-return]
    listed: Select[Any] = select(literal_column("value")).select_from(
        func.json_each(bindparam(name, value, type_=_JSONList())))
    return column.in_(listed)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    """Declarative base of every table in the project."""


class MetaValue(Base):
    """Instance-wide values kept in the database (the generated secret key)."""

    __tablename__ = "meta_values"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


@dataclass
class Database:
    """An engine plus a session factory for one database URL."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @property
    def is_postgres(self) -> bool:
        """Whether the database is PostgreSQL (row locks, advisory locks)."""
        return self.engine.dialect.name == "postgresql"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web app read while a send writes; the busy timeout makes a second
    # process wait for a lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine for a database URL, with the pragmas SQLite needs."""
    try:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        engine = create_engine(url, future=True, pool_pre_ping=True)
    except (ArgumentError, ImportError) as e:
        raise ConfigError(f"cannot use database URL: {e}", key="database_url") from e
    if engine.dialect.name == "sqlite":
        _create_sqlite_file(engine.url.database, engine.url.query)
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _create_sqlite_file(database: str | None, query: Mapping[str, Any]) -> None:
    """Create a SQLite database's file mode 0600 before SQLite opens it: it holds the
    secret key and the editors' password hashes. SQLite gives the journal, -wal and -shm
    files it makes beside it the database file's own mode (its Unix VFS sets them so,
    whatever the umask), so they are 0600 too. An existing file is left as it is."""
    if not database or database == ":memory:" or query.get("uri") or query.get("mode"):
        return
    path = Path(database)
    if path.parent.is_dir():  # otherwise SQLite says what is wrong when it connects
        with suppress(OSError):
            create_private(path)


def alembic_config(engine: Engine) -> AlembicConfig:
    """An Alembic configuration that runs our migrations on this engine."""
    from alembic.config import Config as AlembicConfig
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, all in one transaction."""
    from alembic import command
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo migrations down to ``revision``, all in one transaction."""
    from alembic import command
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step: Callable[[AlembicConfig, str], None],
             revision: str) -> None:
    """Run Alembic's ``step`` to ``revision`` in one transaction, committed at the end."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # The sqlite3 module begins a transaction only before a change of rows, so a
            # migration's first schema changes each took effect at once, and one failing
            # half-way left the schema half-changed: begun here, a failure undoes it all.
            connection.exec_driver_sql("BEGIN")
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = connection
        step(cfg, revision)
        connection.commit()


def schema_revision(engine: Engine) -> str | None:
    """The migration the database's schema is at; None when it has no schema yet (or
    cannot be read, which running the migrations then reports)."""
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return None
    return found[0][0] if len(found) == 1 else None


def schema_problem(revision: str | None) -> str | None:
    """What is wrong with a schema at ``revision`` for this version; None at head."""
    if revision == HEAD_REVISION:
        return None
    return (f"schema at {revision or 'nothing'}, this version needs {HEAD_REVISION}: run "
            "`digest db upgrade`")


def open_database(url: str, *, migrate: bool = True) -> Database:
    """Open a database, applying any pending migrations first (first use creates it)."""
    engine = make_engine(url)
    try:
        if migrate and schema_revision(engine) != HEAD_REVISION:
            upgrade(engine)
    except OperationalError as e:
        engine.dispose()
        raise DigestError(f"cannot open database {engine.url.render_as_string()}: {e.orig}",
                          hint="check database_url") from e
    return Database(url, engine, sessionmaker(engine, expire_on_commit=False))


def instance_secret(db: Database) -> str:
    """Return this instance's generated secret key, making it on first use."""
    with db.session() as session:
        found = session.scalar(select(MetaValue.value).where(MetaValue.key == "secret_key"))
        if found:
            return found
    candidate = secrets.token_urlsafe(48)
    try:
        with db.session() as session:
            session.add(MetaValue(key="secret_key", value=candidate))
    except IntegrityError:
        pass  # another process made one first; use theirs
    with db.session() as session:
        return session.scalars(select(MetaValue.value)
                               .where(MetaValue.key == "secret_key")).one()
