"""Nothing lost in silence: every entry a feed gives is stored, or counted with its reason.

Feeds over real HTTP on loopback, stored in SQLite and PostgreSQL, and the commands a desk
runs (`digest collect`, `digest feeds list`, `digest status`).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text

from digest.services.feeds.collect import add_feed, collect, list_feeds
from digest.services.storage.context import Context
from digest.services.storage.models import Entry, EntryKey, Skip
from tests.feedserver import FeedServer, rss

NOW = datetime.now(UTC).replace(microsecond=0)
STORY = ("Tehran sent advisers and money to Damascus this week, while Moscow's attention "
         "stayed on Ukraine; the desk's recap of what changed on the ground.")


def day(days_ago: float) -> str:
    return format_datetime(NOW - timedelta(days=days_ago))


def stored(ctx: Context) -> list[str]:
    with ctx.db.session() as s:
        return sorted(s.scalars(select(Entry.title)))


class Desk:
    """`digest` run as a desk runs it, in its own process, on a wide terminal (so tables
    keep each cell on one line), on a database of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "250",
                    "DIGEST_DATABASE_URL": f"sqlite:///{folder / 'desk.db'}",
                    "XDG_CACHE_HOME": str(folder / "cache")}

    def __call__(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "digest", *args], cwd=self.folder,
                              env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stdout + done.stderr
        return done.stdout + done.stderr


@pytest.fixture
def desk(tmp_path: Path) -> Desk:
    return Desk(tmp_path)


# --- item 12: an entry with nothing but punctuation or an emoji for a title ---------------

@pytest.mark.filterwarnings("error")  # the lost entries showed only as an SAWarning
def test_entries_titled_only_punctuation_or_an_emoji_are_stored(
        any_ctx: Context, feed_server: FeedServer) -> None:
    # No guid, no link, no date, no text: the title is all there is to know them by. The
    # same "…" twice is one entry, repeated.
    url = feed_server.add("/punctuation.xml", body=rss(
        [{"title": "&amp;"}, {"title": "…"}, {"title": "]]&gt;"}, {"title": "🙂"},
         {"title": "…"}]))
    add_feed(any_ctx.db, url, "Punctuation desk")
    first = collect(any_ctx.db, any_ctx.settings)
    [report] = first.feeds
    assert (report.status, report.new, report.error) == ("ok", 4, None)
    assert report.skipped == {Skip.UNTITLED: 0, Skip.DUPLICATE: 1, Skip.TOO_OLD: 0}
    assert stored(any_ctx) == sorted(["&", "…", "]]>", "🙂"])
    # Collected again, they are known: nothing stored twice.
    again = collect(any_ctx.db, any_ctx.settings)
    assert again.new == 0 and again.skipped[Skip.DUPLICATE] == 1
    assert len(stored(any_ctx)) == 4


def test_an_entry_the_database_refuses_is_an_error_of_its_feed_never_a_duplicate(
        any_ctx: Context, feed_server: FeedServer) -> None:
    # A database that refuses one row (a trigger here; a value it cannot hold in life).
    with any_ctx.db.engine.begin() as conn:
        if any_ctx.db.is_postgres:
            conn.execute(text(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.title = 'Refused'"
                " THEN RAISE EXCEPTION 'refused by the database'; END IF; RETURN NEW; END;"
                " $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON entries FOR EACH ROW "
                              "EXECUTE FUNCTION refuse()"))
        else:
            conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON entries WHEN "
                              "NEW.title = 'Refused' BEGIN SELECT RAISE(ABORT, "
                              "'refused by the database'); END"))
    url = feed_server.add("/refused.xml", body=rss([
        {"title": "Kept", "link": "https://n.example/kept", "date": day(1)},
        {"title": "Refused", "link": "https://n.example/refused", "date": day(1)}]))
    add_feed(any_ctx.db, url, "Desk")
    [report] = collect(any_ctx.db, any_ctx.settings).feeds
    assert report.status == "error" and report.new == 1
    assert not any(report.skipped.values())
    assert report.error is not None
    assert '"Refused" (https://n.example/refused)' in report.error
    assert "refused by the database" in report.error
    assert stored(any_ctx) == ["Kept"]
    [feed] = list_feeds(any_ctx.db)
    assert feed.last_status == "error" and "Refused" in (feed.last_error or "")


def test_the_desk_is_told_which_entry_was_refused_even_with_markup_in_its_title(
        desk: Desk, feed_server: FeedServer) -> None:
    title = "Recap [/bold] of the [red]week"  # what the terminal's markup would choke on
    url = feed_server.add("/refused.xml", body=rss([
        {"title": "Kept", "link": "https://n.example/kept", "date": day(1)},
        {"title": title, "link": "https://n.example/refused", "date": day(1)}]))
    desk("feeds", "add", url, "--name", "Desk")
    with sqlite3.connect(desk.folder / "desk.db") as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON entries WHEN NEW.title LIKE "
                     "'Recap%' BEGIN SELECT RAISE(ABORT, 'refused by the database'); END")
    out = desk("collect")
    assert "1 new entry" in out and "1 failed" in out
    assert f'could not store 1 entry: "{title}" (https://n.example/refused)' in out
    assert title in desk("feeds", "list") and title in desk("status")


def test_entries_stored_before_the_new_keys_are_not_stored_again(
        any_ctx: Context, feed_server: FeedServer) -> None:
    # Before migration 0012 an entry with neither guid nor link was known by its title
    # alone; the same entry collected after the upgrade is that one, not a new one.
    url = feed_server.add("/old.xml", body=rss([{"title": "An undated recap"}]))
    feed = add_feed(any_ctx.db, url, "Old desk")
    with any_ctx.db.session() as s:
        s.add(Entry(id=7, feed_id=feed.id, title="An undated recap", dated_at=NOW))
        s.flush()
        s.add(EntryKey(key=hashlib.sha256(b"title:an undated recap").hexdigest(), entry_id=7))
    report = collect(any_ctx.db, any_ctx.settings)
    assert report.new == 0 and not any(report.skipped.values())
    assert stored(any_ctx) == ["An undated recap"]


# --- item 14: every skipped entry counted by reason ----------------------------------------

def test_collect_feeds_list_and_status_count_skipped_entries_by_reason(
        desk: Desk, feed_server: FeedServer) -> None:
    first = feed_server.add("/first.xml", body=rss([
        {"title": "Iran moves in Syria", "link": "https://n.example/iran", "guid": "f-1",
         "date": day(1)}]))
    second = feed_server.add("/second.xml", body=rss([
        # The first feed's story under its own guid, with a tracking link.
        {"title": "Iran's move", "guid": "s-1", "date": day(1),
         "link": "https://n.example/iran?utm_source=second"},
        {"title": "From the archive", "link": "https://n.example/old", "guid": "s-2",
         "date": day(400)},
        {"title": "Kept", "link": "https://n.example/kept", "guid": "s-3", "date": day(2)}]))
    desk("feeds", "add", first, "--name", "First")
    desk("feeds", "add", second, "--name", "Second")
    out = desk("collect")
    assert "2 new entries" in out and "skipped 1 duplicate, 1 too old." in out
    listing = desk("feeds", "list")
    assert "1 duplicate, 1 too old" in listing
    status = desk("status")
    assert "1 duplicate, 1 too old" in status
    # Each one is named, with why, in the log (--verbose).
    detail = desk("--verbose", "collect")
    assert 'skipped "Iran\'s move"' in detail
    assert "duplicate of entry 1 (same link)" in detail
    assert 'skipped "From the archive"' in detail and "too old: dated" in detail


def test_an_entry_with_neither_title_nor_link_is_counted(
        desk: Desk, feed_server: FeedServer) -> None:
    url = feed_server.add("/empty.xml", body=rss([
        {"date": day(1)},  # (a bare guid would be taken for its permalink)
        {"title": "Kept", "link": "https://n.example/kept", "date": day(1)}]))
    desk("feeds", "add", url)
    assert "skipped 1 without title or link." in desk("collect")
    assert "1 without title or link" in desk("feeds", "list")


def test_the_same_recap_twice_in_one_feed_is_kept_once_and_counted(
        desk: Desk, feed_server: FeedServer) -> None:
    url = feed_server.add("/twice.xml", body=rss([
        {"title": "Same", "link": "https://n.example/1", "guid": "1", "date": day(1)},
        {"title": "Same", "link": "https://n.example/1?utm_medium=rss", "guid": "2",
         "date": day(1)}]))
    desk("feeds", "add", url)
    assert "skipped 1 duplicate." in desk("collect")
    assert "1 duplicate" in desk("feeds", "list")


def test_two_feeds_different_weekly_recaps_are_both_stored(
        any_ctx: Context, feed_server: FeedServer) -> None:
    # Same title, same day, texts that tell different stories.
    a = feed_server.add("/a.xml", body=rss([
        {"title": "Weekly recap", "guid": "a-1", "link": "https://a.example/recap/49",
         "date": day(1), "summary": "<p>This week in Syria: the front lines held around "
                                    "Idlib and aid convoys crossed again.</p>"}]))
    b = feed_server.add("/b.xml", body=rss([
        {"title": "Weekly Recap!", "guid": "b-1", "link": "https://b.example/weekly",
         "date": day(1), "summary": "<p>Our week in the Gulf: shipping insurance rose "
                                    "again and talks resumed in Muscat.</p>"}]))
    # No text to compare with, but dated a week apart.
    c = feed_server.add("/c.xml", body=rss([
        {"title": "Weekly recap", "guid": "c-1", "link": "https://c.example/weekly",
         "date": day(8)}]))
    for url, name in ((a, "A"), (b, "B"), (c, "C")):
        add_feed(any_ctx.db, url, name)
    report = collect(any_ctx.db, any_ctx.settings)
    assert report.new == 3, report
    assert not report.skipped[Skip.DUPLICATE]
    assert {f.name: f.entry_count for f in list_feeds(any_ctx.db)} == {"A": 1, "B": 1, "C": 1}


def test_the_same_story_in_two_feeds_is_stored_once_and_the_duplicate_named(
        desk: Desk, feed_server: FeedServer) -> None:
    story = {"title": "Recap: With Russia Busy in Ukraine, Iran Moves in Syria",
             "date": day(1), "summary": f"<p>{STORY}</p>"}
    first = feed_server.add("/first.xml", body=rss([
        {**story, "guid": "desk-1", "link": "https://desk.example/iran-syria"}]))
    second = feed_server.add("/second.xml", body=rss([
        {**story, "guid": "wire-9", "link": "https://wire.example/2026/iran-syria"},
        # Its own story, under a title the first feed does not use.
        {"title": "Gulf shipping", "guid": "wire-10", "link": "https://wire.example/gulf",
         "date": day(1)}]))
    desk("feeds", "add", first, "--name", "Desk")
    desk("feeds", "add", second, "--name", "Wire")
    out = desk("--verbose", "collect")
    assert "2 new entries" in out and "skipped 1 duplicate." in out
    assert ('skipped "Recap: With Russia Busy in Ukraine, Iran Moves in Syria" '
            "(https://wire.example/2026/iran-syria): duplicate of entry 1 (same title, "
            "dated within 2 days)") in " ".join(out.split())
    listing = desk("feeds", "list")
    wire = next(line for line in listing.splitlines() if "Wire" in line)
    assert "1 duplicate" in wire
