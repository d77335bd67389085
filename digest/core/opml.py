"""OPML 2.0, the list of feeds every feed reader imports and exports: read one into the
feeds it names, and write the feeds we collect as one.

A file comes from anywhere, so it is parsed without a DTD, without the network and
without entities: one that declares entities is refused whole, as is one that is not
well-formed XML. Inside a good file, each ``<outline>`` stands alone: outlines nested in
categories are read at every depth, and one that names no feed (no ``xmlUrl``), names
something other than a web address, or has control or invisible characters in its
address is reported with its line and left out, while the others are read.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from urllib.parse import urlsplit

from lxml import etree

from digest.core.sanitize import xml_safe
from digest.errors import InvalidInputError

# Categories refused in a feed's address: controls, format characters (bidirectional
# overrides, zero-width spaces) and separators. An address has no spaces either.
_REFUSED = frozenset(("Cc", "Cf", "Zl", "Zp", "Zs", "Cs"))


@dataclass(frozen=True)
class Outline:
    """A feed an OPML file names: its address, its title (may be empty, or hold what a
    person typed: the caller makes it one line), and the line it is on."""

    url: str
    title: str
    line: int


@dataclass
class OpmlFeeds:
    """What an OPML file holds: its feeds in order, and each outline left out, by line."""

    feeds: list[Outline] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           load_dtd=False, dtd_validation=False)


def _address_problem(url: str) -> str | None:
    """Why ``url`` cannot be a feed's address, or None."""
    if not url:
        return "no xmlUrl: it names no feed"
    bad = next((c for c in url if unicodedata.category(c) in _REFUSED), None)
    if bad is not None:
        return f"xmlUrl {url!r} holds the character U+{ord(bad):04X}"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"xmlUrl {url!r} is not an http(s) URL"
    return None


def read_opml(data: bytes, *, source: str = "the OPML file") -> OpmlFeeds:
    """Return the feeds ``data`` (an OPML document) names, and the outlines left out.

    Raises InvalidInputError, naming ``source`` and the line, for a document that cannot
    be read at all: not XML, declaring entities, or not OPML.
    """
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        line = e.lineno or 1
        raise InvalidInputError(f"{source}, line {line}: not well-formed XML ({e.msg})") from e
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise InvalidInputError(f"{source} declares XML entities; an OPML file needs none, "
                                "and they are not read")
    if not isinstance(root.tag, str) or etree.QName(root).localname != "opml":
        raise InvalidInputError(f"{source}, line {root.sourceline}: the document is "
                                f"<{root.tag}>, not <opml>")
    body = next((el for el in root if isinstance(el.tag, str)
                 and etree.QName(el).localname == "body"), None)
    found = OpmlFeeds()
    if body is None:
        found.problems.append((root.sourceline or 1, "no <body>: the file names no feeds"))
        return found
    for outline in body.iter("{*}outline"):
        line = outline.sourceline or 0
        url = (outline.get("xmlUrl") or "").strip()
        has_children = any(isinstance(child.tag, str) for child in outline)
        if not url and has_children:
            continue  # a category: its outlines are read in turn
        problem = _address_problem(url)
        if problem is not None:
            found.problems.append((line, problem))
            continue
        found.feeds.append(Outline(url, outline.get("text") or outline.get("title") or "",
                                   line))
    return found


def write_opml(feeds: Iterable[tuple[str, str]], *, title: str, created: datetime) -> bytes:
    """An OPML 2.0 document of ``feeds`` (address and name), as feed readers import."""
    root = etree.Element("opml", version="2.0")
    head = etree.SubElement(root, "head")
    etree.SubElement(head, "title").text = title
    etree.SubElement(head, "dateCreated").text = format_datetime(created)
    body = etree.SubElement(root, "body")
    for url, name in feeds:
        shown = xml_safe(name)
        etree.SubElement(body, "outline", type="rss", text=shown, title=shown,
                         xmlUrl=xml_safe(url))
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8",
                                pretty_print=True))
