"""What a subscriber does from the links in an email: leave, choose keywords, pause.

Each link carries a signed token naming one subscription (never an address); whoever
holds the link may act on that subscription, with no login.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.core.grouping import UNTAGGED_KEY, KeywordConfig, KeywordNames
from digest.core.tokens import InvalidToken
from digest.services.storage.db import Database, utcnow
from digest.services.storage.models import Issue, IssueStatus
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import MailingList, Subscriber, Subscription
from subscribers.subscriptions import LEFT, ON_LIST, clean_keywords, segment_of, unsubscribe

# Confirmed subscriptions a reader can pause and resume, and choose topics for.
CONFIRMED = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED)


@dataclass(frozen=True)
class Left:
    """An unsubscribe: the list's title, and whether it changed anything."""

    list_title: str
    changed: bool


def _subscription(session: Session, subscription_id: int) -> Subscription:
    sub = session.get(Subscription, subscription_id)
    if sub is None:
        raise InvalidToken("this link is no longer valid: the subscription it was for no "
                           "longer exists")
    return sub


def one_click_unsubscribe(db: Database, subscription_id: int, *,
                          now: datetime | None = None) -> Left:
    """Unsubscribe at once (RFC 8058 one-click, or the confirm button)."""
    with db.session() as session:
        sub = _subscription(session, subscription_id)
        mailing_list = session.get(MailingList, sub.list_id)
        assert mailing_list is not None
        if sub.status in (SubscriptionStatus.BOUNCED, SubscriptionStatus.COMPLAINED):
            return Left(mailing_list.title, False)
        return Left(mailing_list.title, unsubscribe(session, sub, now=now))


@dataclass(frozen=True)
class PreferencesView:
    """What the preferences page shows."""

    email: str
    list_title: str
    status: str
    keywords: list[str]  # the reader's choices, each under its one name (aliases applied)
    choices: list[str]
    other_lists: list[str]

    @property
    def paused(self) -> bool:
        """Whether the reader paused their emails."""
        return self.status == SubscriptionStatus.PAUSED

    @property
    def confirmed(self) -> bool:
        """Whether the reader may choose topics and pause (active or paused)."""
        return self.status in CONFIRMED

    @property
    def left(self) -> bool:
        """Whether the subscription ended (unsubscribed, bounced or complained)."""
        return self.status in LEFT


def keyword_choices(db: Database, config: KeywordConfig, *, list_id: int | None = None,
                    days: int = 90, now: datetime | None = None) -> list[str]:
    """Keywords a reader can choose, each once under its one name: the configured
    sections (the keyword order), then, alphabetically, the keyword sections of the
    issues sent in the last ``days`` (of one list, or of all).

    A tag that never became a section is not offered, nor an alias beside its target:
    the sections are named again under today's configuration, so an issue sent before
    an alias was added still offers its target.
    """
    return _choices(db, config, list_id=list_id, days=days, now=now)[1]


def keyword_names(db: Database, config: KeywordConfig, *, list_id: int | None = None,
                  days: int = 90) -> KeywordNames:
    """The one name of each keyword, as the choices above name it (for pages that show
    readers' stored keys, such as the editor's segment menu)."""
    return _choices(db, config, list_id=list_id, days=days, now=None)[0]


def _choices(db: Database, config: KeywordConfig, *, list_id: int | None, days: int,
             now: datetime | None) -> tuple[KeywordNames, list[str]]:
    since = (now or utcnow()) - timedelta(days=days)
    query = select(Issue.sections).where(Issue.status == IssueStatus.SENT,
                                         Issue.sent_at >= since)
    if list_id is not None:
        query = query.where(Issue.list_id == list_id)
    with db.session() as session:
        titles = [section.get("title", "") for sections in session.scalars(query)
                  for section in sections or []
                  if section.get("key", UNTAGGED_KEY) != UNTAGGED_KEY]
    names = KeywordNames(config, titles)
    offered: dict[str, str] = {}
    recent = sorted(names.unique(titles), key=lambda k: (k.name.casefold(), k.name))
    for keyword in (*names.unique(config.order), *recent):
        offered.setdefault(keyword.key, keyword.name)
    return names, list(offered.values())


def preferences(db: Database, subscription_id: int,
                config: KeywordConfig | None = None) -> PreferencesView:
    """A subscription's preferences; with ``config``, also the keywords on offer
    (:func:`keyword_choices`) and the reader's own under the names they are offered by
    (a stored "إيران" is ticked as "Iran" when an alias says so)."""
    with db.session() as session:
        sub = _subscription(session, subscription_id)
        person = session.get(Subscriber, sub.subscriber_id)
        mailing_list = session.get(MailingList, sub.list_id)
        assert person is not None and mailing_list is not None
        others = [title for title, in session.execute(
            select(MailingList.title).join(Subscription, Subscription.list_id == MailingList.id)
            .where(Subscription.subscriber_id == person.id, Subscription.id != sub.id,
                   Subscription.status.in_(CONFIRMED)))]
        email, title, status, keywords = (person.email, mailing_list.title, sub.status,
                                          list(sub.keywords))
        list_id = mailing_list.id
    choices: list[str] = []
    if config is not None:
        names, choices = _choices(db, config, list_id=list_id, days=90, now=None)
        chosen = [k.name for k in names.unique(keywords)]
        # A reader's own keywords stay on offer even if no section had them lately.
        choices += [k for k in chosen if k not in choices]
        keywords = chosen
    return PreferencesView(email, title, status, keywords, choices, others)


def save_preferences(db: Database, subscription_id: int, *, keywords: Sequence[str],
                     paused: bool, now: datetime | None = None) -> str:
    """Store chosen keywords (none: every section) and pause or resume; return the status."""
    now = now or utcnow()
    with db.session() as session:
        sub = _subscription(session, subscription_id)
        if sub.status not in CONFIRMED:
            raise InvalidToken(f"this subscription is {sub.status}; subscribe again to "
                               "choose topics")
        cleaned = clean_keywords(keywords)
        sub.keywords, sub.segment = cleaned, segment_of(cleaned)
        sub.status = SubscriptionStatus.PAUSED if paused else SubscriptionStatus.ACTIVE
        sub.updated_at = now
        return sub.status


def leave_every_list(db: Database, subscription_id: int, *,
                     now: datetime | None = None) -> int:
    """Unsubscribe the person the token names from every list; return how many changed."""
    with db.session() as session:
        sub = _subscription(session, subscription_id)
        changed = 0
        for other in session.scalars(select(Subscription).where(
                Subscription.subscriber_id == sub.subscriber_id,
                Subscription.status.in_(ON_LIST))):
            changed += unsubscribe(session, other, now=now)
        return changed
