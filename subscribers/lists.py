"""Mailing lists: create, find, count, delete."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.db import Database
from digest.errors import InvalidInputError, NotFoundError
from subscribers.models import STATUSES, WHEN_NOTHING_MATCHES, MailingList, Subscription

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


@dataclass(frozen=True)
class ListSummary:
    """A list with its subscription counts by status."""

    id: int
    name: str
    title: str
    counts: dict[str, int]
    when_nothing_matches: str = "skip"


def check_slug(kind: str, name: str) -> None:
    """Names of lists and schedules are short slugs (they go in URLs and commands)."""
    if not _NAME.match(name):
        raise InvalidInputError(
            f"{kind} name {name!r} must be lower-case letters, digits, - or _ "
            "(up to 100, starting with a letter or digit)")


def _check_policy(value: str) -> None:
    if value not in WHEN_NOTHING_MATCHES:
        raise InvalidInputError(f"when nothing matches must be one of "
                                f"{', '.join(WHEN_NOTHING_MATCHES)}, not {value!r}")


def create_list(db: Database, name: str, title: str | None = None,
                description: str = "", *, when_nothing_matches: str = "skip") -> MailingList:
    """Create a list; its name is a short slug (a-z, 0-9, - and _)."""
    _check_policy(when_nothing_matches)
    check_slug("list", name)
    with db.session() as session:
        if session.scalar(select(MailingList.id).where(MailingList.name == name)):
            raise InvalidInputError(f"list {name!r} already exists")
        mailing_list = MailingList(name=name, title=title or name.replace("-", " ").title(),
                                   description=description,
                                   when_nothing_matches=when_nothing_matches)
        session.add(mailing_list)
    return mailing_list


def edit_list(db: Database, name: str, *, title: str | None = None,
              when_nothing_matches: str | None = None) -> MailingList:
    """Change a list's title or its policy for readers whose keywords match nothing."""
    with db.session() as session:
        mailing_list = get_list(session, name)
        if title:
            mailing_list.title = title.strip()
        if when_nothing_matches:
            _check_policy(when_nothing_matches)
            mailing_list.when_nothing_matches = when_nothing_matches
    return mailing_list


def get_list(session: Session, name: str) -> MailingList:
    """A list by name, or a clear error."""
    found = session.scalars(select(MailingList).where(MailingList.name == name)).first()
    if found is None:
        raise NotFoundError(f"no list named {name!r}",
                            hint="`digest lists list` shows the lists; "
                                 "`digest lists create NAME` makes one")
    return found


def summarize_lists(db: Database) -> list[ListSummary]:
    """Every list with its counts of subscriptions by status."""
    with db.session() as session:
        rows = session.execute(
            select(Subscription.list_id, Subscription.status, func.count())
            .group_by(Subscription.list_id, Subscription.status)).all()
        counts: dict[int, dict[str, int]] = {}
        for list_id, status, n in rows:
            counts.setdefault(list_id, dict.fromkeys(STATUSES, 0))[status] = n
        return [ListSummary(m.id, m.name, m.title, counts.get(m.id, dict.fromkeys(STATUSES, 0)),
                            m.when_nothing_matches)
                for m in session.scalars(select(MailingList).order_by(MailingList.name))]


def delete_list(db: Database, name: str) -> None:
    """Delete a list with its subscriptions and issues."""
    from digest.models import Issue, delete_deliveries
    with db.session() as session:
        mailing_list = get_list(session, name)
        delete_deliveries(session, issue_ids=select(Issue.id)
                          .where(Issue.list_id == mailing_list.id))
        session.delete(mailing_list)
