"""Keep the list of feeds and collect their new entries into the database."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, insert, literal, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.core.feeds import FeedEntry, ParsedFeed, parse_feed
from digest.errors import FeedError, InvalidInputError, NotFoundError
from digest.services.db import Database, UTCDateTime, utcnow
from digest.services.fetch import FetchLimits, FetchRequest, FetchResult, fetch_all
from digest.services.logs import fields
from digest.services.models import Entry, EntryKey, Feed
from digest.settings import Settings

log = logging.getLogger(__name__)
# Below this many feeds, starting worker processes costs more than it saves.
PARALLEL_PARSE_FROM = 40
COMMIT_EVERY = 25
ANALYZE_AFTER = 1000


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
    """Insert new entries and refresh changed ones; return (new, updated, duplicates).

    One query finds every known key of the feed's entries; the new ones go in as one
    multi-row insert. If another collector stored some of them meanwhile, the feed is
    stored again entry by entry.
    """
    keyed = [(item, item.dedupe_keys()) for item in entries]
    all_keys = [k for _, keys in keyed for k in keys]
    known: dict[str, int] = {}
    for start in range(0, len(all_keys), 500):
        known.update(session.execute(
            select(EntryKey.key, EntryKey.entry_id)
            .where(EntryKey.key.in_(all_keys[start:start + 500]))).all())
    fresh: list[tuple[FeedEntry, list[str]]] = []
    updated = duplicates = 0
    for item, keys in keyed:
        match = next((known[k] for k in keys if k in known), None)
        if match is None:
            fresh.append((item, keys))
            continue
        entry = session.get(Entry, match)
        same_feed_guid = (entry is not None and entry.feed_id == feed.id
                          and item.guid is not None and entry.guid == item.guid)
        if entry is not None and same_feed_guid:
            updated += _refresh(entry, item, now)
        elif not same_feed_guid:
            duplicates += 1
    if not fresh:
        return 0, updated, duplicates
    rows = [{"feed_id": feed.id, "guid": item.guid, "link": item.link, "title": item.title,
             "summary_html": item.summary_html, "author": item.author,
             "keywords": list(item.keywords), "published_at": item.published_at,
             "first_seen_at": now, "dated_at": item.published_at or now, "updated_at": now,
             **_parts(item)}
            for item, _ in fresh]
    try:
        with session.begin_nested():
            ids = session.scalars(insert(Entry).returning(Entry.id, sort_by_parameter_order=True),
                                  rows).all()
            session.execute(insert(EntryKey), [
                {"key": k, "entry_id": entry_id}
                for entry_id, (_, keys) in zip(ids, fresh, strict=True) for k in keys])
    except IntegrityError:
        return _store_one_by_one(session, feed, fresh, rows, updated, duplicates)
    return len(fresh), updated, duplicates


def _store_one_by_one(session: Session, feed: Feed, fresh: list[tuple[FeedEntry, list[str]]],
                      rows: list[dict[str, Any]], updated: int,
                      duplicates: int) -> tuple[int, int, int]:
    """The slow path, when a concurrent collector stored some of the same entries."""
    new = 0
    for (_, keys), row in zip(fresh, rows, strict=True):
        try:
            with session.begin_nested():
                entry_id = session.scalars(insert(Entry).returning(Entry.id), [row]).one()
                session.execute(insert(EntryKey),
                                [{"key": k, "entry_id": entry_id} for k in keys])
            new += 1
        except IntegrityError:
            duplicates += 1
    return new, updated, duplicates


def _parts(item: FeedEntry) -> dict[str, Any]:
    """The recap's parts as entry columns (an image's size may be learnt later)."""
    image = item.image
    return {"lead": item.lead, "image_url": image.url if image else None,
            "image_alt": image.alt if image else None,
            "image_width": image.width if image else None,
            "image_height": image.height if image else None,
            "related": [list(pair) for pair in item.related] or None}


def _refresh(entry: Entry, item: FeedEntry, now: datetime) -> bool:
    """Apply a feed's later edit of an entry; True if anything changed."""
    fresh = {"title": item.title, "summary_html": item.summary_html, "link": item.link,
             "keywords": list(item.keywords), "author": item.author, **_parts(item)}
    if item.image is not None and item.image.url == entry.image_url \
            and item.image.width is None:
        # The same image, whose size was measured after the feed left it out: keep it.
        fresh.update(image_width=entry.image_width, image_height=entry.image_height)
    changed = {k: v for k, v in fresh.items() if getattr(entry, k) != v}
    for key, value in changed.items():
        setattr(entry, key, value)
    if changed:
        entry.updated_at = now
    return bool(changed)


def parse_job(body: bytes, url: str, headers: dict[str, str],
              summary_max_chars: int) -> ParsedFeed | str:
    """Parse one body; the reason as text when it is no feed (picklable for a pool)."""
    try:
        return parse_feed(body, url=url, headers=headers, summary_max_chars=summary_max_chars)
    except FeedError as e:
        return e.reason


class _Parser:
    """Parses fetched bodies, in worker processes when there are many.

    Parsing is CPU work; with a pool it overlaps the fetching and uses every core.
    """

    def __init__(self, settings: Settings, feeds: int) -> None:
        self.max_chars = settings.summary_max_chars
        self.pool: ProcessPoolExecutor | None = None
        self.futures: dict[str, Future[ParsedFeed | str]] = {}
        self.workers = min(os.cpu_count() or 1, 4)
        self.parallel = feeds >= PARALLEL_PARSE_FROM and self.workers > 1

    def submit(self, result: FetchResult) -> None:
        if not self.parallel or result.status != "ok":
            return
        if self.pool is None:  # started on the first body: a run of 304s needs none
            self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        if self.pool is not None:
            with suppress(BrokenProcessPool, RuntimeError):  # else parsed inline later
                self.futures[result.url] = self.pool.submit(
                    parse_job, result.body, result.final_url or result.url, result.headers,
                    self.max_chars)

    def parsed(self, result: FetchResult) -> ParsedFeed | str:
        future = self.futures.pop(result.url, None)
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool:
                log.warning("parser process died; parsing %s here", result.url)
        return parse_job(result.body, result.final_url or result.url, result.headers,
                         self.max_chars)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _apply_result(session: Session, feed: Feed, parsed: ParsedFeed | str,
                  now: datetime) -> FeedReport:
    """Store a parsed feed's entries on the feed (or record why it is no feed)."""
    feed.last_fetched_at = now
    if isinstance(parsed, str):
        feed.last_status, feed.last_error = "error", parsed
        feed.failures = (feed.failures or 0) + 1
        feed.failing_since = feed.failing_since or now
        return FeedReport(feed.url, feed.name, "error", error=parsed)
    new, updated, duplicates = _store_entries(session, feed, parsed.entries, now)
    feed.last_status, feed.last_error, feed.last_ok_at = "ok", parsed.warning, now
    feed.failures, feed.failing_since = 0, None
    return FeedReport(feed.url, feed.name, "ok", new=new, updated=updated,
                      duplicates=duplicates, warning=parsed.warning)


def _keep_validators(feed: Feed, result: FetchResult) -> None:
    # Validators are kept only once the body was read: a feed that failed to parse must be
    # fetched in full next time, not answered with 304.
    feed.etag, feed.last_modified = result.etag, result.last_modified


def _record_unread(db: Database, results: list[FetchResult], now: datetime) -> None:
    """Record feeds that answered 304 or failed, all in one transaction."""
    if not results:
        return
    with db.session() as session:
        unchanged = [r.url for r in results if r.status == "not_modified"]
        for start in range(0, len(unchanged), 500):
            session.execute(update(Feed).where(Feed.url.in_(unchanged[start:start + 500]))
                            .values(last_fetched_at=now, last_status="not_modified",
                                    last_error=None, last_ok_at=now, failures=0,
                                    failing_since=None))
        for r in results:
            if r.status == "error":
                session.execute(update(Feed).where(Feed.url == r.url).values(
                    last_fetched_at=now, last_status="error", last_error=r.error,
                    failures=Feed.failures + 1,
                    failing_since=func.coalesce(Feed.failing_since,
                                                literal(now, UTCDateTime()))))


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
                         concurrency=settings.fetch_concurrency,
                         allow_private=tuple(settings.fetch_allow_private))
    parser = _Parser(settings, len(requests))

    def fetched(result: FetchResult) -> None:
        parser.submit(result)
        if on_fetched is not None:
            on_fetched(result)

    started = time.perf_counter()
    try:
        results = fetch_all(requests, limits, fetched) if requests else []
        report = _store_results(db, results, parser, now)
    finally:
        parser.close()
    if settings.image_size_timeout > 0:
        measure_images(db, since=now, timeout=settings.image_size_timeout,
                       allow_private=settings.fetch_allow_private)
    from digest.services import metrics
    metrics.COLLECT_SECONDS.observe(time.perf_counter() - started)
    for feed_report in report.feeds:
        metrics.FEED_FETCHES.labels(feed_report.status).inc()
    if len(report.failed) < len(report.feeds) or not report.feeds:
        metrics.LAST_SUCCESS.labels("collect").set(time.time())  # some feed was read
    log.info("collected %d feeds: %d new entries, %d failed", len(report.feeds), report.new,
             len(report.failed), extra=fields(count=report.new,
                                              duration=round(time.perf_counter() - started, 3),
                                              status="ok" if not report.failed else "partial"))
    return report


def _store_results(db: Database, results: list[FetchResult], parser: _Parser,
                   now: datetime) -> CollectReport:
    names: dict[str, str] = {}
    with db.session() as session:
        names.update(session.execute(select(Feed.url, Feed.name)).all())
    report = CollectReport()
    _record_unread(db, [r for r in results if r.status != "ok"], now)
    for result in results:
        if result.status != "ok":
            name = names.get(result.url, result.url)
            if result.status == "error":
                log.warning("feed %s failed: %s", result.url, result.error,
                            extra=fields(feed=result.url, error=result.error))
            report.feeds.append(FeedReport(result.url, name, result.status,
                                           error=result.error))
    fetched = [r for r in results if r.status == "ok"]
    # One savepoint per feed, so a database error on one feed keeps the others' work; a
    # commit every few feeds, since a commit costs a disk flush.
    unanalyzed = 0
    for start in range(0, len(fetched), COMMIT_EVERY):
        with db.session() as session:
            for result in fetched[start:start + COMMIT_EVERY]:
                feed_report = _store_one(session, result, parser.parsed(result), now)
                unanalyzed += feed_report.new
                report.feeds.append(feed_report)
        if db.is_postgres and unanalyzed >= ANALYZE_AFTER:
            # A bulk load leaves PostgreSQL planning the key lookups for an empty table
            # (a sequential scan each) until autovacuum catches up; refresh the statistics.
            with db.engine.connect() as connection:
                connection.execute(text("ANALYZE entry_keys"))
                connection.execute(text("ANALYZE entries"))
                connection.commit()
            unanalyzed = 0
    return report


def _store_one(session: Session, result: FetchResult, parsed: ParsedFeed | str,
               now: datetime) -> FeedReport:
    """Store one fetched feed inside a savepoint; report what happened."""
    try:
        with session.begin_nested():
            feed = session.scalars(select(Feed).where(Feed.url == result.url)).first()
            if feed is None:
                return FeedReport(result.url, result.url, "error", error="removed meanwhile")
            feed_report = _apply_result(session, feed, parsed, now)
            if feed_report.status == "ok":
                _keep_validators(feed, result)
    except Exception as e:
        log.exception("storing %s failed", result.url)
        return FeedReport(result.url, result.url, "error",
                          error=f"could not store entries: {e}")
    if feed_report.status == "error":
        log.warning("feed %s failed: %s", feed_report.url, feed_report.error,
                    extra=fields(feed=feed_report.url, error=feed_report.error))
    elif feed_report.warning:
        log.warning("feed %s: %s", feed_report.url, feed_report.warning)
    return feed_report


def measure_images(db: Database, *, since: datetime, timeout: float,
                   allow_private: list[str] | None = None) -> int:
    """Learn the size of the images of entries stored or changed since ``since`` whose
    feed gave none, from their first bytes; return how many were measured. An image whose
    size stays unknown is left out of emails (they need one). Images on private addresses
    are not requested unless ``allow_private`` (fetch_allow_private) opens them."""
    with db.session() as session:
        wanted = session.execute(select(Entry.id, Entry.image_url).where(
            Entry.image_url.is_not(None), Entry.image_width.is_(None),
            Entry.updated_at >= since)).all()
    if not wanted:
        return 0
    from digest.services.fetch import image_sizes
    sizes = image_sizes(sorted({url for _, url in wanted if url}), timeout=timeout,
                        allow_private=allow_private or [])
    measured = 0
    with db.session() as session:
        for entry_id, url in wanted:
            size = sizes.get(url or "")
            if size is not None:
                session.execute(update(Entry).where(Entry.id == entry_id).values(
                    image_width=size[0], image_height=size[1]))
                measured += 1
    return measured
