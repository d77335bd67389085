"""Parsing and normalizing feeds: sanitized HTML, absolute links, UTC dates, bad input."""

from __future__ import annotations

import html
from datetime import UTC, datetime

import pytest

from digest.core.feeds import canonical_link, parse_feed, title_key
from digest.core.grouping import Item, KeywordConfig, group
from digest.core.rendering import IssueContent, Recipient, Renderer, Sender
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


# --- text constructs: text stays text, HTML becomes text (issue 26, item 13) -----------------

TEXT_TITLES = ["Vector<int> in C++", "if a<b and c>d", "History of the <blink> tag"]


def atom(entries: list[str]) -> bytes:
    """An Atom feed around entries given as their inner XML."""
    return ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            '<title type="text">Desk &lt;C++&gt;</title><id>urn:desk</id>'
            + "".join(f'<entry><id>urn:{i}</id><link href="https://n.example/{i}"/>{inner}'
                      "</entry>" for i, inner in enumerate(entries))
            + "</feed>").encode()


def test_text_titles_keep_their_text_in_rss_and_atom() -> None:
    # RSS declares no type: no closing tag and no reference, so text. Atom says "text"
    # (also what no type means there).
    rss_feed = parse_feed(rss([{"title": html.escape(t, quote=False), "guid": str(i),
                                "link": f"https://n.example/{i}"}
                               for i, t in enumerate(TEXT_TITLES)], title="Desk &lt;C++&gt;"),
                          url="https://n.example/feed.xml")
    atom_feed = parse_feed(atom([f'<title type="text">{html.escape(TEXT_TITLES[0])}</title>',
                                 f"<title>{html.escape(TEXT_TITLES[1])}</title>",
                                 f'<title type="text">{html.escape(TEXT_TITLES[2])}</title>']),
                           url="https://n.example/feed.atom")
    for feed in (rss_feed, atom_feed):
        assert [e.title for e in feed.entries] == TEXT_TITLES
        assert feed.title == "Desk <C++>"


def test_html_titles_are_reduced_to_their_text() -> None:
    feed = parse_feed(atom([
        '<title type="html">Vector&amp;lt;int&amp;gt; &lt;b&gt;in&lt;/b&gt; C++</title>',
        '<title type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">History of the '
        "<b>blink</b> tag</div></title>",
        '<title type="html">Recap &lt;script&gt;alert(1)&lt;/script&gt;</title>']),
        url="https://n.example/feed.atom")
    assert [e.title for e in feed.entries] == ["Vector<int> in C++", "History of the blink tag",
                                               "Recap"]
    # RSS: a closing tag or a reference says HTML, whatever tags feedparser knows.
    [entry] = parse_feed(rss([{"title": "<![CDATA[Recap: <b>Gaza</b> Talks<script>x()"
                                        "</script>]]>", "guid": "1"}]),
                         url="https://n.example/feed.xml").entries
    assert entry.title == "Recap: Gaza Talks"


def test_a_text_summary_is_escaped_into_a_paragraph_never_parsed() -> None:
    feed = parse_feed(atom([
        '<title>Text</title><summary type="text">if a&lt;b and c&gt;d, see &lt;blink&gt; '
        "&amp; co</summary>",
        '<title>Content</title><content type="text">Vector&lt;int&gt; &lt;img src=x&gt;'
        "</content>",
        '<title>HTML</title><summary type="html">&lt;p&gt;if a&amp;lt;b&lt;/p&gt;'
        "&lt;img src=x&gt;</summary>"]), url="https://n.example/feed.atom")
    text, content, markup = feed.entries
    assert text.summary_html == "<p>if a&lt;b and c&gt;d, see &lt;blink&gt; &amp; co</p>"
    assert text.lead == "if a<b and c>d, see <blink> & co"
    assert content.summary_html == "<p>Vector&lt;int&gt; &lt;img src=x&gt;</p>"
    assert content.lead == "Vector<int> <img src=x>" and content.image is None
    assert markup.summary_html == '<p>if a&lt;b</p><img src="https://n.example/x">'
    assert markup.lead == "if a<b" and markup.image is not None


def test_a_text_title_reaches_the_email_as_text() -> None:
    feed = parse_feed(atom([f'<title type="text">{html.escape(t)}</title><category term="C"/>'
                            "<summary>A recap.</summary>" for t in TEXT_TITLES]),
                      url="https://n.example/feed.atom")
    now = datetime(2026, 11, 23, tzinfo=UTC)
    items = [Item(i, e.title, e.link, e.summary_html, e.keywords, now, lead=e.lead)
             for i, e in enumerate(feed.entries, 1)]
    content = IssueContent("weekly", "The Weekly Recap", 1, "The Weekly Recap", now,
                           group(items, KeywordConfig.from_settings([], {}, {}, "Other")),
                           Sender("Desk", "desk@news.example", "1 Road, Town"),
                           "https://digest.example/archive/weekly/1")
    issue = Renderer().render_issue(content)
    page, text = issue.personalize(Recipient("https://digest.example/u/T",
                                             "https://digest.example/p/T"))
    for title in TEXT_TITLES:
        assert title in text
        assert html.escape(title, quote=False) in page
    assert "<int>" not in page and "<blink>" not in page
