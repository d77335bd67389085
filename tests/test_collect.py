"""Collecting from feeds over real HTTP on loopback, stored in SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from sqlalchemy import select

from digest.services.feeds.collect import add_feed, collect, list_feeds
from digest.services.feeds.fetch import USER_AGENT
from digest.services.storage.context import Context
from digest.services.storage.models import Entry
from tests.feedserver import FeedServer, Route, rss

# A day ago: collect keeps only entries of the last max_entry_age_days.
DAY_AGO = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
NOW_RFC = format_datetime(DAY_AGO)


def item(n: int, **extra: object) -> dict[str, object]:
    return {"title": f"Recap number {n}", "link": f"https://n.example/r/{n}",
            "guid": f"g{n}", "date": NOW_RFC, "tags": ["Iran"], **extra}


def titles(ctx: Context) -> list[str]:
    with ctx.db.session() as s:
        return sorted(s.scalars(select(Entry.title)))


def test_collect_stores_entries_and_dedupes_across_feeds(any_ctx: Context,
                                                         feed_server: FeedServer) -> None:
    a = feed_server.add("/a.xml", body=rss([item(1), item(2)]))
    # The same recaps syndicated elsewhere: another guid, a tracking link, a retitled case
    # dated a day later.
    b = feed_server.add("/b.xml", body=rss([
        {"title": "Other", "guid": "b-1", "link": "https://n.example/r/1?utm_source=b"},
        {"title": "RECAP NUMBER 2!", "guid": "b-2", "link": "https://other.example/x",
         "date": format_datetime(DAY_AGO + timedelta(days=1))},
        item(3)]))
    add_feed(any_ctx.db, a, "A")
    add_feed(any_ctx.db, b, "B")
    report = collect(any_ctx.db, any_ctx.settings)
    assert report.new == 3
    assert titles(any_ctx) == ["Recap number 1", "Recap number 2", "Recap number 3"]
    assert {f.name: f.entry_count for f in list_feeds(any_ctx.db)} == {"A": 2, "B": 1}
    # Collecting again adds nothing.
    assert collect(any_ctx.db, any_ctx.settings).new == 0


def test_one_failing_feed_never_stops_the_others(ctx: Context,
                                                 feed_server: FeedServer) -> None:
    good = feed_server.add("/good.xml", body=rss([item(1)]))
    bad = {
        "/404": Route(status=404),
        "/500": Route(status=500),
        "/html": Route(body=b"<html><body>hello</body></html>", content_type="text/html"),
        "/loop": Route(redirect_to="/loop"),
        "/slow": Route(delay=3),
        "/drip": Route(body=rss([item(9)]), drip=0.05),
        "/huge": Route(endless=True),
    }
    for path, route in bad.items():
        add_feed(ctx.db, feed_server.add(path, route), path)
    add_feed(ctx.db, good, "good")
    # The redirect loop stays on this loopback server: allowed, so the limit is what stops it.
    settings = ctx.settings.replace(fetch_timeout=1.5, fetch_max_bytes=1_000_000,
                                    fetch_allow_private=["127.0.0.1/32"])
    started = time.monotonic()
    report = collect(ctx.db, settings)
    elapsed = time.monotonic() - started
    assert elapsed < 10
    by_url = {f.url: f for f in report.feeds}
    assert by_url[good].status == "ok" and by_url[good].new == 1
    reasons = {path: by_url[feed_server.url(path)].error for path in bad}
    assert "HTTP 404" in reasons["/404"]
    assert "HTTP 500" in reasons["/500"]
    assert "not a feed" in reasons["/html"]
    assert "redirects" in reasons["/loop"]
    assert "timed out" in reasons["/slow"]
    assert "timed out" in reasons["/drip"]  # a server dripping bytes is bounded too
    assert "larger than" in reasons["/huge"]
    # The failures are recorded on the feeds, for `digest feeds list`.
    states = {f.url: (f.last_status, f.last_error) for f in list_feeds(ctx.db)}
    assert states[feed_server.url("/404")][0] == "error"
    assert "404" in (states[feed_server.url("/404")][1] or "")


def test_conditional_get_skips_unchanged_feeds(ctx: Context, feed_server: FeedServer) -> None:
    url = feed_server.add("/cond.xml", body=rss([item(1)]), etag='"v1"',
                          last_modified="Mon, 23 Nov 2026 08:00:00 GMT")
    add_feed(ctx.db, url)
    assert collect(ctx.db, ctx.settings).new == 1
    second = collect(ctx.db, ctx.settings)
    assert second.feeds[0].status == "not_modified"
    hits = feed_server.hits("/cond.xml")
    assert hits[0]["User-Agent"] == USER_AGENT
    assert hits[1]["If-None-Match"] == '"v1"'
    assert hits[1]["If-Modified-Since"] == "Mon, 23 Nov 2026 08:00:00 GMT"


def test_a_feed_that_failed_to_parse_is_fetched_in_full_next_time(
        ctx: Context, feed_server: FeedServer) -> None:
    url = feed_server.add("/x.xml", body=b"<html>oops</html>", etag='"e"')
    add_feed(ctx.db, url)
    collect(ctx.db, ctx.settings)
    feed_server.routes["/x.xml"] = Route(body=rss([item(1)]), etag='"e"')
    assert collect(ctx.db, ctx.settings).new == 1


def test_redirects_are_followed_up_to_the_limit(ctx: Context, feed_server: FeedServer) -> None:
    feed_server.add("/final.xml", body=rss([item(1)]))
    feed_server.add("/r1", redirect_to="/final.xml")
    for n in range(2, 6):  # /r5 → /r4 → … → /r1 → /final.xml: five redirects
        feed_server.add(f"/r{n}", redirect_to=f"/r{n - 1}")
    feed_server.add("/r6", redirect_to="/r5")
    add_feed(ctx.db, feed_server.url("/r5"), "five")
    add_feed(ctx.db, feed_server.url("/r6"), "six")
    # Redirects are checked like any URL chosen by content: this server is loopback.
    settings = ctx.settings.replace(fetch_allow_private=["127.0.0.1/32"])
    report = {f.url: f for f in collect(ctx.db, settings).feeds}
    assert report[feed_server.url("/r5")].status == "ok"
    assert report[feed_server.url("/r5")].new == 1
    assert report[feed_server.url("/r6")].error == "more than 5 redirects (a loop?)"
    assert feed_server.hits("/final.xml")[0]["User-Agent"] == USER_AGENT


def test_entries_without_dates_are_dated_when_first_seen(ctx: Context,
                                                         feed_server: FeedServer) -> None:
    url = feed_server.add("/nodate.xml", body=rss([{"title": "Undated", "guid": "u",
                                                    "link": "https://n.example/u"}]))
    add_feed(ctx.db, url)
    before = time.time()
    collect(ctx.db, ctx.settings)
    with ctx.db.session() as s:
        entry = s.scalars(select(Entry)).one()
    assert entry.published_at is None
    assert abs(entry.dated_at.timestamp() - before) < 30


def test_an_edited_entry_is_updated_not_duplicated(ctx: Context,
                                                   feed_server: FeedServer) -> None:
    url = feed_server.add("/e.xml", body=rss([item(1)]))
    add_feed(ctx.db, url)
    collect(ctx.db, ctx.settings)
    feed_server.routes["/e.xml"] = Route(body=rss([item(1, summary="<p>Corrected.</p>")]))
    report = collect(ctx.db, ctx.settings)
    assert report.feeds[0].updated == 1 and report.new == 0
    with ctx.db.session() as s:
        assert "Corrected." in s.scalars(select(Entry.summary_html)).one()


def test_feeds_over_https_are_verified_as_httpx_would(tmp_path: Path) -> None:
    # The certificate authorities are loaded on a thread of their own while `digest
    # collect` starts; the servers are verified as before: an unknown issuer is refused,
    # SSL_CERT_FILE is honoured, and a missing one is named.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = FeedServer(tls=(cert, key))
    try:
        url = server.add("/feed.xml", body=rss([item(1)]))
        base = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin"}

        def digest(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "digest", *argv], cwd=tmp_path,
                                  env={**base, **env}, capture_output=True, text=True,
                                  timeout=60)

        assert digest("feeds", "add", url).returncode == 0
        refused = digest("collect")
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stdout + refused.stderr, refused
        missing = digest("collect", SSL_CERT_FILE=str(tmp_path / "nope.pem"))
        assert missing.returncode == 1
        assert f"SSL_CERT_FILE={tmp_path / 'nope.pem'}" in missing.stderr, missing.stderr
        assert "No such file" in missing.stderr
        trusted = digest("collect", SSL_CERT_FILE=str(cert))
        assert trusted.returncode == 0, trusted.stderr
        assert "1 new entry" in trusted.stderr, trusted.stderr
    finally:
        server.close()
