"""States a command names before any database is open, apart from the tables that store
them so that reading them loads no SQLAlchemy: `--status` choices are built when the CLI
is imported, `digest --help` included. The table modules import them from here."""

from __future__ import annotations

from enum import StrEnum


class SubscriptionStatus(StrEnum):
    """Where a subscription is (``Subscription.status``); only active ones get issues."""

    PENDING = "pending"            # signed up, the confirmation link not yet clicked
    ACTIVE = "active"
    PAUSED = "paused"              # the reader paused their emails
    UNSUBSCRIBED = "unsubscribed"  # left; kept, so nothing revives it
    BOUNCED = "bounced"            # the address bounced
    COMPLAINED = "complained"      # the reader marked an issue as spam


class WhenNothingMatches(StrEnum):
    """What a list sends a reader none of whose keywords has anything new
    (``MailingList.when_nothing_matches``)."""

    SKIP = "skip"  # no email that week
    FULL = "full"  # the whole issue
