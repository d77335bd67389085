"""Parse a fetched feed into normalized entries. Pure: bytes in, values out."""

from __future__ import annotations

import calendar
import html
import io
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from digest.core.sanitize import (
    READ_ALSO,
    bounded,
    html_to_text,
    links_after_read_also,
    parse_fragment,
    summarize_parsed,
)
from digest.core.words import counted
from digest.errors import FeedError

TRACKING_PARAMS = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")
UNTITLED = "(untitled)"  # the title of an entry that has a link and nothing to call it
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Image:
    """An image by URL, with what an email needs to show it: alt text and its size."""

    url: str
    alt: str = ""
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class FeedEntry:
    """One entry of a feed, normalized and safe to show."""

    guid: str | None
    link: str | None
    title: str
    summary_html: str
    author: str | None
    keywords: tuple[str, ...]
    published_at: datetime | None
    lead: str = ""
    image: Image | None = None
    related: tuple[tuple[str, str], ...] = ()  # "Read also": (title, url)


@dataclass(frozen=True)
class ParsedFeed:
    """What a feed held: its title, its entries, and a warning if it was malformed."""

    title: str | None
    entries: list[FeedEntry]
    warning: str | None = None
    untitled: int = 0  # entries left out: neither a title nor a link, nothing to show


def canonical_link(url: str) -> str:
    """The form of a link used to spot the same recap: no fragment, no tracking parameters."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:  # not a number: no port (no link we keep has one)
        port = None
    if port and not ((parts.scheme == "http" and port == 80) or
                     (parts.scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    path = parts.path or "/"
    if len(path) > 1:
        path = path.rstrip("/")
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if not k.lower().startswith(TRACKING_PARAMS))
    return urlunsplit((parts.scheme.lower(), host, path, urlencode(query), ""))


def title_key(title: str) -> str:
    """A title reduced for comparison: case, accents' forms, punctuation and spacing folded."""
    folded = unicodedata.normalize("NFKC", title).casefold()
    return " ".join(_NON_WORD.sub(" ", folded).split())


def _clip(text: str, most: int) -> str:
    """Folded text cut to ``most`` characters, with no space left at the cut."""
    return text[:most].rstrip()


def _absolute_http(link: str | None, base: str) -> str | None:
    # No character a link can't show: urlsplit itself drops leading control characters
    # and tabs and line breaks anywhere, and what it parses must be what is kept.
    link = "".join(ch for ch in link or "" if ch.isprintable()).strip()
    if not link:
        return None
    try:
        absolute = urljoin(base, link)
        parts = urlsplit(absolute)
        port = parts.port  # raises ValueError for a port that is no number
    except ValueError:
        return None
    # "http:x//host/" is no web address (it names no host), nor is port 0.
    web = parts.scheme in {"http", "https"} and parts.netloc and port != 0
    # urlsplit lowers the scheme ("httP:" is http); the link keeps it lowered too.
    return parts.scheme + absolute[len(parts.scheme):] if web else None


def _time(entry: Any) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            try:
                return datetime.fromtimestamp(calendar.timegm(value), UTC)
            except (OverflowError, ValueError, TypeError):
                continue
    return None


def _keywords(entry: Any) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for tag in entry.get("tags") or []:
        term = tag.get("term") or tag.get("label") or ""
        for part in str(term).split(","):
            display = " ".join(html_to_text(part).split())
            if display and display.casefold() not in seen:
                seen[display.casefold()] = _clip(display, 100)
    return tuple(seen.values())


def _summary(entry: Any) -> tuple[str, str]:
    """The entry's fullest text as the feed gave it (its content, else its summary), and
    that as HTML."""
    for content in entry.get("content") or []:
        if content.get("value"):
            value = str(content["value"])
            return value, _as_html(value, content.get("type"))
    value = str(entry.get("summary") or entry.get("description") or "")
    return value, _as_html(value, _kind(entry.get("summary_detail")))


LEAD_MAX_CHARS = 2000
MAX_RELATED = 5
MAX_URL_CHARS = 2000
# The media types under which a feed's text is HTML (Atom's type="html" and "xhtml").
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# RSS declares no type: its text is taken for HTML when it holds a closing tag or a
# character reference (as feedparser guesses, but whatever the tag), so "Vector<int>"
# stays text. Each try scans one tag name or one reference, so the search is linear.
_MARKUP = re.compile(r"</[a-zA-Z][a-zA-Z0-9]*\s*>|&#?[a-zA-Z0-9]+;")


def _kind(detail: object) -> str | None:
    """The media type feedparser gives a text construct, if any."""
    kind = detail.get("type") if isinstance(detail, Mapping) else None
    return str(kind) if kind else None


def _as_html(value: str, kind: str | None) -> str:
    """A feed's text construct as HTML: HTML as it is, text (declared so) escaped into a
    paragraph, never read as markup."""
    if kind is None or kind in HTML_TYPES:
        return value
    return f"<p>{html.escape(bounded(value), quote=False)}</p>"


def _plain(value: object, detail: object, *, guess: bool) -> str:
    """A title as plain text: HTML reduced to its text, text kept as written (Jinja2
    escapes it where it is shown). ``guess``: the feed declares no type (RSS)."""
    text = bounded(str(value or ""))
    kind = _kind(detail)
    if kind in HTML_TYPES or (guess and _MARKUP.search(text)):
        return html_to_text(text)
    return " ".join(text.split())


def _dimension(value: object) -> int | None:
    text = str(value or "").strip().removesuffix("px").lstrip("0")
    if not (text.isascii() and text.isdigit()) or len(text) > 4:
        return None
    return int(text)


def _image(entry: Any, body: Any, *, base: str) -> Image | None:
    """The entry's first image: media:content, media:thumbnail, an image enclosure, or
    the first <img> of its content. By URL only; tracking pixels are not images. Its alt
    is the feed's, else its description, else empty (the entry's title, in the end)."""
    candidates: list[tuple[str, str, object, object]] = []
    for media in entry.get("media_content") or []:
        kind = str(media.get("medium") or media.get("type") or "image")
        if kind.startswith("image"):
            candidates.append((str(media.get("url") or ""), "", media.get("width"),
                               media.get("height")))
    for thumb in entry.get("media_thumbnail") or []:
        candidates.append((str(thumb.get("url") or ""), "", thumb.get("width"),
                           thumb.get("height")))
    for link in entry.get("links") or []:
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image/"):
            candidates.append((str(link.get("href") or ""), "", None, None))
    for img in body.iter("img"):
        candidates.append((img.get("src") or "", img.get("alt") or "", img.get("width"),
                           img.get("height")))
    described = html_to_text(str(entry.get("media_description") or ""))
    for url, alt, width, height in candidates:
        if len(url) > MAX_URL_CHARS:
            continue  # cut short, it would lead nowhere
        absolute = _absolute_http(html.unescape(url), base)
        w, h = _dimension(width), _dimension(height)
        if absolute is None or len(absolute) > MAX_URL_CHARS or (w is not None and w <= 1) \
                or (h is not None and h <= 1):
            continue
        alt_text = " ".join(html_to_text(alt).split()) or described
        return Image(absolute, _clip(alt_text, 300), w, h)
    return None


def _related(body: Any, *, base: str, own_link: str | None) -> tuple[tuple[str, str], ...]:
    """The links after a "Read also" in the entry's HTML (at most MAX_RELATED)."""
    found: dict[str, str] = {}
    for href, text in links_after_read_also(body):
        url = _absolute_http(href, base)
        label = _clip(text, 300)
        if url and label and url != own_link and url not in found:
            found[url] = label
        if len(found) == MAX_RELATED:
            break
    return tuple((label, url) for url, label in found.items())


def _lead(entry: Any, value: str, text: str) -> str:
    """The standfirst as plain text: the feed's summary when it also gives content, else
    the content's ``text``; a "Read also" block is not part of it."""
    summary = str(entry.get("summary") or "")
    if summary and summary != value:
        text = html_to_text(_as_html(summary, _kind(entry.get("summary_detail"))))
    marker = READ_ALSO.search(text)
    if marker is not None:
        text = text[:marker.start()]
    return _clip(" ".join(text.split()), LEAD_MAX_CHARS)


def normalize_entry(entry: Any, *, base: str, summary_max_chars: int,
                    guess: bool = True) -> FeedEntry | None:
    """Turn one feedparser entry into a :class:`FeedEntry`; None if it has nothing to show.

    ``guess``: the feed declares no type for its titles (RSS), so markup is recognised.
    """
    link = _absolute_http(entry.get("link"), base)
    title = _clip(_plain(entry.get("title"), entry.get("title_detail"), guess=guess), 500)
    value, raw = _summary(entry)
    body = parse_fragment(raw)  # read once, in this order: summarizing prunes the tree
    image = _image(entry, body, base=link or base)
    related = _related(body, base=link or base, own_link=link)
    summary, text = summarize_parsed(body, summary_max_chars, base_url=link or base)
    lead = _lead(entry, value, text)
    if not title:
        title = _clip(html_to_text(summary), 80)
    if not title and not link:
        return None
    guid = str(entry.get("id") or "").strip()[:2000] or None
    author = _clip(html_to_text(str(entry.get("author") or "")), 300) or None
    title = title or UNTITLED
    if image is not None and not image.alt:
        image = replace(image, alt=_clip(title, 300))
    return FeedEntry(guid=guid, link=link, title=title, summary_html=summary,
                     author=author, keywords=_keywords(entry), published_at=_time(entry),
                     lead=lead, image=image, related=related)


def parse_feed(body: bytes, *, url: str, headers: Mapping[str, str] | None = None,
               summary_max_chars: int = 600) -> ParsedFeed:
    """Parse feed bytes; raise :class:`FeedError` when they hold no feed at all.

    Bytes go in through BytesIO: a string could be taken for a file path or URL.
    """
    response_headers = {k.lower(): v for k, v in (headers or {}).items()}
    # No content-location: feedparser would then urljoin every element (half its time);
    # the few links we keep are made absolute in normalize_entry instead.
    response_headers.pop("content-location", None)
    import feedparser  # here: a collect whose feeds all answer 304 parses nothing
    try:
        parsed = feedparser.parse(io.BytesIO(body), response_headers=response_headers,
                                  sanitize_html=False, resolve_relative_uris=False)
    except Exception as e:  # its own bug on hostile bytes: this feed's error, not collect's
        # (its loose parser encodes "&#xD800;" to UTF-8 and raises UnicodeEncodeError)
        raise FeedError(url, f"feedparser failed: {type(e).__name__}: {e}") from e
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if not parsed.entries and not parsed.get("version"):
        reason = f"not a feed ({problem})" if problem else "not a feed"
        raise FeedError(url, reason)
    guess = not str(parsed.get("version") or "").startswith("atom")  # Atom declares types
    entries = []
    untitled = 0
    for raw in parsed.entries:
        entry = normalize_entry(raw, base=url, summary_max_chars=summary_max_chars,
                                guess=guess)
        if entry is None:
            untitled += 1  # counted by the collector, which also finds repeats
        else:
            entries.append(entry)
    feed = parsed.get("feed") or {}
    title = _plain(feed.get("title"), feed.get("title_detail"), guess=guess) or None
    warning = (f"malformed feed, kept {counted(len(entries), 'entry', 'entries')}: {problem}"
               if problem else None)
    return ParsedFeed(title=title, entries=entries, warning=warning, untitled=untitled)
