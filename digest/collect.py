"""Keep the list of feeds and collect their new entries into the database."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.db import Database, utcnow
from digest.errors import FeedError, InvalidInputError, NotFoundError
from digest.feeds import FeedEntry, parse_feed
from digest.fetch import FetchLimits, FetchRequest, FetchResult, fetch_all
from digest.models import Entry, EntryKey, Feed
from digest.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedReport:
    """How one feed's collection went."""

    url: str
    name: str
    status: str  # ok, not_modified, error
    new: int = 0
    updated: int = 0
    duplicates: int = 0
    error: str | None = None
    warning: str | None = None


@dataclass
class CollectReport:
    """How a whole collection went, feed by feed."""

    feeds: list[FeedReport] = field(default_factory=list)

    @property
    def new(self) -> int:
        """Entries added by this collection."""
        return sum(f.new for f in self.feeds)

    @property
    def failed(self) -> list[FeedReport]:
        """Feeds that could not be read."""
        return [f for f in self.feeds if f.status == "error"]


@dataclass(frozen=True)
class FeedSummary:
    """A feed as `digest feeds list` shows it."""

    id: int
    url: str
    name: str
    last_fetched_at: datetime | None
    last_status: str | None
    last_error: str | None
    entry_count: int


def add_feed(db: Database, url: str, name: str | None = None) -> Feed:
    """Add a feed by URL; adding the same URL again is an error naming it."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise InvalidInputError(f"{url!r} is not an http(s) URL")
    with db.session() as session:
        if session.scalar(select(Feed.id).where(Feed.url == url)) is not None:
            raise InvalidInputError(f"feed {url} is already added")
        feed = Feed(url=url, name=(name or parts.netloc).strip()[:200])
        session.add(feed)
    return feed


def find_feed(session: Session, ref: str) -> Feed:
    """A feed by id, URL or name."""
    clauses = [Feed.url == ref, Feed.name == ref]
    if ref.isdigit():
        clauses.append(Feed.id == int(ref))
    feed = session.scalars(select(Feed).where(or_(*clauses))).first()
    if feed is None:
        raise NotFoundError(f"no feed {ref!r}", hint="`digest feeds list` shows the feeds")
    return feed


def remove_feed(db: Database, ref: str) -> Feed:
    """Stop collecting a feed; entries already collected stay for the issues that hold them."""
    with db.session() as session:
        feed = find_feed(session, ref)
        session.delete(feed)
    return feed


def list_feeds(db: Database) -> list[FeedSummary]:
    """Every feed with the state of its last fetch and how many entries it gave."""
    with db.session() as session:
        counts = dict(session.execute(
            select(Entry.feed_id, func.count()).group_by(Entry.feed_id)).all())
        return [FeedSummary(f.id, f.url, f.name, f.last_fetched_at, f.last_status,
                            f.last_error, counts.get(f.id, 0))
                for f in session.scalars(select(Feed).order_by(Feed.id))]


def _store_entries(session: Session, feed: Feed, entries: list[FeedEntry],
                   now: datetime) -> tuple[int, int, int]:
    """Insert new entries and refresh changed ones; return (new, updated, duplicates)."""
    new = updated = duplicates = 0
    for item in entries:
        keys = item.dedupe_keys()
        known = session.execute(
            select(EntryKey.key, EntryKey.entry_id).where(EntryKey.key.in_(keys))).all()
        if known:
            entry = session.get(Entry, known[0].entry_id)
            same_feed_guid = (entry is not None and entry.feed_id == feed.id
                              and item.guid and entry.guid == item.guid)
            if entry is not None and same_feed_guid and _refresh(entry, item, now):
                updated += 1
            elif not same_feed_guid:
                duplicates += 1
            continue
        dated = item.published_at or now
        entry = Entry(feed_id=feed.id, guid=item.guid, link=item.link, title=item.title,
                      summary_html=item.summary_html, author=item.author,
                      keywords=list(item.keywords), published_at=item.published_at,
                      first_seen_at=now, dated_at=dated, updated_at=now)
        try:
            with session.begin_nested():
                session.add(entry)
                session.flush()
                session.add_all(EntryKey(key=k, entry_id=entry.id) for k in keys)
                session.flush()
        except IntegrityError:
            duplicates += 1  # another collector stored it a moment ago
            continue
        new += 1
    return new, updated, duplicates


def _refresh(entry: Entry, item: FeedEntry, now: datetime) -> bool:
    """Apply a feed's later edit of an entry; True if anything changed."""
    fresh = {"title": item.title, "summary_html": item.summary_html, "link": item.link,
             "keywords": list(item.keywords), "author": item.author}
    changed = {k: v for k, v in fresh.items() if getattr(entry, k) != v}
    for key, value in changed.items():
        setattr(entry, key, value)
    if changed:
        entry.updated_at = now
    return bool(changed)


def _apply_result(session: Session, feed: Feed, result: FetchResult, settings: Settings,
                  now: datetime) -> FeedReport:
    feed.last_fetched_at = now
    if result.status == "not_modified":
        feed.last_status, feed.last_error = "not_modified", None
        feed.last_ok_at = now
        return FeedReport(feed.url, feed.name, "not_modified")
    if result.status == "error":
        feed.last_status, feed.last_error = "error", result.error
        return FeedReport(feed.url, feed.name, "error", error=result.error)
    try:
        parsed = parse_feed(result.body, url=result.final_url or feed.url,
                            headers=result.headers,
                            summary_max_chars=settings.summary_max_chars)
    except FeedError as e:
        feed.last_status, feed.last_error = "error", e.reason
        return FeedReport(feed.url, feed.name, "error", error=e.reason)
    new, updated, duplicates = _store_entries(session, feed, parsed.entries, now)
    # Validators are kept only once the body was read: a feed that failed to parse must be
    # fetched in full next time, not answered with 304.
    feed.etag, feed.last_modified = result.etag, result.last_modified
    feed.last_status, feed.last_error, feed.last_ok_at = "ok", parsed.warning, now
    return FeedReport(feed.url, feed.name, "ok", new=new, updated=updated,
                      duplicates=duplicates, warning=parsed.warning)


def collect(db: Database, settings: Settings, *, now: datetime | None = None,
            on_fetched: Callable[[FetchResult], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> CollectReport:
    """Fetch every feed and store new entries; a failing feed never stops the others."""
    now = now or utcnow()
    with db.session() as session:
        requests = [FetchRequest(f.url, f.etag, f.last_modified)
                    for f in session.scalars(select(Feed).order_by(Feed.id))]
    if on_start is not None:
        on_start(len(requests))
    limits = FetchLimits(timeout=settings.fetch_timeout, max_bytes=settings.fetch_max_bytes,
                         max_redirects=settings.fetch_max_redirects,
                         concurrency=settings.fetch_concurrency)
    results = fetch_all(requests, limits, on_fetched) if requests else []
    report = CollectReport()
    for result in results:
        # One transaction per feed: a database error on one feed keeps the others' work.
        try:
            with db.session() as session:
                feed = session.scalars(select(Feed).where(Feed.url == result.url)).first()
                if feed is None:
                    continue  # removed while we fetched
                feed_report = _apply_result(session, feed, result, settings, now)
        except Exception as e:
            log.exception("storing %s failed", result.url)
            feed_report = FeedReport(result.url, result.url, "error",
                                     error=f"could not store entries: {e}")
        if feed_report.status == "error":
            log.warning("feed %s failed: %s", feed_report.url, feed_report.error)
        elif feed_report.warning:
            log.warning("feed %s: %s", feed_report.url, feed_report.warning)
        report.feeds.append(feed_report)
    return report
