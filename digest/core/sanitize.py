"""Make feed HTML safe for an email and a web page: sanitize, cut, or reduce to text.

Feed HTML is hostile in what it costs to read as much as in what it holds, so every
fragment takes one road. Its first :data:`MAX_FRAGMENT_CHARS` characters are read by
libxml2's HTML parser (lxml), whose work grows with its input and no faster, and which
nests at most 256 elements deep. What it built is written out again with only the
allow-list's tags and attributes, and only that reaches nh3, the sanitizer, which has the
last word on tags, attributes and URLs. nh3 (0.3.8, html5ever) is quadratic or worse on
deep or misnested markup (nested ``<li><ul>``, ``<b id=N>`` or ``<div>``) and on
references that never end (a run of ``&``), so such markup must never reach it. On the
shallow, well-formed markup it gets here, with every reference written out, it is
linear. Structure (images, links, the "Read also" block) is read from the parser's tree,
never matched with regular expressions.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import nh3

if TYPE_CHECKING:
    from lxml import etree

# A small allow-list: what a recap summary needs, nothing that runs or restyles the page.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "cite", "code", "em", "i", "img", "li", "ol", "p",
    "q", "s", "small", "strong", "sub", "sup", "u", "ul",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    "abbr": {"title"},
    "q": {"cite"},
    "blockquote": {"cite"},
}
URL_SCHEMES = {"http", "https", "mailto"}
# What a parsed fragment keeps: the allow-list, and the rel nh3 gives every link.
_KEPT_ATTRIBUTES = {**ALLOWED_ATTRIBUTES, "a": ALLOWED_ATTRIBUTES["a"] | {"rel"}}
# Elements whose content goes too, not only the tags.
DROPPED_WITH_CONTENT = {"script", "style", "iframe", "form", "object", "embed", "noscript",
                        "template", "svg", "math", "select", "textarea", "button", "title"}
# HTML's void elements: a start tag and never an end tag.
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
             "param", "source", "track", "wbr"}

# What the parsers read of one fragment (a title, a summary, an entry's content). A recap's
# summary keeps 600 characters of text and its lead 2000, both found in the first few
# kilobytes of any real entry; past this, an entry's HTML is not read at all. The bound
# keeps the slowest input found for the whole path of one entry (feed parsing, sanitizing,
# the email's fragment) at the cost of benign HTML of its size
# (tests/test_hostile_html.py times each family beside benign HTML).
MAX_FRAGMENT_CHARS = 100_000

# Where a recap's "Read also" links start: English and Arabic forms, any case. Searched in
# text, never in markup: each try scans one run of spaces, so the search is linear.
READ_ALSO = re.compile(r"(?:read|see)\s+also\b\s*:?|اقرأ\s+أيضا[ًً]?\s*:?", re.IGNORECASE)
# Link texts that say nothing out of context; the email shows the entry's title instead.
VAGUE_LINK_TEXTS = frozenset({"click here", "here", "read more", "more", "link", "this"})
# How far after "Read also" its links are looked for, in characters of text: five
# headlines and what separates them.
RELATED_WINDOW_CHARS = 2000

# What no HTML text may hold: C0 controls but tab and line ends, two non-characters, and
# lone halves of surrogate pairs (which no parser accepts).
_UNFIT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_PIXELS = re.compile(r"\s*(\d+)(?:px)?\s*", re.IGNORECASE)  # a width or height, whole


def _escape_text(text: str) -> str:
    """Text escaped as nh3 writes it: written the same way, nh3's output read back and
    written again is unchanged."""
    return (text.replace("&", "&amp;").replace("\xa0", "&nbsp;").replace("<", "&lt;")
            .replace(">", "&gt;"))


def _escape_attribute(value: str) -> str:
    """An attribute's value escaped as nh3 writes it, for double quotes."""
    return _escape_text(value).replace('"', "&quot;")


def bounded(fragment: str) -> str:
    """``fragment`` as the parsers get it: its first :data:`MAX_FRAGMENT_CHARS`
    characters, without the characters no HTML or XML text may hold (lxml refuses to
    write them back): control characters go (vertical tab and form feed become spaces)
    and lone surrogates become U+FFFD."""
    return xml_safe(fragment[:MAX_FRAGMENT_CHARS])


def xml_safe(text: str) -> str:
    """``text`` without the characters no XML 1.0 document may hold (as :func:`bounded`
    treats them, without the cut): what a feed of ours writes passes every parser."""
    return _UNFIT.sub(_fit, text)


def _fit(match: re.Match[str]) -> str:
    char = match[0]
    return " " if char in "\x0b\x0c" else "\ufffd" if "\ud800" <= char <= "\udfff" else ""


@cache
def _parser() -> etree.HTMLParser:
    # lxml locks a parser while it parses, so threads can share this one.
    from lxml import etree
    return etree.HTMLParser(remove_comments=True, remove_pis=True, no_network=True,
                            default_doctype=False)


def parse_fragment(fragment: str) -> etree._Element:
    """The ``<body>`` element libxml2 builds from the fragment (as :func:`bounded` cuts it),
    comments and processing instructions left out. Linear in the fragment's length;
    elements nested deeper than 256 levels, and whatever follows them, are not kept."""
    from lxml import etree
    root = etree.fromstring("<html><body>" + bounded(fragment), _parser())
    body = root.find("body")
    return body if body is not None else etree.SubElement(root, "body")


def _walk(root: etree._Element) -> Iterator[tuple[str, etree._Element]]:
    """("start", element) and ("end", element) in document order, ``root`` included."""
    from lxml import etree
    events: Iterator[tuple[str, etree._Element]] = etree.iterwalk(root,
                                                                  events=("start", "end"))
    return events


def _prune(body: etree._Element) -> None:
    """Reduce a parsed fragment to the allow-list: dropped elements go with their content,
    other unknown tags leave their content in place, unknown attributes go."""
    from lxml import etree
    dropped = unknown = False
    for el in body.iter():
        tag = el.tag
        if tag in ALLOWED_TAGS:
            if el.attrib:
                _prune_attributes(el, _KEPT_ATTRIBUTES.get(tag, set()))
        elif el is not body:
            if tag in DROPPED_WITH_CONTENT:
                dropped = True
                continue
            unknown = True
            if isinstance(tag, str):
                # Renamed, as lxml takes no tag name it could not write ("a:b:c", say).
                el.tag = _UNWRAPPED
    if dropped:
        etree.strip_elements(body, *DROPPED_WITH_CONTENT, with_tail=False)
    if unknown:
        etree.strip_tags(body, _UNWRAPPED, etree.Comment, etree.ProcessingInstruction,
                         etree.Entity)


_UNWRAPPED = "recap-unwrapped"  # an element whose tags go and whose content stays


def _prune_attributes(el: etree._Element, allowed: set[str]) -> None:
    # nh3 checks no scheme in a cite: javascript: would stay.
    kept = [(name, value) for name, value in el.attrib.items() if name in allowed
            and (name != "cite" or _web_address(value))]
    if len(kept) < len(el.attrib):
        el.attrib.clear()  # not one by one: lxml takes no name it could not write ("a}")
        for name, value in kept:
            el.set(name, value)


def _web_address(url: str) -> bool:
    """Whether ``url`` is an absolute http or https address."""
    try:
        return urlsplit(url.strip()).scheme.lower() in {"http", "https"}
    except ValueError:  # such as an unclosed "[" where an IPv6 host would be
        return False


def _write(body: etree._Element, contents: Mapping[etree._Element, str] | None = None) -> str:
    """The children of ``body`` as HTML, escaped as nh3 writes it. ``contents`` gives
    elements whose content is written as the HTML given instead of their own."""
    out = [_escape_text(body.text or "")]
    append = out.append
    skipping: etree._Element | None = None
    for event, el in _walk(body):
        if skipping is not None:
            if el is not skipping:
                continue
            skipping = None  # its end: written below
        elif event == "start":
            if el is body:
                continue
            attrib = el.attrib
            if attrib:
                append(f"<{el.tag}" + "".join([f' {name}="{_escape_attribute(value)}"'
                                               for name, value in attrib.items()]) + ">")
            else:
                append(f"<{el.tag}>")
            if contents and el in contents:
                append(contents[el])
                skipping = el
            elif el.text:
                append(_escape_text(el.text))
            continue
        if el is body:
            continue
        if el.tag not in VOID_TAGS:
            append(f"</{el.tag}>")
        if el.tail:
            append(_escape_text(el.tail))
    return "".join(out)


def _remove(el: etree._Element) -> None:
    """Take an element and its content out of the tree, keeping the text after it."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail:
        previous = el.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _discard_after(node: etree._Element, body: etree._Element) -> None:
    """Remove everything that follows ``node``'s own content, up to the end of ``body``."""
    while node is not body:
        node.tail = None
        parent = node.getparent()
        if parent is None:
            return
        for sibling in list(node.itersiblings()):
            parent.remove(sibling)
        node = parent


def _texts(root: etree._Element) -> Iterator[tuple[etree._Element, bool]]:
    """Where text sits under ``root``, in document order: (element, True) for an
    element's own text, (element, False) for the text after it (``root``'s own aside)."""
    for event, el in _walk(root):
        if event == "start":
            yield el, True
        elif el is not root:
            yield el, False


def _get_text(el: etree._Element, own: bool) -> str:
    return (el.text if own else el.tail) or ""


def _set_text(el: etree._Element, own: bool, value: str) -> None:
    if own:
        el.text = value
    else:
        el.tail = value


def _cut_text_at(body: etree._Element, el: etree._Element, own: bool, value: str) -> None:
    """Make ``value`` the last text of ``body``: it replaces the text at (el, own), and
    everything after it goes, the elements around it closed where it ends."""
    _set_text(el, own, value)
    if own:
        for child in list(el):
            el.remove(child)
        _discard_after(el, body)
    else:
        parent = el.getparent()
        if parent is not None:
            for sibling in list(el.itersiblings()):
                parent.remove(sibling)
            _discard_after(parent, body)


def _has_read_also(body: etree._Element) -> bool:
    """Whether the marker is anywhere in the fragment's text (a quick look, in C)."""
    return READ_ALSO.search("".join(body.itertext())) is not None


def cut_at_read_also(body: etree._Element) -> bool:
    """Cut a parsed fragment where its "Read also" block starts; False when it has none."""
    if not _has_read_also(body):
        return False
    for el, own in _texts(body):
        text = _get_text(el, own)
        marker = READ_ALSO.search(text) if text else None
        if marker is not None:
            _cut_text_at(body, el, own, text[:marker.start()])
            return True
    return False


def links_after_read_also(body: etree._Element) -> Iterator[tuple[str, str]]:
    """The (href, text) of each link that starts within :data:`RELATED_WINDOW_CHARS`
    characters of text after the fragment's "Read also", in document order."""
    if not _has_read_also(body):
        return
    after: int | None = None  # characters of text since the marker
    for el, own in _texts(body):
        text = _get_text(el, own)
        if after is None:
            marker = READ_ALSO.search(text) if text else None
            if marker is not None:
                after = len(text) - marker.end()
            continue
        if after > RELATED_WINDOW_CHARS:
            return
        href = el.get("href") if own and el.tag == "a" else None
        if href is not None:
            yield href, element_text(el)
        after += len(text)


def element_text(el: etree._Element) -> str:
    """The text inside a parsed element, spaces folded: what :func:`html_to_text` gives for
    its markup (a space where a line breaks or a paragraph ends; scripts and the like,
    which nobody reads, left out)."""
    parts: list[str] = []
    append = parts.append
    skipping: etree._Element | None = None
    for event, node in _walk(el):
        if skipping is not None:
            if node is not skipping:
                continue
            skipping = None  # its end: the text after it is read again
        elif event == "start":
            tag = node.tag
            if tag in DROPPED_WITH_CONTENT or not isinstance(tag, str):
                skipping = node
            else:
                if tag == "br":
                    append(" ")
                if node.text:
                    append(node.text)
            continue
        elif node.tag == "p":
            append(" ")
        if node is not el and node.tail:
            append(node.tail)
    return " ".join("".join(parts).split())


def _clean(markup: str, base_url: str | None = None, *, images: bool = True) -> str:
    """nh3's allow-list over markup already pruned to it, relative URLs made absolute
    against ``base_url``, then (``images``) no tracking images."""
    relative: _Relative = ("rewrite_with_base", base_url) if base_url else "pass_through"
    try:
        cleaned = _nh3(markup, relative)
    except ValueError:
        # A base nh3's URL parser (a browser's rules) refuses, such as an entry's link
        # that Python reads as http ("http://ěě…127.0.0.1/"): relative URLs then lead
        # nowhere, so they go.
        cleaned = _nh3(markup, "deny")
    if images and "<img" in cleaned:
        cleaned = _drop_tracking_images(cleaned)
    return cleaned


_Relative = Literal["pass_through", "deny"] | tuple[Literal["rewrite_with_base"], str]


def _nh3(markup: str, relative: _Relative) -> str:
    return nh3.clean(markup, tags=ALLOWED_TAGS, clean_content_tags=DROPPED_WITH_CONTENT,
                     attributes=ALLOWED_ATTRIBUTES, url_schemes=URL_SCHEMES,
                     link_rel="noopener noreferrer", url_relative=relative,
                     strip_comments=True)


def _at_most_one_pixel(value: str | None) -> bool | None:
    """Whether a width or height is 0 or 1 pixel; None when it is not a plain number."""
    match = _PIXELS.fullmatch(value) if value is not None else None
    if match is None:
        return None
    digits = match[1].lstrip("0")
    return len(digits) <= 1 and int(digits or "0") <= 1


def _drop_tracking_images(cleaned: str) -> str:
    """Remove images of at most 1×1 pixel, which only exist to track the reader, and
    images left without a source."""
    body = parse_fragment(cleaned)
    gone = False
    for img in list(body.iter("img")):
        sizes = [s for s in (_at_most_one_pixel(img.get(k)) for k in ("width", "height"))
                 if s is not None]
        if (sizes and all(sizes)) or img.get("src") is None:
            _remove(img)
            gone = True
    return _write(body) if gone else cleaned


def sanitize_html(raw: str, *, base_url: str | None = None) -> str:
    """Return ``raw`` reduced to the allow-list: no scripts, styles, handlers or bad URLs."""
    if not raw.strip():
        return ""
    body = parse_fragment(raw)
    _prune(body)
    return _clean(_write(body), base_url).strip()


def html_to_text(fragment: str) -> str:
    """Plain text of an HTML fragment: tags removed, entities decoded, spaces folded."""
    if "<" not in fragment and "&" not in fragment:
        return " ".join(fragment.split())  # most titles and tags: nothing to strip
    return element_text(parse_fragment(fragment))


def cut_text(text: str, limit: int) -> str:
    """Cut plain text to at most ``limit`` characters on a word boundary, adding "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—") + "…"


def _cut(body: etree._Element, limit: int, shorten: Callable[[str, int], str] = cut_text,
         max_elements: int | None = None) -> None:
    """Cut a parsed fragment after ``limit`` characters of text, the text where it falls
    shortened by ``shorten`` (on a word boundary, with "…"), or before its element
    number ``max_elements`` + 1."""
    used = elements = 0
    previous: tuple[etree._Element, bool] = (body, True)
    for el, own in _texts(body):
        if own and el is not body:
            elements += 1
            if max_elements is not None and elements > max_elements:
                _cut_text_at(body, *previous, _get_text(*previous))
                return
        text = _get_text(el, own)
        if used + len(text) > limit:
            _cut_text_at(body, el, own, shorten(text, max(limit - used, 1)))
            return
        used += len(text)
        previous = (el, own)


def _sliced(text: str, limit: int) -> str:
    return text[:limit]


def truncate_html(fragment: str, limit: int) -> str:
    """Cut sanitized HTML to at most ``limit`` characters of text, on a word boundary."""
    # The markup is never shorter than its text, so a short fragment needs no measuring.
    if len(fragment) <= limit:
        return fragment
    body = parse_fragment(fragment)
    return fragment if len(element_text(body)) <= limit else _truncated(body, limit)


def _truncated(body: etree._Element, limit: int) -> str:
    """A parsed fragment of sanitized HTML cut to ``limit`` characters of text."""
    _cut(body, limit)
    _prune(body)
    # nh3 once more: the cut must not produce anything it would refuse. (Its images were
    # looked at already.)
    return _clean(_write(body), images=False).strip()


def summarize(raw: str, limit: int, *, base_url: str | None = None) -> str:
    """Sanitize feed HTML and cut it to ``limit`` characters of text."""
    return summarize_parsed(parse_fragment(raw), limit, base_url=base_url)[0]


def summarize_parsed(body: etree._Element, limit: int, *,
                     base_url: str | None = None) -> tuple[str, str]:
    """:func:`summarize` for a fragment already parsed (:func:`parse_fragment`), which it
    reduces to the allow-list in place; with the whole fragment's text (as
    :func:`html_to_text` gives it), which sanitizing leaves as it was."""
    _prune(body)
    text = element_text(body)
    # What follows twice the limit in text cannot reach the summary, and a summary needs
    # no more elements than it has characters (each holds some): neither is sanitized.
    most = limit + 100
    if len(text) > limit or sum(1 for _ in body.iter()) > most:
        _cut(body, 2 * limit + 1000, _sliced, max_elements=most)
    cleaned = _clean(_write(body), base_url).strip()
    if len(text) <= limit:
        return cleaned, text
    return _truncated(parse_fragment(cleaned), limit), text


def email_fragment(fragment: str, title: str) -> str:
    """Sanitized summary HTML as the email shows it, from one parse: cut where its "Read
    also" block starts (the entry lists those links on its own), without images (the
    entry's image is shown on its own, with its size), and with the entry's title as the
    text of any link whose whole text says nothing ("click here", "read more", …)."""
    body = parse_fragment(fragment)
    _prune(body)
    cut_at_read_also(body)
    for img in list(body.iter("img")):
        _remove(img)
    titled = {a: html.escape(bounded(title)) for a in body.iter("a")
              if element_text(a).casefold() in VAGUE_LINK_TEXTS}
    return _write(body, titled).strip()
