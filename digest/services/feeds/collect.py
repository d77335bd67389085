"""Keep the list of feeds and collect their new entries into the database."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from multiprocessing import get_context
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, insert, literal, or_, select, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from digest.core.feeds import (
    UNTITLED,
    FeedEntry,
    ParsedFeed,
    canonical_link,
    parse_feed,
    title_key,
)
from digest.core.words import counted
from digest.errors import FeedError, InvalidInputError, NotFoundError
from digest.services.feeds.fetch import FetchLimits, FetchRequest, FetchResult, fetch_all
from digest.services.storage.db import Database, UTCDateTime, utcnow
from digest.services.storage.models import (
    Entry,
    EntryKey,
    Feed,
    FeedStatus,
    Skip,
    describe_skips,
)
from digest.services.storage.subscriber_models import MailingList
from digest.services.telemetry.logs import fields
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
    status: FeedStatus
    new: int = 0
    updated: int = 0
    skipped: Mapping[Skip, int] = field(default_factory=dict)
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
        """Feeds that could not be read (or some of whose entries could not be stored)."""
        return [f for f in self.feeds if f.status == FeedStatus.ERROR]

    @property
    def skipped(self) -> Counter[Skip]:
        """Entries not stored, by reason, over every feed."""
        total: Counter[Skip] = Counter()
        for feed_report in self.feeds:
            total.update(feed_report.skipped)
        return total


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
    # Entries the last fetch that read the feed did not store, by reason.
    skipped: Mapping[Skip, int] = field(default_factory=dict)


def _checked_url(url: str) -> str:
    """``url`` trimmed, or an error when it is not an http(s) URL."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise InvalidInputError(f"{url!r} is not an http(s) URL")
    return url


def _new_feed(url: str, name: str | None, *, checked: bool = False) -> Feed:
    return Feed(url=url, name=(name or urlsplit(url).netloc).strip()[:200], checked=checked)


def add_feed(db: Database, url: str, name: str | None = None) -> Feed:
    """Add a feed by URL; adding the same URL again is an error naming it."""
    url = _checked_url(url)
    with db.session() as session:
        if session.scalar(select(Feed.id).where(Feed.url == url)) is not None:
            raise InvalidInputError(f"feed {url} is already added")
        feed = _new_feed(url, name)
        session.add(feed)
    return feed


@dataclass
class FeedsAdded:
    """What adding many feeds did: the feeds added, and those already there (by URL)."""

    added: list[tuple[str, str]] = field(default_factory=list)  # (url, name)
    already: list[str] = field(default_factory=list)


def add_feeds(db: Database, feeds: Iterable[tuple[str, str | None]]) -> FeedsAdded:
    """Add many feeds (URL and name) from a file in one transaction; a URL already added,
    or given twice, is counted once in ``already`` and not added again. Every URL must be
    an http(s) URL (the caller checks, to report each bad one where it came from).

    The operator vouches for the file, not for each address in it: such feeds are
    fetched with every hop checked against private addresses, the first one too
    (``fetch_allow_private`` opens exceptions), as a link found in a feed is."""
    wanted = [(_checked_url(url), name) for url, name in feeds]
    done = FeedsAdded()
    with db.session() as session:
        known = set(session.scalars(select(Feed.url)))  # a desk's feeds: thousands at most
        for url, name in wanted:
            if url in known:
                done.already.append(url)
                continue
            known.add(url)
            feed = _new_feed(url, name, checked=True)
            session.add(feed)
            done.added.append((feed.url, feed.name))
    return done


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
                            f.last_error, counts.get(f.id, 0), f.skipped)
                for f in session.scalars(select(Feed).order_by(Feed.id))]


# --- dedupe keys -------------------------------------------------------------------------
#
# Each entry is stored with the keys it is known by, hashed, in entry_keys. Its guid, its
# canonical link and, when it has neither, a hash of its content within its feed say
# "this is that entry". Its title with its day, or with the start of its text, says "this
# may be the story another feed told": such a match is a duplicate only when the feeds
# differ and nothing contradicts it (_match).

DATE_SLACK_DAYS = 2      # same-titled entries of two feeds dated this many days apart match
TEXT_KEY_CHARS = 200     # how much of an entry's folded text its same-text key covers
TEXT_KEY_MIN_CHARS = 40  # a shorter text ("Read more") says nothing about the story


class KeyKind(StrEnum):
    """What a dedupe key is made of."""

    GUID = "guid"
    LINK = "link"
    CONTENT = "content"        # feed, title, date and text: an entry with no guid, no link
    TITLE = "title"            # the title alone, stored before 0012: looked up only
    TITLE_DATE = "title-date"  # the title and the entry's day
    TITLE_TEXT = "title-text"  # the title and the start of the entry's text


_KEY_WORDS = {KeyKind.GUID: "same guid", KeyKind.LINK: "same link",
              KeyKind.CONTENT: "same title, text and date",
              KeyKind.TITLE: "same title",
              KeyKind.TITLE_DATE: f"same title, dated within {DATE_SLACK_DAYS} days",
              KeyKind.TITLE_TEXT: "same title and text"}
# Keys that say "this is that entry" (the old title key: of its own feed only).
_IDENTITY = (KeyKind.GUID, KeyKind.LINK, KeyKind.CONTENT, KeyKind.TITLE)


@dataclass(frozen=True)
class DedupeKey:
    """One key an entry is known by; ``stored`` is False for a key only looked up."""

    kind: KeyKind
    digest: str
    stored: bool = True


def _hashed(kind: KeyKind, *parts: str) -> str:
    # "guid:…", "link:…" and "title:…" hash as before 0012, so the keys stored then match.
    return hashlib.sha256((kind + ":" + "\n".join(parts)).encode()).hexdigest()


def _folded_text(text: str) -> str:
    """The start of a text as the same-text key and the comparison of texts see it: case,
    compatibility forms and spacing folded (a copy of a story keeps its punctuation)."""
    start = unicodedata.normalize("NFKC", text[:2 * TEXT_KEY_CHARS]).casefold()
    return " ".join(start.split())[:TEXT_KEY_CHARS]


def dedupe_keys(item: FeedEntry, feed_url: str, dated: datetime) -> list[DedupeKey]:
    """Return the keys ``item`` (of the feed at ``feed_url``, dated ``dated``) is stored
    and looked up by; there is always at least one stored key.

    The content key, for an entry with neither guid nor link, hashes the URL of its feed
    as added (such an entry can only be the same as one of its own feed's; the URL rather
    than the id, so a feed removed and added again does not store its entries twice), the
    title as shown (a title of punctuation or an emoji is all the title there is), the
    published date or nothing (never the first-seen time, which changes every collect)
    and the lead (text rather than HTML, so a change in how markup is sanitized does not
    make such entries new again).
    """
    keys = []
    if item.guid:
        keys.append(DedupeKey(KeyKind.GUID, _hashed(KeyKind.GUID, item.guid)))
    if item.link:
        keys.append(DedupeKey(KeyKind.LINK, _hashed(KeyKind.LINK, canonical_link(item.link))))
    title = title_key(item.title) if item.title != UNTITLED else ""
    if not keys:
        published = item.published_at.isoformat() if item.published_at else ""
        keys.append(DedupeKey(KeyKind.CONTENT, _hashed(KeyKind.CONTENT, feed_url, item.title,
                                                       published, item.lead)))
        if title:  # how such an entry was known before 0012
            keys.append(DedupeKey(KeyKind.TITLE, _hashed(KeyKind.TITLE, title), stored=False))
    if title:
        day = dated.date().toordinal()
        # Stored under its own day (UTC), looked up under its neighbours' too.
        keys.extend(DedupeKey(KeyKind.TITLE_DATE, _hashed(KeyKind.TITLE_DATE, title, str(n)),
                              stored=n == day)
                    for n in range(day - DATE_SLACK_DAYS, day + DATE_SLACK_DAYS + 1))
        text = _folded_text(item.lead)
        if len(text) >= TEXT_KEY_MIN_CHARS:
            keys.append(DedupeKey(KeyKind.TITLE_TEXT, _hashed(KeyKind.TITLE_TEXT, title, text)))
    return keys


def _texts_agree(a: str, b: str) -> bool:
    """Whether two entries' texts could tell one story: one is empty, or the shorter one
    starts the longer (folded), as a copy cut shorter does."""
    x, y = _folded_text(a), _folded_text(b)
    shorter = min(len(x), len(y))
    return x[:shorter] == y[:shorter]


# --- storing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Keyed:
    """An entry of the feed with its date (published, else now) and its keys."""

    item: FeedEntry
    dated: datetime
    keys: list[DedupeKey]


@dataclass
class _Stored:
    """What storing one feed's entries came to."""

    new: int = 0
    updated: int = 0
    skipped: Counter[Skip] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def _describe(item: FeedEntry) -> str:
    """An entry as a log line or an error names it: its title and its link or guid."""
    where = item.link or (f"guid {item.guid}" if item.guid else "no link, no guid")
    return f'"{item.title[:80]}" ({where[:200]})'


def _skip(stored: _Stored, feed: Feed, item: FeedEntry, reason: Skip, why: str) -> None:
    stored.skipped[reason] += 1
    log.debug("feed %s: skipped %s: %s", feed.url, _describe(item), why,
              extra=fields(feed=feed.url))


def _store_entries(session: Session, feed: Feed, entries: list[FeedEntry], now: datetime,
                   oldest: datetime | None) -> _Stored:
    """Insert new entries and refresh changed ones; count what is skipped, and why.

    One query finds the entries already known by any key of the feed's entries; the new
    ones go in as one multi-row insert. If that fails (another collector stored some of
    them meanwhile, or the database refuses one), they are stored one by one, so that only
    an entry at fault fails, named.
    """
    stored = _Stored()
    recent = []
    for item in entries:
        if oldest is not None and item.published_at is not None and item.published_at < oldest:
            _skip(stored, feed, item, Skip.TOO_OLD,
                  f"too old: dated {item.published_at:%Y-%m-%d}, before {oldest:%Y-%m-%d}")
            continue
        dated = item.published_at or now
        recent.append(_Keyed(item, dated, dedupe_keys(item, feed.url, dated)))
    fresh = _plan(session, feed, recent, now, stored)
    if not fresh:
        return stored
    try:
        with session.begin_nested():
            _insert(session, feed, fresh, now)
        stored.new += len(fresh)
    except SQLAlchemyError:
        for one, _ in fresh:
            _store_alone(session, feed, one, now, stored)
    return stored


def _plan(session: Session, feed: Feed, batch: list[_Keyed], now: datetime,
          stored: _Stored) -> list[tuple[_Keyed, list[DedupeKey]]]:
    """Refresh the entries already stored and count the duplicates; return the entries to
    insert, each with the keys it claims (those no other entry holds yet)."""
    known: dict[str, int] = {}
    digests = [k.digest for one in batch for k in one.keys]
    for start in range(0, len(digests), 500):
        known.update(session.execute(
            select(EntryKey.key, EntryKey.entry_id)
            .where(EntryKey.key.in_(digests[start:start + 500]))).all())
    ids = sorted(set(known.values()))
    found: dict[int, Entry] = {}
    for start in range(0, len(ids), 500):
        found.update((e.id, e) for e in session.scalars(
            select(Entry).where(Entry.id.in_(ids[start:start + 500]))))
    owners = {digest: found[entry_id] for digest, entry_id in known.items()
              if entry_id in found}
    fresh: list[tuple[_Keyed, list[DedupeKey]]] = []
    claimed: dict[str, _Keyed] = {}  # keys of this feed's entries about to be inserted
    refreshed: set[int] = set()
    for one in batch:
        verdict = _match(feed, one, owners, claimed)
        if isinstance(verdict, tuple):
            entry, kind = verdict
            if entry.id in refreshed:  # the feed gives it twice
                _skip(stored, feed, one.item, Skip.DUPLICATE,
                      f"duplicate of entry {entry.id} ({_KEY_WORDS[kind]})")
            else:
                refreshed.add(entry.id)
                stored.updated += _refresh(entry, one.item, now)
        elif verdict is not None:
            _skip(stored, feed, one.item, Skip.DUPLICATE, verdict)
        else:
            own = [k for k in one.keys
                   if k.stored and k.digest not in known and k.digest not in claimed]
            claimed.update((k.digest, one) for k in own)
            fresh.append((one, own))
    return fresh


def _match(feed: Feed, one: _Keyed, owners: Mapping[str, Entry],
           claimed: Mapping[str, _Keyed]) -> tuple[Entry, KeyKind] | str | None:
    """The stored entry ``one`` is (to refresh) and by which key, why it is a duplicate, or
    None if it is new."""
    for key in one.keys:
        if key.kind not in _IDENTITY:
            continue
        if key.digest in claimed:
            return (f"duplicate of {_describe(claimed[key.digest].item)} earlier in this "
                    f"feed ({_KEY_WORDS[key.kind]})")
        entry = owners.get(key.digest)
        if entry is None or (key.kind is KeyKind.TITLE and (
                entry.feed_id != feed.id or not _texts_agree(entry.lead, one.item.lead))):
            continue
        if entry.feed_id == feed.id and entry.guid == one.item.guid:
            return entry, key.kind
        return f"duplicate of entry {entry.id} ({_KEY_WORDS[key.kind]})"
    for key in one.keys:
        entry = owners.get(key.digest) if key.kind not in _IDENTITY else None
        # One feed's same-titled entries are different entries (each week's "Recap").
        if entry is None or entry.feed_id == feed.id:
            continue
        if key.kind is KeyKind.TITLE_TEXT or _texts_agree(entry.lead, one.item.lead):
            return f"duplicate of entry {entry.id} ({_KEY_WORDS[key.kind]})"
    return None


def _insert(session: Session, feed: Feed, fresh: list[tuple[_Keyed, list[DedupeKey]]],
            now: datetime) -> None:
    """Insert entries and their keys, two multi-row statements."""
    rows = [{"feed_id": feed.id, "guid": one.item.guid, "link": one.item.link,
             "title": one.item.title, "summary_html": one.item.summary_html,
             "author": one.item.author, "keywords": list(one.item.keywords),
             "published_at": one.item.published_at, "first_seen_at": now,
             "dated_at": one.dated, "updated_at": now, **_parts(one.item)}
            for one, _ in fresh]
    ids = session.scalars(insert(Entry).returning(Entry.id, sort_by_parameter_order=True),
                          rows).all()
    key_rows = [{"key": key.digest, "entry_id": entry_id}
                for entry_id, (_, keys) in zip(ids, fresh, strict=True) for key in keys]
    if key_rows:  # an insert of no rows would be INSERT … DEFAULT VALUES
        session.execute(insert(EntryKey), key_rows)


def _store_alone(session: Session, feed: Feed, one: _Keyed, now: datetime,
                 stored: _Stored) -> None:
    """Store one entry in a savepoint of its own, after a multi-row insert failed."""
    try:
        with session.begin_nested():
            # Looked up again: another collector may have stored it, or taken a key of
            # it, since the first look.
            again = _plan(session, feed, [one], now, stored)
            if again:
                _insert(session, feed, again, now)
                stored.new += 1
    except SQLAlchemyError as e:
        reason = str(e.orig if isinstance(e, DBAPIError) else e).strip().splitlines()[0]
        log.warning("feed %s: could not store %s: %s", feed.url, _describe(one.item), reason,
                    extra=fields(feed=feed.url, error=reason))
        stored.errors.append(f"{_describe(one.item)}: {reason}"[:500])


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
        if not self.parallel or result.status != FeedStatus.OK:
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


def _failed(feed: Feed, error: str, now: datetime) -> None:
    feed.last_status, feed.last_error = FeedStatus.ERROR, error
    feed.failures = (feed.failures or 0) + 1
    feed.failing_since = feed.failing_since or now


def _apply_result(session: Session, feed: Feed, parsed: ParsedFeed | str, now: datetime,
                  oldest: datetime | None) -> FeedReport:
    """Store a parsed feed's entries on the feed (or record why it is no feed)."""
    feed.last_fetched_at = now
    if isinstance(parsed, str):
        _failed(feed, parsed, now)
        return FeedReport(feed.url, feed.name, FeedStatus.ERROR, error=parsed)
    stored = _store_entries(session, feed, parsed.entries, now, oldest)
    stored.skipped[Skip.UNTITLED] += parsed.untitled
    feed.skipped_untitled = stored.skipped[Skip.UNTITLED]
    feed.skipped_duplicate = stored.skipped[Skip.DUPLICATE]
    feed.skipped_too_old = stored.skipped[Skip.TOO_OLD]
    skipped = feed.skipped
    if stored.errors:
        count = len(stored.errors)
        error = (f"could not store {counted(count, 'entry', 'entries')}: "
                 + "; ".join(stored.errors[:3]) + (" …" if count > 3 else ""))
        _failed(feed, error, now)
        return FeedReport(feed.url, feed.name, FeedStatus.ERROR, new=stored.new,
                          updated=stored.updated, skipped=skipped, error=error)
    feed.last_status, feed.last_error, feed.last_ok_at = FeedStatus.OK, parsed.warning, now
    feed.failures, feed.failing_since = 0, None
    return FeedReport(feed.url, feed.name, FeedStatus.OK, new=stored.new, updated=stored.updated,
                      skipped=skipped, warning=parsed.warning)


def _keep_validators(feed: Feed, result: FetchResult) -> None:
    # Validators are kept only once the body was read: a feed that failed to parse must be
    # fetched in full next time, not answered with 304.
    feed.etag, feed.last_modified = result.etag, result.last_modified


def _record_unread(db: Database, results: list[FetchResult], now: datetime) -> None:
    """Record feeds that answered 304 or failed, all in one transaction."""
    if not results:
        return
    with db.session() as session:
        unchanged = [r.url for r in results if r.status == FeedStatus.NOT_MODIFIED]
        for start in range(0, len(unchanged), 500):
            session.execute(update(Feed).where(Feed.url.in_(unchanged[start:start + 500]))
                            .values(last_fetched_at=now, last_status=FeedStatus.NOT_MODIFIED,
                                    last_error=None, last_ok_at=now, failures=0,
                                    failing_since=None))
        for r in results:
            if r.status == FeedStatus.ERROR:
                session.execute(update(Feed).where(Feed.url == r.url).values(
                    last_fetched_at=now, last_status=FeedStatus.ERROR, last_error=r.error,
                    failures=Feed.failures + 1,
                    failing_since=func.coalesce(Feed.failing_since,
                                                literal(now, UTCDateTime()))))


def collect(db: Database, settings: Settings, *, now: datetime | None = None,
            on_fetched: Callable[[FetchResult], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> CollectReport:
    """Fetch every feed and store new entries; a failing feed never stops the others."""
    now = now or utcnow()
    with db.session() as session:
        requests = [FetchRequest(f.url, f.etag, f.last_modified, checked=f.checked)
                    for f in session.scalars(select(Feed).order_by(Feed.id))]
        # A list that looks further back than the settings still finds its entries.
        longest_lookback = session.scalar(select(func.max(MailingList.lookback_days))) or 0
    if on_start is not None:
        on_start(len(requests))
    limits = FetchLimits(timeout=settings.fetch_timeout, max_bytes=settings.fetch_max_bytes,
                         max_redirects=settings.fetch_max_redirects,
                         concurrency=settings.fetch_concurrency,
                         allow_private=tuple(settings.fetch_allow_private))
    parser = _Parser(settings, len(requests))
    oldest = (now - timedelta(days=max(settings.max_entry_age_days, settings.lookback_days,
                                       longest_lookback))
              if settings.max_entry_age_days > 0 else None)

    def fetched(result: FetchResult) -> None:
        parser.submit(result)
        if on_fetched is not None:
            on_fetched(result)

    started = time.perf_counter()
    try:
        results = fetch_all(requests, limits, fetched) if requests else []
        report = _store_results(db, results, parser, now, oldest)
    finally:
        parser.close()
    if settings.image_size_timeout > 0:
        measure_images(db, since=now, timeout=settings.image_size_timeout,
                       allow_private=settings.fetch_allow_private)
    from digest.services.telemetry import metrics
    metrics.COLLECT_SECONDS.observe(time.perf_counter() - started)
    for feed_report in report.feeds:
        metrics.FEED_FETCHES.labels(feed_report.status).inc()
    if len(report.failed) < len(report.feeds) or not report.feeds:
        metrics.LAST_SUCCESS.labels("collect").set(time.time())  # some feed was read
    log.info("collected %s: %s, %d failed", counted(len(report.feeds), "feed"),
             counted(report.new, "new entry", "new entries"), len(report.failed),
             extra=fields(count=report.new, duration=round(time.perf_counter() - started, 3),
                          status="ok" if not report.failed else "partial"))
    return report


def _store_results(db: Database, results: list[FetchResult], parser: _Parser,
                   now: datetime, oldest: datetime | None) -> CollectReport:
    names: dict[str, str] = {}
    with db.session() as session:
        names.update(session.execute(select(Feed.url, Feed.name)).all())
    report = CollectReport()
    _record_unread(db, [r for r in results if r.status != FeedStatus.OK], now)
    for result in results:
        if result.status != FeedStatus.OK:
            name = names.get(result.url, result.url)
            if result.status == FeedStatus.ERROR:
                log.warning("feed %s failed: %s", result.url, result.error,
                            extra=fields(feed=result.url, error=result.error))
            report.feeds.append(FeedReport(result.url, name, result.status,
                                           error=result.error))
    fetched = [r for r in results if r.status == FeedStatus.OK]
    # One savepoint per feed, so a database error on one feed keeps the others' work; a
    # commit every few feeds, since a commit costs a disk flush.
    unanalyzed = 0
    for start in range(0, len(fetched), COMMIT_EVERY):
        with db.session() as session:
            for result in fetched[start:start + COMMIT_EVERY]:
                feed_report = _store_one(session, result, parser.parsed(result), now,
                                         oldest)
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
               now: datetime, oldest: datetime | None) -> FeedReport:
    """Store one fetched feed inside a savepoint; report what happened."""
    try:
        with session.begin_nested():
            feed = session.scalars(select(Feed).where(Feed.url == result.url)).first()
            if feed is None:
                return FeedReport(result.url, result.url, FeedStatus.ERROR,
                                  error="removed meanwhile")
            feed_report = _apply_result(session, feed, parsed, now, oldest)
            if feed_report.status == FeedStatus.OK:
                _keep_validators(feed, result)
    except Exception as e:
        log.exception("storing %s failed", result.url)
        return FeedReport(result.url, result.url, FeedStatus.ERROR,
                          error=f"could not store entries: {e}")
    if feed_report.status == FeedStatus.ERROR:
        log.warning("feed %s failed: %s", feed_report.url, feed_report.error,
                    extra=fields(feed=feed_report.url, error=feed_report.error))
    elif feed_report.warning:
        log.warning("feed %s: %s", feed_report.url, feed_report.warning)
    if any(feed_report.skipped.values()):
        log.info("feed %s: %d new, skipped %s", feed_report.url, feed_report.new,
                 describe_skips(feed_report.skipped), extra=fields(feed=feed_report.url))
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
    from digest.services.feeds.fetch import image_sizes
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
