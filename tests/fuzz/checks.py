"""What every harness asserts about HTML that reaches an email or a page."""

from __future__ import annotations

from urllib.parse import urlsplit

from lxml import etree

from digest.core.sanitize import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, URL_SCHEMES

_URL_ATTRIBUTES = {"href", "src", "cite"}


def assert_safe_html(markup: str) -> None:
    """Only the allow-list's tags and attributes, as libxml2 reads them (premailer reads
    the email so): no script, style or frame, no handler, no URL of another scheme."""
    lowered = markup.lower()
    for bad in ("<script", "<style", "<iframe", "<svg", "<form", "<!--"):
        assert bad not in lowered, (bad, markup[:500])
    root = etree.fromstring("<html><body>" + markup, etree.HTMLParser())
    body = root.find("body")
    if body is None:
        return
    for el in body.iter():
        if el is body:
            continue
        assert el.tag in ALLOWED_TAGS, (el.tag, markup[:500])
        allowed = ALLOWED_ATTRIBUTES.get(el.tag, set()) | ({"rel"} if el.tag == "a" else set())
        for name, value in el.attrib.items():
            assert name in allowed and not name.lower().startswith("on"), (name, markup[:500])
            if name in _URL_ATTRIBUTES:
                scheme = urlsplit(value.strip()).scheme.lower()
                assert scheme in URL_SCHEMES | {""}, (name, value, markup[:500])


def text_length(markup: str) -> int:
    """The length of the text of some markup, spaces folded (no spaces added at tags)."""
    root = etree.fromstring("<html><body>" + markup, etree.HTMLParser())
    body = root.find("body")
    return len(" ".join("".join(body.itertext()).split())) if body is not None else 0
