"""CSV import and export of a list's subscribers.

Import streams the file and commits in chunks, so a million rows need neither a million
rows of memory nor one giant transaction. On PostgreSQL two connections store chunks side
by side while the file is read on a thread of its own; each address always goes to the
same connection, so a person's rows still apply in file order (the later row wins).
Every rejected row is reported with its line number and reason and copied to a rejects
CSV beside the input. An address that left the list (unsubscribed, bounced, complained)
or was forgotten is never re-activated. Importing the same file twice changes nothing.
Names and keywords are made clean lines as they are read (:mod:`subscribers.fields`).

The CSV files written (an export, the rejects) are opened by people in spreadsheets,
which run a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return as
a formula: such a cell is written with a ``'`` before it (OWASP's advice), and the
import takes that ``'`` away again, so an export imports back exactly.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import queue
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, TextIO, TypeVar

from sqlalchemy import Text, select
from sqlalchemy import cast as cast_

from digest.errors import InvalidInputError
from digest.services.storage.db import Database, among, utcnow
from digest.services.storage.files import open_private
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import Subscriber, Subscription, Suppression
from subscribers.addresses import address_hash, address_key, normalize_address
from subscribers.fields import one_line
from subscribers.lists import get_list
from subscribers.subscriptions import (
    add_people,
    add_subscriptions,
    refused,
    rename_and_rekey,
    segment_of,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_N = TypeVar("_N")

CHUNK = 5000
MAX_RECORD_LINES = 5
HEADER_FIELDS = ("email", "name", "keywords")
# csv's default limit (128 KB) would turn one absurd field into an error for the rest.
csv.field_size_limit(1_000_000)


@dataclass
class ImportReport:
    """What an import did, with every rejected row (line number, reason)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    suppressed: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejects_path: Path | None = None
    rows: int = 0


class _Row(NamedTuple):  # a tuple: made more cheaply than a frozen dataclass, once a row
    line: int
    email: str
    name: str
    keywords: tuple[str, ...]


# What makes a spreadsheet read a cell as a formula, after any quotes put before it (see
# the module docstring): a cell matching it is written with one more quote before it.
_FORMULA = re.compile(r"'*[=+\-@\t\r]").match
_FORMULA_STARTS = frozenset("=+-@\t\r'")


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell as written for people: with a ``'`` before it when a spreadsheet would
    otherwise run it (or when it would otherwise lose a ``'`` of its own on import)."""
    return "'" + cell if cell[:1] in _FORMULA_STARTS and _FORMULA(cell) else cell


def from_spreadsheet_safe(cell: str) -> str:
    """A cell as :func:`spreadsheet_safe` was given it: one ``'`` fewer before what a
    spreadsheet would run; every other cell as it is."""
    return cell[1:] if cell[:1] == "'" and _FORMULA(cell, 1) else cell


@lru_cache(maxsize=4096)  # a list's readers share a few keyword choices
def _keywords(text: str) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for part in from_spreadsheet_safe(text).split(";"):
        word = one_line(part, most=100)
        if word and word.casefold() not in seen:
            seen[word.casefold()] = word
    return tuple(seen.values())


def _records(handle: TextIO) -> Iterator[tuple[int, list[str] | None, str]]:
    """(line number, fields or None when unreadable, raw text) for each CSV record.

    A record runs over several physical lines only while its quotes are unbalanced (a
    quoted newline), and at most MAX_RECORD_LINES of them: an unclosed quote then spoils
    its own line, not the rest of the file.
    """
    lines = iter(enumerate(handle, start=1))
    pending: list[tuple[int, str]] = []
    for number, line in lines:
        if not pending and '"' not in line:
            # No quotes: the csv module would only split it at the commas, which
            # str.split does far sooner, unless a line break stands inside, which it refuses.
            body = line.rstrip("\r\n")
            if "\r" not in body and "\n" not in body:
                yield number, body.split(",") if body else [], line
                continue
        pending.append((number, line))
        text = "".join(part for _, part in pending)
        if text.count('"') % 2 and len(pending) < MAX_RECORD_LINES:
            continue  # a quoted field goes on in the next line
        if text.count('"') % 2:
            first_number, first_line = pending[0]
            yield first_number, None, first_line
            # Read again from the line after the spoiled one.
            rest = pending[1:]
            pending = []
            for again_number, again_line in rest:
                if again_line.count('"') % 2:
                    yield again_number, None, again_line
                    continue
                yield again_number, next(csv.reader([again_line])), again_line
            continue
        first_number = pending[0][0]
        pending = []
        try:
            yield first_number, next(csv.reader([text]), []), text
        except csv.Error:
            yield first_number, None, text
    if pending:
        yield pending[0][0], None, "".join(part for _, part in pending)


# What surrogateescape makes of bytes that are not UTF-8.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _read(handle: TextIO, source: str, report: ImportReport,
          reject: Callable[[int, str, list[str]], None]) -> Iterator[_Row]:
    """Valid rows of a CSV file; reject the rest, naming the line."""
    records = _records(handle)
    try:
        _, header, _ = next(records)
    except StopIteration:
        raise InvalidInputError(f"{source} is empty; it needs a header row with 'email'") \
            from None
    columns = [h.strip().lstrip("\ufeff").casefold() for h in header or []]
    if "email" not in columns:
        raise InvalidInputError(
            f"{source} line 1: no 'email' column in the header ({', '.join(header or [])})",
            hint="the first row names the columns: email, and optionally name, keywords")
    where = {name: columns.index(name) for name in HEADER_FIELDS if name in columns}
    email_at = where["email"]
    name_at, keywords_at = where.get("name", -1), where.get("keywords", -1)
    for line, fields, raw in records:
        if fields is None:
            report.rows += 1
            reject(line, "broken quoting (a quote is never closed)", [raw.rstrip("\r\n")])
            continue
        if not any(map(str.strip, fields)):
            continue
        report.rows += 1
        if _UNDECODABLE.search(raw):
            reject(line, "not UTF-8 text", fields)
            continue
        if "\0" in raw:  # no database text column holds it (PostgreSQL refuses it)
            reject(line, "a NUL character in the row", fields)
            continue
        count = len(fields)
        if count <= email_at:
            reject(line, "no email field (too few columns)", fields)
            continue
        address, name = fields[email_at], fields[name_at] if 0 <= name_at < count else ""
        if "'" in raw:  # perhaps a cell written spreadsheet-safe (one look a row)
            address, name = from_spreadsheet_safe(address), from_spreadsheet_safe(name)
        try:
            email = normalize_address(address)
        except InvalidInputError as e:
            reject(line, str(e), fields)
            continue
        yield _Row(line, email, one_line(name, most=300),
                   _keywords(fields[keywords_at].strip() if 0 <= keywords_at < count else ""))


def import_csv(db: Database, list_name: str, path: Path, *, source: str = "import",
               on_progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import subscribers from a CSV file into a list; see the module docstring.

    ``on_progress(rows, expected)`` follows each chunk stored: the rows read up to it,
    and how many the whole file holds at the rate of rows to bytes read so far (exact
    on the last call).
    """
    with db.session() as session:
        list_id = get_list(session, list_name).id
    report = ImportReport()
    rejects_path: Path | None = None
    rejects_file: TextIO | None = None
    rejects: Any = None  # a csv writer, made on the first rejected row

    def reject(line: int, reason: str, fields: list[str]) -> None:
        nonlocal rejects_file, rejects, rejects_path
        report.rejected.append((line, reason))
        if rejects is None:
            rejects_file, rejects_path = _open_rejects(path)
            rejects = csv.writer(rejects_file)
            rejects.writerow(["line", "reason", "fields"])
        rejects.writerow([line, spreadsheet_safe(reason), *[
            spreadsheet_safe(f.encode("utf-8", "replace").decode()) for f in fields]])

    # On PostgreSQL the rows are shared out by address between two connections that
    # store their chunks side by side, so the server works on one while this process
    # prepares the other: each address always goes to the same one, so they never touch
    # the same rows, and an address's rows are stored in file order.
    parts = 2 if db.is_postgres else 1
    tallies = [ImportReport() for _ in range(parts)]
    shown = 0  # rows read up to the last chunk stored, as the progress callback has them
    size = path.stat().st_size

    def store(part: int, chunk: dict[str, _Row], read: tuple[int, int]) -> None:
        nonlocal shown
        _apply(db, list_id, chunk, tallies[part], source)
        rows, consumed = read
        if on_progress and rows > shown:
            shown = rows
            on_progress(rows, max(rows, rows * size // max(consumed, 1)))

    try:
        with open(path, "rb") as raw:
            # surrogateescape keeps undecodable bytes visible, so that row alone is refused.
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape",
                                    newline="")
            # Each chunk with how far into the file its rows were read, for the estimate
            # (a pipe has no size: its rows so far are all it is known to hold).
            tell = raw.tell if raw.seekable() else lambda: size
            chunks = ((part, chunk, (rows, tell())) for part, chunk, rows in
                      _chunks(_read(text, str(path), report, reject), report, parts))
            if parts > 1:
                # The file is read on a thread of its own while the chunks before are
                # stored, mostly by the server.
                _fan_out(chunks, parts, store)
            else:
                # SQLite stores in this process, holding Python's lock through much of
                # it: a reader thread would only contend for that lock, and slow it.
                for part, chunk, rows in chunks:
                    store(part, chunk, rows)
        if on_progress:
            on_progress(report.rows, report.rows)
    finally:
        if rejects_file is not None:
            rejects_file.close()
        for tally in tallies:
            report.added += tally.added
            report.updated += tally.updated
            report.unchanged += tally.unchanged
            report.suppressed += tally.suppressed
    report.rejects_path = rejects_path if report.rejected else None
    return report


def _open_rejects(source: Path) -> tuple[TextIO, Path | None]:
    """The rejects CSV, opened beside the input file, else (the input is a pipe such as
    ``<(…)``, or its folder cannot be written) in the working folder; when neither can be
    written, the null device and no path, the rejected rows then being only in the
    report (held nowhere else, however many)."""
    name = source.stem + ".rejects.csv"
    places = [source.with_name(name)] if source.is_file() else []
    if not places or places[0].absolute().parent != Path.cwd():
        places.append(Path.cwd() / name)
    for where in places:
        try:  # the rows hold people's addresses: for the owner's eyes only
            return open_private(where, "w", encoding="utf-8", newline=""), where
        except OSError as e:
            log.warning("cannot write the rejected rows to %s: %s", where, e.strerror or e)
    return open(os.devnull, "w", encoding="utf-8", newline=""), None


def _chunks(rows: Iterator[_Row], report: ImportReport, parts: int,
            ) -> Iterator[tuple[int, dict[str, _Row], int]]:
    """(part, chunk, rows read so far): the rows shared out by address into ``parts``
    parts (the same way every time), in chunks of up to CHUNK addresses. The same person
    twice in a chunk is merged, the later row's values winning."""
    chunks: list[dict[str, _Row]] = [{} for _ in range(parts)]
    for row in rows:
        key = address_key(row.email)
        part = zlib.crc32(key.encode("utf-8", "surrogatepass")) % parts if parts > 1 else 0
        chunk = chunks[part]
        first = chunk.get(key)
        chunk[key] = row if first is None else _Row(
            first.line, first.email, row.name or first.name, row.keywords or first.keywords)
        if len(chunk) >= CHUNK:
            yield part, chunk, report.rows
            chunks[part] = {}
    for part, chunk in enumerate(chunks):
        if chunk:
            yield part, chunk, report.rows


_DONE = object()


def _fan_out(items: Iterator[tuple[int, _T, _N]], parts: int,
             handle: Callable[[int, _T, _N], None], depth: int = 2) -> None:
    """Call ``handle(part, item, n)`` for each of ``items``, which are produced on a
    thread of their own, at most ``depth`` ahead; each part's items are handled in
    order on a thread of its part (part 0 on this one). The first error, in the
    producer or a handler, stops the rest and is raised here."""
    queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in range(parts)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def fail(error: BaseException) -> None:
        errors.append(error)
        stop.set()

    def put(part: int, entry: Any) -> bool:
        while not stop.is_set():
            try:
                queues[part].put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for part, item, n in items:
                if not put(part, (item, n)):
                    return
            for part in range(parts):
                put(part, (_DONE, 0))
        except BaseException as e:  # raised by the caller's thread
            fail(e)

    def consume(part: int) -> None:
        try:
            while not stop.is_set():
                try:
                    item, n = queues[part].get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    return
                handle(part, item, n)
        except BaseException as e:  # raised by the caller's thread
            fail(e)

    threads = [threading.Thread(target=produce, name="digest-import-reader", daemon=True)]
    threads += [threading.Thread(target=consume, args=(part,), daemon=True,
                                 name=f"digest-import-{part}") for part in range(1, parts)]
    for thread in threads:
        thread.start()
    try:
        consume(0)
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


def _apply(db: Database, list_id: int, rows: dict[str, _Row], report: ImportReport,
           source: str) -> None:
    """Store one chunk in one transaction.

    Reads go through the connection, not the session: the ORM's row loading and decoding
    each stored keyword list as JSON would be most of the work of importing rows that are
    already stored, unchanged.
    """
    now = utcnow()
    keys = list(rows)
    pg = db.is_postgres
    with db.session() as session:
        conn = session.connection()
        people: dict[str, tuple[int, str]] = {
            key: (pid, name) for pid, key, name in conn.execute(
                select(Subscriber.id, Subscriber.email_key, Subscriber.name)
                .where(among(Subscriber.email_key, pg, keys)))}
        suppressed: set[str] = set()
        if conn.scalar(select(Suppression.email_hash).limit(1)) is not None:
            hashes = {address_hash(k): k for k in keys}
            suppressed = {hashes[h] for h in conn.scalars(
                select(Suppression.email_hash)
                .where(among(Suppression.email_hash, pg, hashes)))}
        subs: dict[int, tuple[int, str, tuple[str, ...]]] = {
            sid: (sub_id, status, _stored_keywords(keywords))
            for sub_id, sid, status, keywords in conn.execute(
                select(Subscription.id, Subscription.subscriber_id, Subscription.status,
                       cast_(Subscription.keywords, Text))
                .where(Subscription.list_id == list_id,
                       among(Subscription.subscriber_id, pg,
                             [pid for pid, _ in people.values()])))}
        new_people = [(r.email, k, r.name) for k, r in rows.items()
                      if k not in people and k not in suppressed]
        if new_people:
            people.update({key: (pid, rows[key].name)
                           for pid, key in add_people(conn, new_people, now)})
        new_subs, renamed, rekeyed = [], [], []
        for key, row in rows.items():
            person_id, person_name = people.get(key, (0, ""))
            sub = subs.get(person_id)
            if refused(key in suppressed, sub[1] if sub else None):
                report.suppressed += 1
                continue
            if sub is None:
                new_subs.append((person_id, row.keywords))
                report.added += 1
                continue
            sub_id, _, keywords = sub
            changed = False
            if row.name and row.name != person_name:
                renamed.append({"id": person_id, "name": row.name})
                changed = True
            if row.keywords and row.keywords != keywords:
                rekeyed.append({"id": sub_id, "keywords": list(row.keywords),
                                "segment": segment_of(row.keywords), "updated_at": now})
                changed = True
            if changed:
                report.updated += 1
            else:
                report.unchanged += 1
        if new_subs:
            add_subscriptions(conn, list_id, source, new_subs, now)
        rename_and_rekey(session, renamed, rekeyed)


@lru_cache(maxsize=4096)  # the stored JSON text of a list's few keyword choices
def _stored_keywords(stored: str | None) -> tuple[str, ...]:
    return tuple(json.loads(stored) or ()) if stored else ()


def export_csv(db: Database, list_name: str, out: TextIO, *,
               status: str | None = SubscriptionStatus.ACTIVE) -> int:
    """Write a list's subscribers in the import format, each cell spreadsheet-safe (see
    the module docstring); return how many rows."""
    writer = csv.writer(out)
    writer.writerow(HEADER_FIELDS)
    count = 0
    with db.session() as session:
        list_id = get_list(session, list_name).id
        query = (select(Subscriber.email, Subscriber.name, Subscription.keywords)
                 .join(Subscription, Subscription.subscriber_id == Subscriber.id)
                 .where(Subscription.list_id == list_id).order_by(Subscription.id)
                 .execution_options(yield_per=5000))
        if status:
            query = query.where(Subscription.status == status)
        safe = spreadsheet_safe
        for email, name, keywords in session.execute(query):
            writer.writerow([safe(email), safe(name), safe(";".join(keywords))])
            count += 1
    return count
