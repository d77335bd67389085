"""Parsing and normalizing feeds: sanitized HTML, absolute links, UTC dates, bad input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from digest.core.feeds import canonical_link, parse_feed, title_key
from digest.core.sanitize import sanitize_html, summarize
from digest.errors import FeedError
from tests.feedserver import rss

HOSTILE = """<p onclick="steal()">Talks resumed.<script>alert(1)</script></p>
<img src="https://tracker.example/p.gif" width="1" height="1">
<img src="https://img.example/map.png" width="400" height="300" alt="map" onerror="x()">
<iframe src="https://evil.example"></iframe><style>body{display:none}</style>
<p><a href="javascript:alert('x')">bad</a> <a href="/full" onmouseover="x()">full</a></p>
<form action="https://evil.example"><input name="password"></form>
<svg onload="alert(1)"></svg><p style="position:fixed">styled</p>"""


def test_sanitizer_keeps_text_and_drops_everything_dangerous() -> None:
    clean = sanitize_html(HOSTILE, base_url="https://news.example/recaps/1")
    for bad in ("<script", "onclick", "onerror", "onmouseover", "<iframe", "<style",
                "javascript:", "<form", "<input", "<svg", "style=", "tracker.example",
                "display:none"):
        assert bad not in clean, bad
    assert "Talks resumed." in clean
    assert 'src="https://img.example/map.png"' in clean
    assert 'href="https://news.example/full"' in clean  # relative link made absolute


def test_summary_is_cut_on_a_word_boundary_and_stays_balanced() -> None:
    long = "<p>" + " ".join(f"word{i}" for i in range(200)) + "</p><p>second</p>"
    cut = summarize(long, 100)
    assert cut.startswith("<p>") and cut.endswith("…</p>")
    text = cut.removeprefix("<p>").removesuffix("…</p>")
    assert len(text) <= 100
    assert text.split()[-1].startswith("word") and text.split()[-1][4:].isdigit()
    assert "second" not in cut


def test_parse_normalizes_entries() -> None:
    body = rss([{
        "title": "Recap: &lt;b&gt;Iran&lt;/b&gt; Moves in Syria",
        "link": "/recaps/iran-syria", "guid": "g-1",
        "date": "Sun, 22 Nov 2026 09:30:00 +0300", "tags": ["Iran", " Syria ", "iran"],
        "summary": HOSTILE}])
    feed = parse_feed(body, url="https://news.example/feed.xml")
    [entry] = feed.entries
    assert entry.title == "Recap: Iran Moves in Syria"
    assert entry.link == "https://news.example/recaps/iran-syria"
    assert entry.published_at == datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
    assert entry.keywords == ("Iran", "Syria")
    assert "<script" not in entry.summary_html and "Talks resumed." in entry.summary_html


def test_javascript_links_are_dropped() -> None:
    body = rss([{"title": "T", "link": "javascript:alert(1)", "guid": "x"}])
    [entry] = parse_feed(body, url="https://n.example/f").entries
    assert entry.link is None


def test_broken_xml_that_still_yields_entries_keeps_them() -> None:
    body = rss([{"title": "One", "link": "https://n.example/1", "guid": "1"},
                {"title": "Two", "link": "https://n.example/2", "guid": "2"}])
    broken = body.replace(b"</channel></rss>", b"<item><title>Three &nbsp; <b></title>")
    feed = parse_feed(broken, url="https://n.example/f")
    assert [e.title for e in feed.entries][:2] == ["One", "Two"]
    assert feed.warning and "malformed" in feed.warning


@pytest.mark.parametrize("body", [b"<html><body>Not a feed</body></html>", b"", b"\x00\x01"])
def test_not_a_feed_is_an_error_naming_the_url(body: bytes) -> None:
    with pytest.raises(FeedError) as info:
        parse_feed(body, url="https://n.example/page")
    assert "https://n.example/page" in str(info.value) and "not a feed" in str(info.value)


def test_non_utf8_feed_is_decoded() -> None:
    body = rss([{"title": "ملخص: سوريا", "link": "https://n.example/ar", "guid": "a"}],
               encoding="windows-1256")
    [entry] = parse_feed(body, url="https://n.example/f",
                         headers={"content-type": "application/rss+xml"}).entries
    assert entry.title == "ملخص: سوريا"


def test_a_string_is_never_read_as_a_path(tmp_path: object) -> None:
    # feedparser reads a str argument as a path or URL; we only ever hand it bytes.
    with pytest.raises(FeedError):
        parse_feed(b"/etc/passwd", url="https://n.example/f")


def test_dedupe_keys_ignore_tracking_and_case() -> None:
    assert canonical_link("HTTPS://News.Example/a/?utm_source=x&b=2#frag") == \
        canonical_link("https://news.example/a?b=2")
    assert title_key("Recap: Iran  Moves!") == title_key("recap iran moves")


def test_duplicate_within_one_feed_is_kept_once() -> None:
    body = rss([{"title": "Same", "link": "https://n.example/1", "guid": "1"},
                {"title": "Same", "link": "https://n.example/1?utm_medium=rss", "guid": "2"}])
    assert len(parse_feed(body, url="https://n.example/f").entries) == 1
