"""Render an issue into the HTML and text of one email. Pure: data in, strings out.

The HTML is rendered and its CSS inlined once per issue. Values that differ per
recipient (unsubscribe URL, name) stand in it as placeholder tokens of
``[A-Za-z0-9_-]`` only — premailer percent-encodes anything else inside an href —
and are filled in afterwards by :meth:`RenderedIssue.personalize`.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import logging
import re
import sys
import textwrap
import threading
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import quote

from digest.core.feeds import READ_ALSO, Image
from digest.core.grouping import Placed, Section, keyword_key, summary_line
from digest.core.sanitize import IMG_TAG, cut_text, html_to_text, sanitize_html

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger(__name__)

PLACEHOLDER_PREFIX = "__DIGEST_"
# Each per-recipient value has a token for HTML (escaped) and one for text (raw).
PLACEHOLDERS = {
    "unsubscribe_url": ("__DIGEST_UNSUBSCRIBE_URL__", "__DIGEST_UNSUBSCRIBE_URL_TEXT__"),
    "preferences_url": ("__DIGEST_PREFERENCES_URL__", "__DIGEST_PREFERENCES_URL_TEXT__"),
    "name": ("__DIGEST_NAME__", "__DIGEST_NAME_TEXT__"),
}
_UNSUBSCRIBE_HTML, _UNSUBSCRIBE_TEXT = PLACEHOLDERS["unsubscribe_url"]
_PREFERENCES_HTML, _PREFERENCES_TEXT = PLACEHOLDERS["preferences_url"]
_NAME_HTML, _NAME_TEXT = PLACEHOLDERS["name"]
# Every placeholder token, in the order of Recipient.parts().
TOKENS = (_UNSUBSCRIBE_HTML, _UNSUBSCRIBE_TEXT, _PREFERENCES_HTML, _PREFERENCES_TEXT,
          _NAME_HTML, _NAME_TEXT)
_TOKEN = re.compile(r"(__DIGEST_[A-Z_]+?__)")
GMAIL_CLIP_BYTES = 102_000


def template_dir() -> Path:
    """Where the templates are: inside the installed package, or in the checkout."""
    package = Path(__file__).resolve().parent.parent  # digest/
    for candidate in (package / "templates", package.parent / "templates"):
        if (candidate / "email").is_dir():
            return candidate
    raise FileNotFoundError("templates folder not found beside the digest package")


@dataclass(frozen=True)
class Sender:
    """Who sends the digest, as the footer shows it."""

    name: str
    email: str
    postal_address: str


@dataclass(frozen=True)
class IssueContent:
    """Everything an issue's email shows, before rendering."""

    list_name: str
    list_title: str
    number: int
    subject: str
    date: datetime
    sections: Sequence[Section]
    sender: Sender
    view_url: str
    intro: str = ""
    language: str = "en"
    logo: Image | None = None
    # What each entry shows besides its title (ENTRY_PARTS), in the template's order.
    parts: tuple[str, ...] = ("image", "lead", "read_also", "keywords")
    lead_max_chars: int = 300
    keyword_url: str = ""  # the archive's keyword pages: this + the keyword's key
    top_story: int | None = None  # the entry an editor pinned: shown first, larger

    @cached_property
    def top_placed(self) -> Placed | None:
        """The pinned entry, if it is in this issue (or this segment's version of it)."""
        if self.top_story is None:
            return None
        return next((p for s in self.sections for p in s.entries
                     if p.item.id == self.top_story), None)

    def shown(self, section: Section) -> tuple[Placed, ...]:
        """A section's entries as listed under it: the top story is shown above instead."""
        if self.top_placed is None:
            return section.entries
        return tuple(p for p in section.entries if p.item.id != self.top_story)

    def keyword_link(self, keyword: str) -> str:
        """The archive page of the recaps under a keyword."""
        return self.keyword_url + quote(keyword_key(keyword), safe="")

    @property
    def entry_count(self) -> int:
        """Entries in the issue."""
        return sum(len(s.entries) for s in self.sections)

    @property
    def preheader(self) -> str:
        """The line inboxes show beside the subject."""
        return summary_line(self.sections)


class Recipient(NamedTuple):
    """Per-recipient values filled into a rendered issue (a named tuple: a send makes one
    per reader)."""

    unsubscribe_url: str
    preferences_url: str
    name: str = ""

    def values(self) -> dict[str, str]:
        """Placeholder token → value, escaped for the part it goes into."""
        return dict(zip(TOKENS, self.parts(), strict=True))

    def parts(self) -> tuple[str, str, str, str, str, str]:
        """The values of :data:`TOKENS`, in their order."""
        unsubscribe, preferences = self.unsubscribe_url, self.preferences_url
        greeting = self.name.strip() or "there"
        if _SPECIAL(unsubscribe + preferences + greeting) is None:  # links made of tokens
            return unsubscribe, unsubscribe, preferences, preferences, greeting, greeting
        escape = html.escape
        return (escape(unsubscribe), unsubscribe, escape(preferences), preferences,
                escape(greeting), greeting)


# What html.escape changes; a recipient's values seldom hold any (links never do).
_SPECIAL = re.compile("[&<>\"']").search


class _Filler:
    """A string split once at its placeholders, then joined with values per recipient."""

    def __init__(self, template: str) -> None:
        self.parts = _TOKEN.split(template)

    def fill(self, values: Mapping[str, str]) -> str:
        parts = self.parts.copy()
        for i in range(1, len(parts), 2):
            parts[i] = values.get(parts[i], parts[i])
        return "".join(parts)


@dataclass(frozen=True)
class RenderedIssue:
    """An issue's subject, inlined HTML and text, with placeholders for each recipient."""

    subject: str
    html: str
    text: str
    preheader: str
    warnings: tuple[str, ...] = field(default=())

    @cached_property
    def _fillers(self) -> tuple[_Filler, _Filler]:
        return _Filler(self.html), _Filler(self.text)

    def personalize(self, recipient: Recipient) -> tuple[str, str]:
        """The HTML and text one recipient gets."""
        values = recipient.values()
        html_filler, text_filler = self._fillers
        return html_filler.fill(values), text_filler.fill(values)

    @property
    def html_bytes(self) -> int:
        """Size of the HTML part as sent, in bytes."""
        return len(self.html.encode("utf-8"))


def neutralize(text: str) -> str:
    """Break any placeholder-looking text from a feed, so it is never filled in."""
    return text.replace(PLACEHOLDER_PREFIX, "__DIGEST\u200b_")


def _wrap(text: str, width: int = 72, indent: str = "", subsequent: str | None = None) -> str:
    """Wrap at ``width`` without breaking words (a URL stays whole, however long)."""
    lines = []
    for p in text.split("\n"):
        if not p.strip():
            continue
        rest = indent if subsequent is None else subsequent
        if "\t" in p or "\xa0" in p or "\r" in p:  # textwrap's own whitespace rules
            lines.append(textwrap.fill(p, width=width, initial_indent=indent,
                                       subsequent_indent=rest, break_long_words=False,
                                       break_on_hyphens=False))
        else:
            lines.append(_fill(p.split(), width, indent, rest))
    return "\n".join(lines)


def _fill(words: list[str], width: int, first: str, rest: str) -> str:
    """Greedy filling, as textwrap.fill does it for single-spaced text without breaking
    words or hyphens (a word longer than a line gets a line of its own), 10× sooner."""
    lines, line, used, empty = [], first, len(first), True
    for word in words:
        if empty:
            line, used, empty = line + word, used + len(word), False
        elif used + 1 + len(word) <= width:
            line, used = f"{line} {word}", used + 1 + len(word)
        else:
            lines.append(line)
            line, used = rest + word, len(rest) + len(word)
    lines.append(line)
    return "\n".join(lines)


TEXT_WIDTH = 78  # the plain-text part's longest line, URLs aside
COLUMN = 536     # the email's content column in pixels (600 less 2 × 32 of padding)
_SENTENCE_END = re.compile(r"[.!?؟。](?:[\"'”’»)]*)(?=\s)")
_VAGUE = re.compile(r"<a\b([^>]*)>\s*(click here|here|read more|more|link|this)\s*</a>",
                    re.IGNORECASE)


def sentence_cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at the end of a sentence (at a word,
    with "…", when no sentence ends in the first third)."""
    if len(text) <= limit:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text[:limit + 1]) if m.end() <= limit]
    if ends and ends[-1] >= limit // 3:
        return text[:ends[-1]]
    return cut_text(text, limit)


def fitted(image: Image, width: int = COLUMN) -> tuple[int, int] | None:
    """An image's width and height scaled to fit ``width``; None when its size is
    unknown (an email needs both, so such an image is left out)."""
    if not image.width or not image.height:
        return None
    shown = min(width, image.width)
    return shown, max(1, round(image.height * shown / image.width))


def email_summary(fragment: str, title: str) -> str:
    """Sanitized feed HTML as the email shows it: no images (the entry's image is shown
    on its own, with its size), no "Read also" block (the entry lists those links on its
    own), and no link whose whole text is "click here"."""
    marker = READ_ALSO.search(fragment)
    if marker is not None:
        fragment = sanitize_html(fragment[:marker.start()])  # closes what the cut left open
    fragment = IMG_TAG.sub("", fragment)
    return _VAGUE.sub(lambda m: f"<a{m[1]}>{html.escape(title)}</a>", fragment).strip()


class TextLinks:
    """The numbered link references of one entry in the plain-text part."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def ref(self, url: str) -> str:
        """The marker of ``url`` ("[3]"), numbering it on first use."""
        if url not in self.urls:
            self.urls.append(url)
        return f"[{self.urls.index(url) + 1}]"

    def block(self, indent: str = "  ") -> str:
        """The references, one per line, for the end of the entry."""
        return "\n".join(f"{indent}[{i}] {url}" for i, url in enumerate(self.urls, 1))


def underline(title: str, char: str = "=") -> str:
    """A heading and its underline, as long as the heading."""
    return f"{title}\n{char * min(len(title), TEXT_WIDTH)}"


def long_date(value: datetime) -> str:
    """A date as the digest writes it: "23 November 2026"."""
    return f"{value.day} {value:%B %Y}"


class _DeferredModule(types.ModuleType):
    """Stands in for a module in ``sys.modules`` until one of its attributes is asked for,
    then imports the real one and answers from it."""

    def __getattr__(self, attr: str) -> object:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def _defer_import(name: str) -> None:
    """Make ``import name`` cheap until something uses the module: premailer imports
    requests at its top for external stylesheets, which it never loads here
    (``allow_network=False``), and requests with charset_normalizer and urllib3 cost 0.1 s
    of every send. (The standard library's LazyLoader does not help on Python 3.11: the
    import statement itself reads the module's ``__spec__``, which loads it.) A module
    already imported is left alone."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:  # not installed: premailer's own import will say so
        return
    stand_in = _DeferredModule(name)
    stand_in.__spec__ = spec  # what importlib.util.find_spec(name) answers meanwhile
    sys.modules[name] = stand_in


class InlineCache(Protocol):
    """Where inlined documents are kept between runs, by what premailer was given."""

    def get(self, key: str) -> str | None:
        """The inlined document for ``key``, or None."""

    def put(self, key: str, value: str) -> None:
        """Keep the inlined document for ``key``."""


# strip_important=False: the @media rules must keep their !important to beat the inlined
# styles on a phone. Feed HTML reaches us without style attributes (the sanitizer drops
# them), so there are no floated images to align, and our CSS never says "unset".
PREMAILER_OPTIONS: Mapping[str, object] = {
    "base_url": None, "allow_network": False, "disable_validation": True,
    "cssutils_logging_level": logging.CRITICAL, "keep_style_tags": False,
    "strip_important": False, "remove_classes": False, "align_floating_images": False,
    "remove_unset_properties": False}
# Part of every inlined document's cache key: other options, other output.
_OPTIONS_KEY = repr(sorted(PREMAILER_OPTIONS.items()))


# What premailer inlines to load the rest of itself and cssutils (their first transform
# builds parsers and regular expressions).
WARM_UP_DOCUMENT = ("<html><head><style>p {color: #123456} @media (max-width: 600px) "
                    "{p {color: #654321 !important}}</style></head><body><p>x</p></body>"
                    "</html>")


class Renderer:
    """Jinja2 templates plus one reused premailer instance.

    ``bytecode_cache`` (a Jinja2 one) keeps compiled templates between runs, and
    ``inline_cache`` inlined documents: premailer's output depends only on what it is
    given, so a document inlined once (by a preview, say) is not inlined again, and a run
    whose documents are all in the cache never loads premailer.
    """

    def __init__(self, templates: Path | None = None, *, size_warning: int = 100_000,
                 bytecode_cache: jinja2.BytecodeCache | None = None,
                 inline_cache: InlineCache | None = None) -> None:
        # Imported here: the commands that render nothing (most of them) start without
        # Jinja2, which costs a twentieth of a second to load.
        import jinja2
        self.env: jinja2.Environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates or template_dir())),
            autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
            extensions=["jinja2.ext.do"], bytecode_cache=bytecode_cache)
        self.env.filters.update(wrap=_wrap, plain=html_to_text, longdate=long_date,
                                neutral=neutralize, sentences=sentence_cut,
                                email_summary=email_summary, underline=underline)
        self.env.globals.update(fitted=fitted, TextLinks=TextLinks, COLUMN=COLUMN,
                                TEXT_WIDTH=TEXT_WIDTH)
        self.env.globals["ph"] = {k: v[0] for k, v in PLACEHOLDERS.items()}
        self.env.globals["ph_text"] = {k: v[1] for k, v in PLACEHOLDERS.items()}
        self.size_warning = size_warning
        self._inline_cache = inline_cache
        self._premailer: Any = None  # made at the first document not in the cache
        self._lock = threading.Lock()  # premailer keeps state while it transforms

    def warm_up(self) -> None:
        """Compile the email's templates and make premailer now, ahead of the first
        issue (a long-running process that will render one, in its idle time)."""
        for name in ("email/issue.html", "email/issue.txt"):
            self.env.get_template(name)
        self._transform(WARM_UP_DOCUMENT)

    @property
    def inliner_loaded(self) -> bool:
        """Whether premailer is loaded and made (by an inlining or :meth:`warm_up`)."""
        return self._premailer is not None

    def _inliner(self) -> Any:
        if self._premailer is None:
            _defer_import("requests")
            import premailer
            self._premailer = premailer.Premailer(**PREMAILER_OPTIONS)
        return self._premailer

    def inline(self, markup: str) -> str:
        """Inline a document's CSS (media queries stay in a style block)."""
        cache = self._inline_cache
        if cache is None:
            return self._transform(markup)
        key = f"{_OPTIONS_KEY}\0{markup}"
        kept = cache.get(key)
        if kept is None:
            kept = self._transform(markup)
            cache.put(key, kept)
        return kept

    def _transform(self, markup: str) -> str:
        with self._lock:
            result: str = self._inliner().transform(markup, pretty_print=False)
        return result

    def render_issue(self, content: IssueContent) -> RenderedIssue:
        """Render the issue's email once; personalize afterwards per recipient."""
        context = {"issue": content, "sections": content.sections,
                   "preheader": content.preheader, "sender": content.sender}
        markup = self.env.get_template("email/issue.html").render(context)
        inlined = self.inline(markup)
        text = self.env.get_template("email/issue.txt").render(context)
        text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
        warnings = []
        size = len(inlined.encode("utf-8"))
        if size > self.size_warning:
            warnings.append(
                f"the HTML is {size / 1000:.0f} KB; Gmail clips messages near "
                f"{GMAIL_CLIP_BYTES // 1000} KB and hides the rest (unsubscribe link included)")
        for warning in warnings:
            log.warning("issue %s #%s: %s", content.list_name, content.number, warning)
        return RenderedIssue(content.subject, inlined, text, content.preheader,
                             tuple(warnings))
