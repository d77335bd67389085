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

from digest.core.grouping import keyword_key
from digest.core.tokens import InvalidToken
from digest.services.storage.db import Database, utcnow
from digest.services.storage.models import Entry
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
    keywords: list[str]
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


def keyword_choices(db: Database, configured: Sequence[str], *, days: int = 90,
                    now: datetime | None = None) -> list[str]:
    """Keywords a reader can choose: the configured ones, then those recently in use."""
    since = (now or utcnow()) - timedelta(days=days)
    seen: dict[str, str] = {}
    for name in configured:
        seen.setdefault(keyword_key(name), " ".join(name.split()))
    with db.session() as session:
        recent = sorted({k for tags in session.scalars(
            select(Entry.keywords).where(Entry.dated_at >= since)) for k in tags or []})
    for name in recent:
        if keyword_key(name):
            seen.setdefault(keyword_key(name), " ".join(name.split()))
    return list(seen.values())


def preferences(db: Database, subscription_id: int,
                configured: Sequence[str] | None = None) -> PreferencesView:
    """A subscription's preferences; with ``configured``, also the keywords on offer."""
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
    choices: list[str] = []
    if configured is not None:
        choices = keyword_choices(db, configured)
        offered = {keyword_key(c) for c in choices}
        # A reader's own keywords stay on offer even if nothing used them lately.
        choices += [k for k in keywords if keyword_key(k) not in offered]
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
