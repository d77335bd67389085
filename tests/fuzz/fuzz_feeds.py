"""Fuzz feed parsing: any bytes, or fuzzed text in the fields of an RSS or Atom feed.

Run: ``.venv/bin/python -m tests.fuzz.fuzz_feeds -max_total_time=30`` (``make fuzz``).
Holds: nothing but a DigestError leaves parse_feed, and every entry is within its bounds:
title, lead, summary (allow-list only, its limit of text), image, links and keywords.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

import atheris

with atheris.instrument_imports():
    from digest.core.feeds import LEAD_MAX_CHARS, MAX_RELATED, MAX_URL_CHARS, parse_feed
    from digest.errors import DigestError
    from tests.fuzz.checks import assert_safe_html, text_length

SUMMARY_CHARS = 200
TYPES = ("text", "html", "xhtml", "text/plain", "")


def _rss(fdp: atheris.FuzzedDataProvider, *, escaped: bool) -> bytes:
    def field() -> str:
        value = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
        return escape(value) if escaped else value
    summary = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 4000))
    description = (f"<![CDATA[{summary.replace(']]>', '')}]]>" if fdp.ConsumeBool()
                   else escape(summary)) if escaped else summary
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0" xmlns:media='
            f'"http://search.yahoo.com/mrss/"><channel><title>{field()}</title><item>'
            f"<title>{field()}</title><link>{field()}</link><guid>{field()}</guid>"
            f"<category>{field()}</category><author>{field()}</author>"
            f"<media:content url={quoteattr(field())} medium=\"image\" "
            f"width={quoteattr(field())}/>"
            f"<description>{description}</description></item></channel></rss>"
            ).encode()


def _atom(fdp: atheris.FuzzedDataProvider) -> bytes:
    def text(tag: str, most: int) -> str:
        kind = TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)]
        value = escape(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, most)))
        return f"<{tag} type={quoteattr(kind)}>{value}</{tag}>" if kind else \
            f"<{tag}>{value}</{tag}>"
    return ('<?xml version="1.0" encoding="utf-8"?>'
            '<feed xmlns="http://www.w3.org/2005/Atom">'
            f"{text('title', 100)}<id>urn:f</id><entry>{text('title', 300)}<id>urn:1</id>"
            '<link href="https://n.example/1"/>'
            f"{text('summary', 2000)}{text('content', 4000)}</entry></feed>"
            ).encode()


def one_input(data: bytes) -> None:
    """Check one input."""
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
    elif mode == 3:
        body = _atom(fdp)
    else:
        body = _rss(fdp, escaped=mode == 1)
    try:
        feed = parse_feed(body, url="https://fuzz.example/feed.xml",
                          summary_max_chars=SUMMARY_CHARS)
    except DigestError:
        return
    for entry in feed.entries:
        assert entry.title and len(entry.title) <= 500 and entry.title == entry.title.strip()
        assert len(entry.lead) <= LEAD_MAX_CHARS
        assert_safe_html(entry.summary_html)
        assert text_length(entry.summary_html) <= SUMMARY_CHARS + 1, entry.summary_html
        for url in [entry.link, *(u for _, u in entry.related),
                    entry.image.url if entry.image else None]:
            assert url is None or (url.startswith(("http://", "https://"))
                                   and urlsplit(url).netloc), url
        assert len(entry.related) <= MAX_RELATED
        if entry.image is not None:
            assert len(entry.image.url) <= MAX_URL_CHARS and len(entry.image.alt) <= 300
            for size in (entry.image.width, entry.image.height):
                assert size is None or 1 < size < 10_000, entry.image
        assert all(0 < len(k) <= 100 for k in entry.keywords), entry.keywords


def main() -> None:
    """Fuzz until libFuzzer's flags (-max_total_time, -runs) say stop."""
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
