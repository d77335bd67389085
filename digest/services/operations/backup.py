"""`digest db backup` and `digest db check`.

SQLite: a consistent copy made with SQLite's online backup API while the service runs
(readers and writers go on; the copy is one moment's state), then checked. PostgreSQL:
the server's own tool does it right (``pg_dump``), so this says which command to run
instead of producing something that only looks like a backup.

What a restore means for a send: the copy knows every delivery recorded before its
moment. Restored and resumed, a send goes on from there, and batches that were being
handed over at that moment become uncertain rather than being sent again. Messages a
sender handed over *after* the copy was made are not in it: restore a copy taken after
the senders stopped (or stop them, copy, restore), or those people get the issue twice.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from digest.errors import ConfigError, InvalidInputError
from digest.services.storage.db import Base, schema_problem, schema_revision
from digest.services.storage.files import create_private
from digest.services.storage.tables import load_all_models


@dataclass
class CheckReport:
    """What `digest db check` found."""

    revision: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def pg_dump_command(engine: Engine, path: Path) -> str:
    """The pg_dump command that backs up this PostgreSQL database (no password in it)."""
    url = engine.url.set(drivername="postgresql", password=None)
    return (f"pg_dump --format=custom --file {shlex.quote(str(path))} "
            f"{shlex.quote(url.render_as_string(hide_password=False))}")


def backup(engine: Engine, path: Path, *, overwrite: bool = False) -> int:
    """Copy a SQLite database to ``path`` while it is in use; return the copy's size.

    The copy is written beside ``path`` under a temporary name, checked, then renamed, so
    ``path`` is either the old file or a complete, checked copy.
    """
    if engine.dialect.name != "sqlite":
        raise ConfigError(
            "digest db backup copies SQLite databases only; PostgreSQL is backed up with "
            "its own tool, consistently while it runs:\n  " + pg_dump_command(engine, path),
            hint="restore it with pg_restore --clean --dbname …")
    source = engine.url.database
    if not source or source == ":memory:":
        raise InvalidInputError("this database lives in memory; there is nothing to copy")
    if Path(source).resolve() == path.resolve():
        raise InvalidInputError(f"{path} is the database itself; name another file")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; name a new file or pass --overwrite")
    temporary = path.with_name(path.name + ".partial")
    temporary.unlink(missing_ok=True)
    # The copy holds what the database holds (the secret key, password hashes): made
    # 0600 before SQLite opens it, it keeps that mode, and so does its journal.
    create_private(temporary)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(temporary)
        try:
            # Page by page, letting writers in between steps; a write during the copy
            # restarts it, so the copy is always of one moment.
            src.backup(dst, pages=4096)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            found = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            dst.close()
    finally:
        src.close()
    if found != "ok":
        temporary.unlink(missing_ok=True)
        raise InvalidInputError(f"the copy failed its integrity check: {found}")
    os.replace(temporary, path)
    return path.stat().st_size


def check(engine: Engine) -> CheckReport:
    """Integrity and who may read the file (SQLite), schema revision, and every table the
    code expects."""
    report = CheckReport(schema_revision(engine))
    problem = schema_problem(report.revision)
    if problem:
        report.problems.append(problem)
    problem = _open_to_others(engine)
    if problem:
        report.problems.append(problem)
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            for (row,) in connection.execute(text("PRAGMA integrity_check")):
                if row != "ok":
                    report.problems.append(f"integrity: {row}")
            for table, rowid, parent, _ in connection.execute(
                    text("PRAGMA foreign_key_check")):
                report.problems.append(f"{table} row {rowid} points at a missing {parent} row")
        load_all_models()
        present = set(inspect(connection).get_table_names())
        for table in sorted(Base.metadata.tables):
            if table not in present:
                report.problems.append(f"table {table} is missing")
    return report


def _open_to_others(engine: Engine) -> str | None:
    """What is wrong when a SQLite database's file is open to other users: new ones are
    made 0600, a file made by an older version may not be."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    try:
        mode = stat.S_IMODE(os.stat(database).st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (f"{database} is open to other users (mode {mode:o}), and it holds the secret "
            f"key and the editors' password hashes: run chmod 600 {shlex.quote(database)}")
