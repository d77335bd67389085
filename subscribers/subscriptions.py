"""Subscribers on lists: add, remove, forget, and the audience of an issue; every write
of subscribers and subscriptions, one at a time and many at once (the CSV import of
:mod:`subscribers.imports` stores its chunks through :func:`add_people`,
:func:`add_subscriptions` and :func:`rename_and_rekey`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.core.grouping import keyword_key
from digest.errors import InvalidInputError, NotFoundError
from digest.services.storage.db import Database, among, utcnow
from digest.services.storage.models import delete_deliveries
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import Subscriber, Subscription, Suppression
from subscribers.addresses import address_hash, address_key, normalize_address
from subscribers.fields import one_line
from subscribers.lists import get_list

if TYPE_CHECKING:
    import psycopg

# Those who left a list: they are never subscribed again by an add or an import.
LEFT = (SubscriptionStatus.UNSUBSCRIBED, SubscriptionStatus.BOUNCED,
        SubscriptionStatus.COMPLAINED)
# Those still on a list (a sign-up awaiting confirmation too): leaving changes them.
ON_LIST = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED, SubscriptionStatus.PENDING)


def segment_of(keywords: Sequence[str]) -> str:
    """The segment a subscription's keywords put it in: matching forms, sorted, ";"-joined.

    Subscriptions with the same segment get the same rendering of an issue.
    """
    return ";".join(sorted({key for k in keywords if (key := keyword_key(k))}))


def clean_keywords(keywords: Sequence[str], *, most: int = 50) -> list[str]:
    """Keywords as a reader gave them (a form, a CSV, a command): each one clean line
    (:func:`subscribers.fields.one_line`), no blanks, no repeats, bounded."""
    cleaned = [word for k in keywords if keyword_key(word := one_line(k, most=100))]
    return list(dict.fromkeys(cleaned))[:most]


def refused(suppressed: bool, status: str | None) -> bool:
    """Whether an address may not be (re)subscribed: it is suppressed, or it left the list.

    The one "never revive" rule, for single adds and imports alike.
    """
    return suppressed or status in LEFT


@dataclass(frozen=True)
class SubscriptionView:
    """A subscription as the CLI shows it."""

    email: str
    name: str
    list_name: str
    status: str
    keywords: list[str]
    source: str
    created_at: datetime


@dataclass(frozen=True)
class AddResult:
    """What adding an address did: added, updated, unchanged, or refused (suppressed/left)."""

    outcome: str
    subscription_id: int | None
    email: str


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    """A subscriber by address, compared case-insensitively."""
    return session.scalars(select(Subscriber)
                           .where(Subscriber.email_key == address_key(email))).first()


def person_for(session: Session, email: str, *, name: str = "",
               now: datetime | None = None) -> Subscriber:
    """The subscriber with this (normalized) address, added if there is none."""
    person = find_subscriber(session, email)
    if person is None:
        person = Subscriber(email=email, email_key=address_key(email), name=name[:300],
                            created_at=now or utcnow())
        session.add(person)
        session.flush()
    return person


def find_subscription(session: Session, subscriber_id: int,
                      list_id: int) -> Subscription | None:
    """A person's subscription to a list, if any."""
    return session.scalars(select(Subscription).where(
        Subscription.subscriber_id == subscriber_id,
        Subscription.list_id == list_id)).first()


def is_suppressed(session: Session, email: str) -> bool:
    """Whether an address is on the suppression list (forgotten, bounced, complained)."""
    return session.get(Suppression, address_hash(email)) is not None


def subscribe(session: Session, list_id: int, email: str, *, name: str = "",  # noqa: PLR0913 - keyword-only: the columns a caller may set
              keywords: Sequence[str] = (), source: str = "cli",
              status: SubscriptionStatus = SubscriptionStatus.ACTIVE,
              now: datetime | None = None) -> AddResult:
    """Subscribe one (already normalized) address; never revive one that left or is suppressed."""
    now = now or utcnow()
    if refused(is_suppressed(session, email), None):
        return AddResult("suppressed", None, email)
    person = person_for(session, email, name=name, now=now)
    if name and person.name != name:
        person.name = name
    existing = find_subscription(session, person.id, list_id)
    if existing is None:
        sub = Subscription(subscriber_id=person.id, list_id=list_id, status=status,
                           source=source, keywords=list(keywords),
                           segment=segment_of(keywords), created_at=now,
                           updated_at=now,
                           confirmed_at=now if status == SubscriptionStatus.ACTIVE else None)
        session.add(sub)
        session.flush()
        return AddResult("added", sub.id, person.email)
    if refused(False, existing.status):
        return AddResult("suppressed", existing.id, person.email)
    changed = False
    if keywords and list(keywords) != existing.keywords:
        existing.keywords = list(keywords)
        existing.segment = segment_of(keywords)
        changed = True
    if changed:
        existing.updated_at = now
    return AddResult("updated" if changed else "unchanged", existing.id, person.email)


def add_subscriber(db: Database, list_name: str, email: str, *, name: str = "",  # noqa: PLR0913 - keyword-only: what `subscribers add` takes
                   keywords: Sequence[str] = (), source: str = "cli") -> AddResult:
    """Validate an address and subscribe it to a list, its name and keywords made clean
    lines (:func:`subscribers.fields.one_line`)."""
    display = normalize_address(email)
    try:
        with db.session() as session:
            mailing_list = get_list(session, list_name)
            return subscribe(session, mailing_list.id, display,
                             name=one_line(name, most=300), keywords=clean_keywords(keywords),
                             source=source)
    except IntegrityError as e:  # the same address added at the same moment elsewhere
        raise InvalidInputError(f"{display} was added concurrently; try again") from e


def unsubscribe(session: Session, subscription: Subscription, *,
                status: SubscriptionStatus = SubscriptionStatus.UNSUBSCRIBED,
                now: datetime | None = None) -> bool:
    """Mark a subscription as left; True if it changed. It is kept, so nothing revives it."""
    if subscription.status == status:
        return False
    subscription.status = status
    subscription.unsubscribed_at = subscription.updated_at = now or utcnow()
    return True


def remove_subscriber(db: Database, list_name: str, email: str) -> bool:
    """Unsubscribe an address from a list; True if it was subscribed."""
    with db.session() as session:
        mailing_list = get_list(session, list_name)
        person = find_subscriber(session, email)
        sub = None if person is None else find_subscription(session, person.id,
                                                            mailing_list.id)
        if sub is None:
            raise NotFoundError(f"{email} is not on list {list_name!r}")
        return unsubscribe(session, sub)


def forget_subscriber(db: Database, email: str) -> bool:
    """Erase a person everywhere, keeping only a hashed suppression entry."""
    with db.session() as session:
        person = find_subscriber(session, email)
        if session.get(Suppression, address_hash(email)) is None:
            session.add(Suppression(email_hash=address_hash(email), reason="forgotten"))
        if person is None:
            return False
        session.execute(delete(Subscription).where(Subscription.subscriber_id == person.id))
        delete_deliveries(session, subscriber_ids=[person.id])
        session.delete(person)
        return True


def list_subscriptions(db: Database, list_name: str,
                       status: str | None = None) -> list[SubscriptionView]:
    """The subscriptions of a list, oldest first, optionally of one status."""
    with db.session() as session:
        mailing_list = get_list(session, list_name)
        query = (select(Subscriber, Subscription)
                 .join(Subscription, Subscription.subscriber_id == Subscriber.id)
                 .where(Subscription.list_id == mailing_list.id)
                 .order_by(Subscription.id))
        if status:
            query = query.where(Subscription.status == status)
        return [SubscriptionView(p.email, p.name, mailing_list.name, s.status,
                                 list(s.keywords), s.source, s.created_at)
                for p, s in session.execute(query)]


@dataclass(frozen=True)
class PersonView:
    """One subscriber with every list they are on."""

    email: str
    name: str
    created_at: datetime
    subscriptions: list[SubscriptionView]


def show_subscriber(db: Database, email: str) -> PersonView:
    """A subscriber and their subscriptions, or a clear error."""
    from digest.services.storage.subscriber_models import MailingList
    with db.session() as session:
        person = find_subscriber(session, email)
        if person is None:
            raise NotFoundError(f"no subscriber {email}")
        rows = session.execute(
            select(Subscription, MailingList.name)
            .join(MailingList, MailingList.id == Subscription.list_id)
            .where(Subscription.subscriber_id == person.id)
            .order_by(MailingList.name)).all()
        return PersonView(person.email, person.name, person.created_at, [
            SubscriptionView(person.email, person.name, list_name, sub.status,
                             list(sub.keywords), sub.source, sub.created_at)
            for sub, list_name in rows])


# --- many at once: the CSV import -------------------------------------------------------
#
# New rows go in below SQLAlchemy's statement layer, which turns every parameter of every
# row into a value in Python: on PostgreSQL through COPY, on SQLite through one statement a
# chunk reading the rows from one JSON text (json_each). One row at a time (subscribe,
# above) goes through the ORM, whose objects its callers go on using and whose
# IntegrityError says that the same address was added at the same moment elsewhere.

def add_people(conn: Connection, people: list[tuple[str, str, str]],
                now: datetime) -> list[tuple[int, str]]:
    """Insert new subscribers (email, key, name); return (id, key) of each."""
    if conn.dialect.name == "postgresql":
        # COPY returns nothing: the ids are taken from the sequence first, as one text
        # (not a result row each, which SQLAlchemy would process one by one).
        ids = [int(i) for i in conn.execute(text(
            "SELECT string_agg(nextval(pg_get_serial_sequence('subscribers', 'id'))::text, "
            "',') FROM generate_series(1, :n)"), {"n": len(people)}).scalar_one().split(",")]
        stamp = _copy_text(_naive(now).isoformat(" "))
        _copy(conn, "subscribers (id, email, email_key, name, created_at)",
              "".join(f"{pid}\t{_copy_text(email)}\t{_copy_text(key)}\t{_copy_text(name)}"
                      f"\t{stamp}\n"
                      for pid, (email, key, name) in zip(ids, people, strict=True)))
        return [(pid, key) for pid, (_, key, _) in zip(ids, people, strict=True)]
    # One statement for the chunk: the table is AUTOINCREMENT, whose counter SQLite
    # writes at the end of every statement: an executemany, a statement a row, would write
    # it once a row; this one statement writes it once a chunk.
    conn.exec_driver_sql(
        "INSERT INTO subscribers (email, email_key, name, created_at) SELECT "
        "json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
        "json_extract(value, '$[2]'), ? FROM json_each(?)",
        (_sqlite_time(now), json.dumps(people)))
    keys = [key for _, key, _ in people]
    return [(pid, key) for pid, key in conn.execute(
        select(Subscriber.id, Subscriber.email_key)
        .where(among(Subscriber.email_key, False, keys)))]


def add_subscriptions(conn: Connection, list_id: int, source: str,
                       new: list[tuple[int, tuple[str, ...]]], now: datetime) -> None:
    """Insert active subscriptions (subscriber id, keywords) to a list."""
    columns = ("subscriber_id, list_id, status, source, keywords, segment, created_at, "
               "updated_at, confirmed_at")
    postgres = conn.dialect.name == "postgresql"
    stamp = _naive(now).isoformat(" ") if postgres else _sqlite_time(now)
    # A list's readers share a few keyword choices: each is serialized once.
    forms: dict[tuple[str, ...], tuple[str, str]] = {}
    for _, keywords in new:
        if keywords not in forms:
            forms[keywords] = (json.dumps(list(keywords)), segment_of(keywords))
    if postgres:
        shared = f"\t{list_id}\t{SubscriptionStatus.ACTIVE}\t{_copy_text(source)}\t"
        texts = {k: f"{_copy_text(keywords)}\t{_copy_text(segment)}"
                 for k, (keywords, segment) in forms.items()}
        _copy(conn, f"subscriptions ({columns})", "".join(
            f"{person}{shared}{texts[keywords]}\t{stamp}\t{stamp}\t{stamp}\n"
            for person, keywords in new))
    else:  # one statement a chunk, as for the subscribers
        conn.exec_driver_sql(
            f"INSERT INTO subscriptions ({columns}) SELECT json_extract(value, '$[0]'), ?, "
            "?, ?, json_extract(value, '$[1]'), json_extract(value, '$[2]'), ?, ?, ? "
            "FROM json_each(?)",
            (list_id, SubscriptionStatus.ACTIVE, source, stamp, stamp, stamp,
             json.dumps([(person, *forms[keywords]) for person, keywords in new])))


# COPY's text format: a backslash starts an escape; tab, newline and CR end a field or row.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]").search


def _copy_text(value: str) -> str:
    """A value as COPY's text format writes it. Most values hold nothing to escape, and
    looking for what to escape costs far less than translating, which copies the value."""
    return value if _COPY_SPECIAL(value) is None else value.translate(_COPY_ESCAPES)


def _copy(conn: Connection, target: str, data: str) -> None:
    """COPY rows, written in COPY's text format, into ``target`` ("table (columns)") on
    PostgreSQL, in the connection's transaction."""
    dbapi = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    with dbapi.cursor() as cursor, cursor.copy(f"COPY {target} FROM STDIN") as copy:
        copy.write(data)


def _naive(moment: datetime) -> datetime:
    """A UTC time as a timestamp without time zone holds it."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def _sqlite_time(moment: datetime) -> str:
    """A UTC time as SQLAlchemy stores it in SQLite (and reads back exactly)."""
    return f"{_naive(moment):%Y-%m-%d %H:%M:%S.%f}"


def rename_and_rekey(session: Session, renamed: list[dict[str, Any]],
                     rekeyed: list[dict[str, Any]]) -> None:
    """Write new names (``id``, ``name``) of subscribers and new keywords (``id``,
    ``keywords``, ``segment``, ``updated_at``) of subscriptions, each list in one
    statement."""
    if renamed:
        session.execute(update(Subscriber), renamed)
    if rekeyed:
        session.execute(update(Subscription), rekeyed)
