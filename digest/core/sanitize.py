"""Make feed HTML safe for an email and a web page: sanitize, cut, or reduce to text."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import nh3

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
# Elements whose content goes too, not only the tags.
DROPPED_WITH_CONTENT = {"script", "style", "iframe", "form", "object", "embed", "noscript",
                        "template", "svg", "math", "select", "textarea", "button", "title"}

IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)  # an <img> tag, whole
_DIMENSION = re.compile(r'\b(width|height)="\s*(\d+)(?:px)?\s*"', re.IGNORECASE)
_SPACE = re.compile(r"\s+")
VOID_TAGS = {"br", "img", "hr"}


def _drop_tracking_images(cleaned: str) -> str:
    """Remove images of at most 1×1 pixel, which only exist to track the reader."""

    def keep(match: re.Match[str]) -> str:
        dims = {k.lower(): int(v) for k, v in _DIMENSION.findall(match.group(0))}
        if dims and all(v <= 1 for v in dims.values()):
            return ""
        if 'src="' not in match.group(0):
            return ""
        return match.group(0)

    return IMG_TAG.sub(keep, cleaned)


def sanitize_html(raw: str, *, base_url: str | None = None) -> str:
    """Return ``raw`` reduced to the allow-list: no scripts, styles, handlers or bad URLs."""
    if not raw.strip():
        return ""
    cleaned = nh3.clean(
        raw,
        tags=ALLOWED_TAGS,
        clean_content_tags=DROPPED_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        url_relative=("rewrite_with_base", base_url) if base_url else "pass_through",
        strip_comments=True,
    )
    return _drop_tracking_images(cleaned).strip()


def html_to_text(fragment: str) -> str:
    """Plain text of an HTML fragment: tags removed, entities decoded, spaces folded."""
    if "<" not in fragment and "&" not in fragment:
        return _SPACE.sub(" ", fragment).strip()  # most titles and tags: nothing to strip
    stripped = nh3.clean(fragment.replace("<br", " <br").replace("</p>", " </p>"),
                         tags=set(), clean_content_tags=DROPPED_WITH_CONTENT)
    return _SPACE.sub(" ", html.unescape(stripped)).strip()


def cut_text(text: str, limit: int) -> str:
    """Cut plain text to at most ``limit`` characters on a word boundary, adding "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—") + "…"


class _Truncator(HTMLParser):
    """Copy sanitized HTML until ``limit`` characters of text, then close what is open."""

    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=True)
        self.limit = limit
        self.used = 0
        self.out: list[str] = []
        self.open: list[str] = []
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        rendered = "".join(
            f' {k}="{html.escape(v or "", quote=True)}"' for k, v in attrs)
        self.out.append(f"<{tag}{rendered}>")
        if tag not in VOID_TAGS:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.done or tag in VOID_TAGS:
            return
        if tag in self.open:
            while self.open:
                last = self.open.pop()
                self.out.append(f"</{last}>")
                if last == tag:
                    break

    def handle_data(self, data: str) -> None:
        if self.done:
            return
        room = self.limit - self.used
        if len(data) <= room:
            self.out.append(html.escape(data, quote=False))
            self.used += len(data)
            return
        self.out.append(html.escape(cut_text(data, max(room, 1)), quote=False))
        self.done = True

    def result(self) -> str:
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.open))


def truncate_html(fragment: str, limit: int) -> str:
    """Cut sanitized HTML to at most ``limit`` characters of text, on a word boundary."""
    # The markup is never shorter than its text, so a short fragment needs no measuring.
    if len(fragment) <= limit or len(html_to_text(fragment)) <= limit:
        return fragment
    parser = _Truncator(limit)
    parser.feed(fragment)
    parser.close()
    # Run the allow-list once more: the cut must not produce anything it would refuse.
    return sanitize_html(parser.result())


def summarize(raw: str, limit: int, *, base_url: str | None = None) -> str:
    """Sanitize feed HTML and cut it to ``limit`` characters of text."""
    return truncate_html(sanitize_html(raw, base_url=base_url), limit)
