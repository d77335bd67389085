"""Mailing lists: create, find, count, delete."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.errors import InvalidInputError, NotFoundError
from digest.services.storage.db import Database
from digest.services.storage.states import SubscriptionStatus, WhenNothingMatches
from digest.services.storage.subscriber_models import (
    ENTRY_PARTS,
    MailingList,
    Subscription,
)
from subscribers.fields import one_line

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


@dataclass(frozen=True)
class ListSummary:
    """A list with its subscription counts by status."""

    id: int
    name: str
    title: str
    counts: dict[str, int]
    when_nothing_matches: str = WhenNothingMatches.SKIP


def check_slug(kind: str, name: str) -> None:
    """Names of lists and schedules are short slugs (they go in URLs and commands)."""
    if not _NAME.match(name):
        raise InvalidInputError(
            f"{kind} name {name!r} must be lower-case letters, digits, - or _ "
            "(up to 100, starting with a letter or digit)")


def _check_policy(value: str) -> None:
    if value not in set(WhenNothingMatches):
        raise InvalidInputError(f"when nothing matches must be one of "
                                f"{', '.join(WhenNothingMatches)}, not {value!r}")


def create_list(db: Database, name: str, title: str | None = None,
                description: str = "", *,
                when_nothing_matches: str = WhenNothingMatches.SKIP) -> MailingList:
    """Create a list; its name is a short slug (a-z, 0-9, - and _). Its title goes in
    every email's Subject and List-Id: one clean line (:func:`subscribers.fields.one_line`).
    """
    _check_policy(when_nothing_matches)
    check_slug("list", name)
    title = one_line(title or "", most=300) or None
    with db.session() as session:
        if session.scalar(select(MailingList.id).where(MailingList.name == name)):
            raise InvalidInputError(f"list {name!r} already exists")
        mailing_list = MailingList(name=name, title=title or name.replace("-", " ").title(),
                                   description=description,
                                   when_nothing_matches=when_nothing_matches)
        session.add(mailing_list)
    return mailing_list


MAX_LOOKBACK_DAYS = 3650  # ten years: past that a window is a mistake, not a choice
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")


def check_parts(text: str) -> str:
    """A comma-separated choice of ENTRY_PARTS, checked and without spaces."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in ENTRY_PARTS]
    if unknown:
        raise InvalidInputError(f"unknown entry part {unknown[0]!r}; choose from "
                                f"{', '.join(ENTRY_PARTS)} (comma-separated, in order)")
    if len(set(parts)) != len(parts):
        raise InvalidInputError("an entry part is named twice")
    return ",".join(parts)


def _check_edit(language: str | None, logo_url: str | None,
                logo_size: tuple[int, int] | None, lead_max_chars: int | None,
                lookback_days: int | None) -> None:
    """Refuse, with what is wrong, a value :func:`edit_list` cannot store."""
    if language is not None and not _LANGUAGE.match(language):
        raise InvalidInputError(f"language {language!r} is not a language tag like en, ar "
                                "or pt-BR")
    if logo_url and urlsplit(logo_url).scheme not in ("http", "https"):
        raise InvalidInputError(f"logo {logo_url!r} must be an http(s) URL")
    if logo_url and (not logo_size or min(logo_size) < 1):
        raise InvalidInputError(f"the logo {logo_url} needs its width and height in pixels "
                                "(--logo-width, --logo-height)")
    if lead_max_chars is not None and not 40 <= lead_max_chars <= 2000:
        raise InvalidInputError(f"lead length {lead_max_chars} must be 40 to 2000 characters")
    if lookback_days is not None and not 0 <= lookback_days <= MAX_LOOKBACK_DAYS:
        raise InvalidInputError(f"lookback of {lookback_days} days must be 1 to "
                                f"{MAX_LOOKBACK_DAYS} (or 0 for the lookback_days setting)")


def edit_list(db: Database, name: str, *, title: str | None = None,  # noqa: PLR0913 - keyword-only: one per list setting
              when_nothing_matches: str | None = None, language: str | None = None,
              logo_url: str | None = None, logo_alt: str | None = None,
              logo_size: tuple[int, int] | None = None, entry_parts: str | None = None,
              lead_max_chars: int | None = None,
              lookback_days: int | None = None) -> MailingList:
    """Change a list's title, its policy for readers whose keywords match nothing, how
    its emails look (language, masthead logo, what each entry shows, lead length), or how
    many days back its issues look (``lookback_days``; 0 goes back to the setting).

    ``logo_url=""`` removes the logo; a logo needs its alt text and its size.
    """
    _check_edit(language, logo_url, logo_size, lead_max_chars, lookback_days)
    with db.session() as session:
        mailing_list = get_list(session, name)
        if title and (title := one_line(title, most=300)):
            mailing_list.title = title
        if when_nothing_matches:
            _check_policy(when_nothing_matches)
            mailing_list.when_nothing_matches = when_nothing_matches
        if language is not None:
            mailing_list.language = language
        if logo_url == "":
            mailing_list.logo_url = mailing_list.logo_alt = None
            mailing_list.logo_width = mailing_list.logo_height = None
        elif logo_url:
            mailing_list.logo_url = logo_url
            mailing_list.logo_width, mailing_list.logo_height = logo_size or (None, None)
            mailing_list.logo_alt = one_line(logo_alt or mailing_list.logo_alt
                                             or mailing_list.title)
        elif logo_alt is not None:
            mailing_list.logo_alt = one_line(logo_alt)
        if entry_parts is not None:
            mailing_list.entry_parts = check_parts(entry_parts)
        if lead_max_chars is not None:
            mailing_list.lead_max_chars = lead_max_chars
        if lookback_days is not None:
            mailing_list.lookback_days = lookback_days or None
    return mailing_list


def get_list(session: Session, name: str) -> MailingList:
    """A list by name, or a clear error."""
    found = session.scalars(select(MailingList).where(MailingList.name == name)).first()
    if found is None:
        raise NotFoundError(f"no list named {name!r}",
                            hint="`digest lists list` shows the lists; "
                                 "`digest lists create --list NAME` makes one")
    return found


def _no_subscriptions() -> dict[str, int]:
    """A count of 0 for every subscription status, in the order lists show them."""
    return {status: 0 for status in SubscriptionStatus}


def summarize_lists(db: Database) -> list[ListSummary]:
    """Every list with its counts of subscriptions by status."""
    with db.session() as session:
        rows = session.execute(
            select(Subscription.list_id, Subscription.status, func.count())
            .group_by(Subscription.list_id, Subscription.status)).all()
        counts: dict[int, dict[str, int]] = {}
        for list_id, status, n in rows:
            counts.setdefault(list_id, _no_subscriptions())[status] = n
        return [ListSummary(m.id, m.name, m.title, counts.get(m.id, _no_subscriptions()),
                            m.when_nothing_matches)
                for m in session.scalars(select(MailingList).order_by(MailingList.name))]


def delete_list(db: Database, name: str) -> None:
    """Delete a list with its subscriptions and issues."""
    from digest.services.storage.models import Issue, delete_deliveries
    with db.session() as session:
        mailing_list = get_list(session, name)
        delete_deliveries(session, issue_ids=select(Issue.id)
                          .where(Issue.list_id == mailing_list.id))
        session.delete(mailing_list)
