"""Write an Atom 1.0 feed (RFC 4287) of a list's past issues. Pure: data in, bytes out.

The document is built as elements by lxml, never pasted together as text, so whatever
a title or a recap holds ends up as escaped text; the characters no XML document may
hold are taken out first (:func:`xml_safe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from digest.core.sanitize import xml_safe

if TYPE_CHECKING:
    from lxml import etree

ATOM = "http://www.w3.org/2005/Atom"
ATOM_MEDIA_TYPE = "application/atom+xml"


@dataclass(frozen=True)
class AtomEntry:
    """One issue in the feed: its page is its id, its content HTML as text."""

    url: str
    title: str
    published: datetime
    summary: str
    content_html: str


@dataclass(frozen=True)
class AtomFeed:
    """A list's feed: its archive page, the feed's own address, and its issues."""

    title: str
    url: str        # the archive page the feed stands for (also its id)
    feed_url: str   # where the feed itself is (rel="self")
    author: str
    updated: datetime
    entries: Sequence[AtomEntry]


def _stamp(value: datetime) -> str:
    """An RFC 3339 date-time in UTC, as Atom wants it (a stored naive time is UTC)."""
    aware = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.strftime("%Y-%m-%dT%H:%M:%SZ")


def _add(parent: etree._Element, tag: str, text: str | None = None,
         **attributes: str) -> etree._Element:
    from lxml import etree
    child = etree.SubElement(parent, f"{{{ATOM}}}{tag}",
                             {k: xml_safe(v) for k, v in attributes.items()})
    if text is not None:
        child.text = xml_safe(text)
    return child


def atom_feed(feed: AtomFeed) -> bytes:
    """The feed as a UTF-8 XML document."""
    from lxml import etree
    root = etree.Element(f"{{{ATOM}}}feed", nsmap={None: ATOM})
    _add(root, "id", feed.url)
    _add(root, "title", feed.title, type="text")
    _add(root, "updated", _stamp(feed.updated))
    _add(root, "link", rel="alternate", type="text/html", href=feed.url)
    _add(root, "link", rel="self", type=ATOM_MEDIA_TYPE, href=feed.feed_url)
    _add(_add(root, "author"), "name", feed.author or feed.title)
    _add(root, "generator", "Recap Digest")
    for entry in feed.entries:
        node = _add(root, "entry")
        _add(node, "id", entry.url)
        _add(node, "title", entry.title, type="text")
        _add(node, "link", rel="alternate", type="text/html", href=entry.url)
        _add(node, "published", _stamp(entry.published))
        _add(node, "updated", _stamp(entry.published))
        _add(node, "summary", entry.summary, type="text")
        _add(node, "content", entry.content_html, type="html")
    data: bytes = etree.tostring(root, encoding="utf-8", xml_declaration=True)
    return data
