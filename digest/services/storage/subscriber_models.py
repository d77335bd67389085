"""Tables of the audience: lists, subscribers, subscriptions, suppressions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from digest.services.storage.db import Base, UTCDateTime, utcnow
from digest.services.storage.states import SubscriptionStatus, WhenNothingMatches

# Links in emails name a subscription by id for good, and webhook events a subscriber:
# an id is never handed out twice. PostgreSQL's sequences never go back; SQLite reuses
# the highest rowid once its row is deleted (a forgotten person's) unless the table is
# AUTOINCREMENT (migration 0011 rebuilt the tables so).
NEVER_REUSED = {"sqlite_autoincrement": True}
# What an entry of an email can show, besides its title; lists choose some, in this order.
ENTRY_PARTS = ("image", "lead", "summary", "read_also", "keywords")
DEFAULT_ENTRY_PARTS = "image,lead,read_also,keywords"


class MailingList(Base):
    """A list people subscribe to; each gets its own issues."""

    __tablename__ = "lists"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    when_nothing_matches: Mapped[str] = mapped_column(String(10),
                                                      default=WhenNothingMatches.SKIP)
    # How its emails look: the language (<html lang>), the masthead logo, and which parts
    # each entry shows (ENTRY_PARTS), with the lead cut at a sentence to lead_max_chars.
    language: Mapped[str] = mapped_column(String(20), default="en", server_default="en")
    logo_url: Mapped[str | None] = mapped_column(Text)
    logo_alt: Mapped[str | None] = mapped_column(Text)
    logo_width: Mapped[int | None] = mapped_column(Integer)
    logo_height: Mapped[int | None] = mapped_column(Integer)
    entry_parts: Mapped[str] = mapped_column(String(200), default=DEFAULT_ENTRY_PARTS,
                                             server_default=DEFAULT_ENTRY_PARTS)
    lead_max_chars: Mapped[int] = mapped_column(Integer, default=300, server_default="300")
    # How many days back an issue of this list looks for entries; None: the
    # `lookback_days` setting.
    lookback_days: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Subscriber(Base):
    """A person, known by one address (unique case-insensitively, shown as first given)."""

    __tablename__ = "subscribers"
    __table_args__ = NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Subscription(Base):
    """A subscriber on a list, with a status and keyword preferences (empty: everything)."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "list_id"),
        Index("ix_subscriptions_list_status", "list_id", "status", "id"),
        # Only the few sign-ups awaiting confirmation: every send and sign-up looks for
        # the expired ones, which without it meant reading every subscription twice.
        # Partial on PostgreSQL too (migration 0009); saying so here would load
        # SQLAlchemy's PostgreSQL dialect into every command on SQLite.
        Index("ix_subscriptions_pending", "confirm_sent_at",
              sqlite_where=text(f"status = '{SubscriptionStatus.PENDING}'")),
        NEVER_REUSED,
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default=SubscriptionStatus.ACTIVE)
    source: Mapped[str] = mapped_column(String(100), default="cli")
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The keywords' matching forms, sorted and ";"-joined: issues render once per segment.
    segment: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirm_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Suppression(Base):
    """An address never to be mailed or re-imported, kept only as a hash."""

    __tablename__ = "suppressions"
    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
