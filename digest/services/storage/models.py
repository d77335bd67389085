"""Tables of the pipeline: feeds, entries, issues and deliveries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    Text,
    UniqueConstraint,
    delete,
    false,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from digest.errors import NotFoundError
from digest.services.storage.db import Base, UTCDateTime, utcnow
from digest.services.storage.subscriber_models import MailingList


class FeedStatus(StrEnum):
    """How a feed's last fetch went (stored in ``feeds.last_status``)."""

    OK = "ok"
    NOT_MODIFIED = "not_modified"  # the server answered 304: nothing new since the last
    ERROR = "error"


class Feed(Base):
    """A feed the desk publishes recaps in, with the state of its last fetch."""

    __tablename__ = "feeds"
    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    last_fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[str | None] = mapped_column(String(20))  # a FeedStatus
    last_error: Mapped[str | None] = mapped_column(Text)
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Its address came from a file (an OPML import), not from the operator's own hand: its
    # first request is checked against private addresses as its redirects always are.
    checked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Fetches failed in a row, and when the first of them was (None while it works).
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Entries the last fetch that read the feed did not store, by reason (Skip, below).
    skipped_untitled: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    skipped_duplicate: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    skipped_too_old: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def skipped(self) -> dict[Skip, int]:
        """What the last fetch that read the feed did not store, by reason."""
        return {Skip.UNTITLED: self.skipped_untitled or 0,
                Skip.DUPLICATE: self.skipped_duplicate or 0,
                Skip.TOO_OLD: self.skipped_too_old or 0}


class Skip(StrEnum):
    """Why an entry a feed gave was not stored."""

    UNTITLED = "untitled"    # neither a title nor a link: nothing to show
    DUPLICATE = "duplicate"  # a story already stored, from this feed or another
    TOO_OLD = "too_old"      # dated before anything an issue could hold


_SKIP_WORDS = {Skip.UNTITLED: ("without title or link", "without title or link"),
               Skip.DUPLICATE: ("duplicate", "duplicates"),
               Skip.TOO_OLD: ("too old", "too old")}


def describe_skips(counts: Mapping[Skip, int]) -> str:
    """Skipped entries by reason in words ("1 duplicate, 2 too old"); "" for none."""
    return ", ".join(f"{counts[reason]} {_SKIP_WORDS[reason][counts[reason] != 1]}"
                     for reason in Skip if counts.get(reason))


class Entry(Base):
    """One recap, normalized: plain-text title, absolute link, sanitized summary."""

    __tablename__ = "entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feeds.id", ondelete="SET NULL"))
    guid: Mapped[str | None] = mapped_column(String(2000))
    link: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    summary_html: Mapped[str] = mapped_column(Text, default="")
    # The standfirst as plain text (the feed's summary, else its content's text), kept
    # whole up to 2000 characters; each list trims it at a sentence to its own length.
    lead: Mapped[str] = mapped_column(Text, default="", server_default="")
    # The entry's first image, by URL only (never downloaded into an email).
    image_url: Mapped[str | None] = mapped_column(Text)
    image_alt: Mapped[str | None] = mapped_column(Text)
    image_width: Mapped[int | None] = mapped_column(Integer)
    image_height: Mapped[int | None] = mapped_column(Integer)
    # "Read also" links the entry carries: [[title, url], …].
    related: Mapped[list[list[str]] | None] = mapped_column(JSON)
    author: Mapped[str | None] = mapped_column(String(300))
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The date an issue goes by: published (or updated) time, else first seen.
    dated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EntryKey(Base):
    """A dedupe key of an entry (guid, canonical link or normalized title), hashed."""

    __tablename__ = "entry_keys"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("entries.id", ondelete="CASCADE"),
                                          index=True)


class IssueStatus(StrEnum):
    """Where an issue is (``Issue.status``): sending → sent; a sandbox issue stays one."""

    SENDING = "sending"  # recorded, its deliveries being handed over
    SENT = "sent"        # every delivery has an outcome and no sender holds a batch
    SANDBOX = "sandbox"  # a send validated in sandbox mode, deleted at the list's next run


class Issue(Base):
    """One edition of a list's digest."""

    __tablename__ = "issues"
    __table_args__ = (UniqueConstraint("list_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=IssueStatus.SENDING)
    subject: Mapped[str] = mapped_column(Text)
    intro: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    sections: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Deliveries by status as of the end of the last send run (None before one ended).
    # Lists of issues read these instead of counting every delivery of every issue.
    counts: Mapped[dict[str, int] | None] = mapped_column(JSON)


class IssueVariant(Base):
    """An issue as rendered for one keyword segment (subscribers with preferences)."""

    __tablename__ = "issue_variants"
    __table_args__ = (UniqueConstraint("issue_id", "keys"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    keys: Mapped[str] = mapped_column(String(2000))  # the section keys, ";"-joined
    subject: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    sections: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class IssueEdit(Base):
    """An editor's changes to a list's next issue (by number), and its approval."""

    __tablename__ = "issue_edits"
    __table_args__ = (UniqueConstraint("list_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(Text, default="")
    intro: Mapped[str] = mapped_column(Text, default="")
    dropped: Mapped[list[int]] = mapped_column(JSON, default=list)
    moves: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # entry id → key
    section_order: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Section key → its entry ids in the editor's order (entries not named keep theirs).
    entry_order: Mapped[dict[str, list[int]] | None] = mapped_column(JSON)
    # Entry id → {"title": …, "lead": …}: what the editor wrote (the feed's text is kept).
    overrides: Mapped[dict[str, dict[str, str]] | None] = mapped_column(JSON)
    pinned: Mapped[int | None] = mapped_column(Integer)  # the top story's entry id
    hidden_images: Mapped[list[int] | None] = mapped_column(JSON)
    # The states before the latest changes, newest last (undo), at most UNDO_DEPTH.
    history: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # Raised by every saved change; a save made from an older version is refused (and
    # SQLAlchemy checks it again in the UPDATE, so two saves at once cannot both win).
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads it)
    approved_by: Mapped[str | None] = mapped_column(String(100))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_by: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RateHit(Base):
    """One counted event (a sign-in failure, a subscribe) of a rate limit, shared by every
    instance of the web app; the key is a hash of the IP address or name."""

    __tablename__ = "rate_hits"
    __table_args__ = (Index("ix_rate_hits_bucket_key_at", "bucket", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bucket: Mapped[str] = mapped_column(String(50))
    key: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """A SendGrid event already applied, so a redelivered one is applied once."""

    __tablename__ = "webhook_events"
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Editor(Base):
    """Someone who signs in to the web app to preview, edit, approve and send."""

    __tablename__ = "editors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EditorSession(Base):
    """One signed-in browser of an editor. Its cookie carries a random id; only that id's
    hash is kept, so reading this table signs nobody in. Deleting the row ends it."""

    __tablename__ = "editor_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    editor_id: Mapped[int] = mapped_column(ForeignKey("editors.id", ondelete="CASCADE"),
                                           index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """One change made by an editor (or the scheduler), with who and when."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(100))
    list_id: Mapped[int | None] = mapped_column(ForeignKey("lists.id", ondelete="SET NULL"))
    detail: Mapped[str] = mapped_column(Text, default="")


class IssueEntry(Base):
    """An entry as placed in an issue."""

    __tablename__ = "issue_entries"
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"),
                                          primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("entries.id", ondelete="CASCADE"),
                                          primary_key=True, index=True)
    section: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)


class DeliveryStatus(StrEnum):
    """Where one delivery is (``Delivery.status``)."""

    PENDING = "pending"      # waiting for its batch to be handed over
    ACCEPTED = "accepted"    # the transport took it
    FAILED = "failed"        # the transport refused it
    UNCERTAIN = "uncertain"  # handed over, but no answer came: not retried on its own
    SKIPPED = "skipped"      # the subscriber left, or nothing matched their keywords


# The outcomes a transport reports for a delivery (the transports' contract).
ACCEPTED, FAILED, UNCERTAIN = (DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED,
                               DeliveryStatus.UNCERTAIN)


class Delivery(Base):
    """One issue to one subscriber: pending → accepted | failed | uncertain | skipped.

    ``skipped`` is for a subscriber who left between the issue being built and their
    batch. Whether a pending delivery is being handed over is its batch's state.
    """

    __tablename__ = "deliveries"
    # Half of each PostgreSQL page is left free, so writing a delivery's outcome puts the
    # new row version on the same page and touches no index (a HOT update), writing far
    # less than a version elsewhere and an entry in each index. That also needs the
    # columns an outcome changes (status, message_id, error, attempts, updated_at) to
    # stay out of every index, so nothing is indexed by status: counts by status for
    # lists of issues come from ``Issue.counts``, written at the end of each send. The
    # fill factor is set by migration 0005, not declared here: a ``postgresql_with`` table
    # argument makes SQLAlchemy import its PostgreSQL dialect in every command, SQLite or
    # not.
    # SendGrid's events name a delivery by id (custom_args) and act on its subscription:
    # an id is never handed out twice, on SQLite too (subscriber_models.NEVER_REUSED).
    __table_args__ = (UniqueConstraint("issue_id", "subscriber_id"),
                      {"sqlite_autoincrement": True})
    # No foreign keys on purpose: recording an issue inserts a row per subscriber, and
    # PostgreSQL would check each key row by row, a lookup for every delivery. Rows come only
    # from an INSERT … SELECT of existing subscriptions in the issue's own transaction, and
    # are deleted explicitly with their issue or person (delete_deliveries, below).
    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(Integer)
    subscriber_id: Mapped[int] = mapped_column(Integer, index=True)
    subscription_id: Mapped[int] = mapped_column(Integer)
    # The keyword segment's version of the issue; None for the full issue.
    variant_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    message_id: Mapped[str | None] = mapped_column(String(300))
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # From the SendGrid Event Webhook.
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opens: Mapped[int] = mapped_column(Integer, default=0)
    clicks: Mapped[int] = mapped_column(Integer, default=0)


class BatchStatus(StrEnum):
    """Where a batch of deliveries is (``SendBatch.status``)."""

    PENDING = "pending"  # no sender has it
    CLAIMED = "claimed"  # leased by a sender, not yet handed over
    SENDING = "sending"  # being handed to the transport
    DONE = "done"        # its deliveries have their outcomes


class SendBatch(Base):
    """A run of an issue's deliveries (by id range) that one sender sends at once.

    pending → claimed (leased by a sender, not yet handed over) → sending (being handed
    to the transport) → done. Claiming and handing over touch this one row, not the
    thousand delivery rows it covers.
    """

    __tablename__ = "send_batches"
    __table_args__ = (Index("ix_send_batches_issue_status", "issue_id", "status", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    first_id: Mapped[int] = mapped_column(Integer)
    last_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=BatchStatus.PENDING)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def delete_deliveries(session: Session, *, issue_ids: Select[Any] | list[int] | None = None,
                      subscriber_ids: Select[Any] | list[int] | None = None) -> None:
    """Delete the deliveries of some issues or people (deliveries have no foreign keys,
    so nothing cascades to them)."""
    if issue_ids is not None:
        session.execute(delete(Delivery).where(Delivery.issue_id.in_(issue_ids))
                        .execution_options(synchronize_session=False))
    if subscriber_ids is not None:
        session.execute(delete(Delivery).where(Delivery.subscriber_id.in_(subscriber_ids))
                        .execution_options(synchronize_session=False))


def deliveries_by_status(session: Session, issue_id: int) -> Counter[str]:
    """An issue's deliveries by status, counted now (a scan of that issue's rows)."""
    return Counter(dict(session.execute(
        select(Delivery.status, func.count()).where(Delivery.issue_id == issue_id)
        .group_by(Delivery.status)).all()))


# The states of a batch some sender holds.
HELD = (BatchStatus.CLAIMED, BatchStatus.SENDING)


def held_batches(issue_id: int) -> Select[int]:
    """The count of an issue's batches some sender holds (claimed or being handed over)."""
    return select(func.count()).select_from(SendBatch).where(
        SendBatch.issue_id == issue_id, SendBatch.status.in_(HELD))


def get_issue(session: Session, issue_id: int) -> tuple[Issue, MailingList]:
    """An issue and its list by id, or a clear error."""
    issue = session.get(Issue, issue_id)
    if issue is None:
        raise NotFoundError(f"no issue {issue_id}", hint="`digest issues list` shows them")
    mailing_list = session.get(MailingList, issue.list_id)
    assert mailing_list is not None
    return issue, mailing_list
