"""Render an issue into the HTML and text of one email. Pure: data in, strings out.

The HTML is rendered and its CSS inlined once per issue; the values that differ per
recipient (unsubscribe and preferences links, name) are filled in afterwards by
:meth:`RenderedIssue.personalize`, at *slots* that only the templates can make.

A slot is a marker ``__DIGEST_<code><tag>__``: its code (one of :data:`SLOT_CODES`)
names the value, its tag of 22 characters is shared by every slot of one rendering, and
it is made of ``[A-Za-z0-9_-]`` only, which premailer leaves as it is inside an href.
Why no feed text can become a slot, whatever it holds:

1. The templates print their markers with a tag of 128 random bits drawn for this
   rendering (:mod:`secrets`). Feed text was written before the draw and cannot hold
   it, so splitting Jinja2's output at that tag's markers finds exactly the template's
   slots and, between them, literal text (the feed's included).
2. The slots are then marked again with a tag that is a hash of the rendering with its
   slots taken out: subject, HTML and text, each split at its slots (:func:`_tag`). For
   feed text to hold a marker with that tag it would have to contain the hash of a
   document that contains it: a fixed point of SHA-256, which nobody can find. Unlike
   the random tag, this one is the same for the same content, so premailer's input (the
   inline cache's key) is the same from one rendering of an issue to the next.
3. After inlining, the HTML is split at that tag once more (premailer's output is a
   function of its input, which the tag covers) and marked with the hash of the inlined
   rendering. The strings kept with an issue thus prove their own slots: a
   :class:`RenderedIssue` made again from them (a resumed send) reads the
   tag off the last marker of its HTML (or of its text), and takes it only if it is the
   hash of the rendering split at it (:func:`_find_slots`), which nothing else can be,
   as above. The templates print nothing from a feed after their last slot (the footer
   links), and every rendering checks that its strings read back to its own tag.

Filling in joins the literal pieces with one recipient's values and never reads the text
again, so a marker-shaped string from a feed (an old ``__DIGEST_NAME__``, a made-up or a
stale tag) is shown exactly as the feed wrote it. SendGrid's substitutions take the same
markers as keys (:attr:`RenderedIssue.tokens`): replacing every occurrence of each in the
subject and content, SendGrid meets only the slots.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import re
import secrets
import textwrap
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import quote

from digest.core.feeds import Image
from digest.core.grouping import UNTAGGED_KEY, Placed, Section, keyword_key, summary_line
from digest.core.sanitize import cut_text, email_fragment, html_to_text
from digest.core.words import counted
from digest.errors import DigestError

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger(__name__)

MARKER_PREFIX = "__DIGEST_"
# One code a per-recipient value and part, in the order of Recipient.parts():
# unsubscribe link (HTML, text), preferences link (HTML, text), name (HTML, text).
SLOT_CODES = "UuPpNn"
# What the templates call each value: ``ph`` in the HTML, ``ph_text`` in the text.
_SLOT_NAMES = {"unsubscribe_url": "Uu", "preferences_url": "Pp", "name": "Nn"}
_TAG_BYTES = 16  # 128 bits: 22 characters of URL-safe base64
_MARKER = re.compile(r"__DIGEST_([UuPpNn])([A-Za-z0-9_-]{22})__")
# Part of what a tag hashes: another use of the same hash never makes the same tags.
_TAG_CONTEXT = b"recap-digest slots 1\0"
GMAIL_CLIP_BYTES = 102_000


class SlotError(DigestError):
    """An email's per-recipient slots did not come through its rendering whole: it is
    not sent with a link or a name missing."""

    def __init__(self, list_name: str, number: int, problem: str) -> None:
        super().__init__(f"issue {number} of {list_name}: {problem}",
                         hint="this is a fault of the templates or of the inliner; "
                              "report it with the issue's feeds")
        self.list_name = list_name
        self.number = number


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

    @property
    def lines(self) -> tuple[str, ...]:
        """The footer's lines: the name, then the postal address, each once. An address
        that already names the sender (as the default does) is shown alone."""
        name, address = " ".join(self.name.split()), " ".join(self.postal_address.split())
        if not name or name.casefold() in address.casefold():
            return (address,) if address else ()
        return (name, address) if address else (name,)


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

    @cached_property
    def _listing(self) -> tuple[dict[int, str], frozenset[str]]:
        """The section each entry is listed under, and the keyword sections this email
        shows (a section whose only entry is the top story shows nothing)."""
        homes = {p.item.id: s.key for s in self.sections for p in s.entries}
        shown = frozenset(s.key for s in self.sections
                          if s.key != UNTAGGED_KEY and self.shown(s))
        return homes, shown

    def also_in(self, placed: Placed) -> tuple[str, ...]:
        """The names of the other sections of this email that an entry's keywords have:
        never one the email lacks (after the editor's moves, in a reader's segment)."""
        homes, shown = self._listing
        home = homes.get(placed.item.id)
        return tuple(k.name for k in placed.keywords if k.key != home and k.key in shown)

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

    def parts(self) -> tuple[str, str, str, str, str, str]:
        """The values of the slots, in the order of :data:`SLOT_CODES` (escaped for the
        HTML, as they are for the text)."""
        unsubscribe, preferences = self.unsubscribe_url, self.preferences_url
        greeting = self.name.strip() or "there"
        if not _special(unsubscribe + preferences + greeting):  # links never need it
            return unsubscribe, unsubscribe, preferences, preferences, greeting, greeting
        escape = html.escape
        return (escape(unsubscribe), unsubscribe, escape(preferences), preferences,
                escape(greeting), greeting)


def _special(value: str) -> bool:
    """Whether html.escape would change ``value``; a recipient's values seldom need it
    (links never do). Five substring tests, once per recipient: cheaper than a regular
    expression's search."""
    return "&" in value or "<" in value or ">" in value or '"' in value or "'" in value


def _marker(code: str, tag: str) -> str:
    """The marker of one slot."""
    return f"{MARKER_PREFIX}{code}{tag}__"


def _template_markers(tag: str) -> dict[str, dict[str, str]]:
    """The markers the templates print, as ``ph`` (HTML) and ``ph_text`` (text)."""
    return {"ph": {name: _marker(codes[0], tag) for name, codes in _SLOT_NAMES.items()},
            "ph_text": {name: _marker(codes[1], tag) for name, codes in _SLOT_NAMES.items()}}


class _Split(NamedTuple):
    """A document cut at its slots: the literal text around them, and each slot's code."""

    chunks: tuple[str, ...]  # one more than codes
    codes: str

    @classmethod
    def at(cls, document: str, tag: str) -> _Split:
        """``document`` cut at the markers of ``tag`` (and nowhere else)."""
        pieces = re.split(f"{MARKER_PREFIX}([{SLOT_CODES}]){re.escape(tag)}__", document)
        return cls(tuple(pieces[0::2]), "".join(pieces[1::2]))

    def marked(self, tag: str) -> str:
        """The document again, its slots marked with ``tag``."""
        out = [self.chunks[0]]
        for code, chunk in zip(self.codes, self.chunks[1:], strict=True):
            out += (_marker(code, tag), chunk)
        return "".join(out)


def _tag(subject: str, html_part: _Split, text_part: _Split) -> str:
    """The tag of a rendering: a hash of all of it but its markers (see the module's
    docstring for why no feed text can hold it)."""
    digest = hashlib.sha256(_TAG_CONTEXT)
    # Each piece after its length: one sequence of pieces gives one input, and the codes
    # say how many chunks follow them.
    for piece in (subject, html_part.codes, *html_part.chunks, text_part.codes,
                  *text_part.chunks):
        data = piece.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return base64.urlsafe_b64encode(digest.digest()[:_TAG_BYTES]).decode("ascii").rstrip("=")


class _Filler:
    """A document's literal pieces with a place for each slot's value, joined per
    recipient."""

    __slots__ = ("_pieces", "_slots")

    def __init__(self, split: _Split) -> None:
        self._pieces = [split.chunks[0]]
        slots = []
        for code, chunk in zip(split.codes, split.chunks[1:], strict=True):
            slots.append((len(self._pieces), SLOT_CODES.index(code)))
            self._pieces += ("", chunk)
        self._slots = tuple(slots)

    def fill(self, values: Sequence[str]) -> str:
        """The document with ``values`` (in :data:`SLOT_CODES` order) at its slots."""
        pieces = self._pieces.copy()
        for position, which in self._slots:
            pieces[position] = values[which]
        return "".join(pieces)


class _Slots(NamedTuple):
    """Where a rendering's per-recipient values go, and the markers that stand there."""

    tag: str
    html: _Filler
    text: _Filler


def _last_marker(document: str) -> re.Match[str] | None:
    """The last marker-shaped string of ``document``, looking back from its end."""
    end = len(document)
    while (start := document.rfind(MARKER_PREFIX, 0, end)) >= 0:
        found = _MARKER.match(document, start)
        if found is not None:
            return found
        end = start + len(MARKER_PREFIX) - 1  # "__DIGEST__DIGEST_": they may overlap
    return None


def _find_slots(subject: str, html_part: str, text_part: str) -> _Slots:
    """The slots of a rendering kept as strings: those of the tag on the last marker of
    its HTML (or of its text) if that tag is the rendering's own hash; else none, and
    all of it is literal text."""
    for part in (html_part, text_part):
        last = _last_marker(part)
        if last is None:
            continue
        tag = last[2]
        html_split, text_split = _Split.at(html_part, tag), _Split.at(text_part, tag)
        if _tag(subject, html_split, text_split) == tag:
            return _Slots(tag, _Filler(html_split), _Filler(text_split))
    html_split, text_split = _Split((html_part,), ""), _Split((text_part,), "")
    return _Slots(_tag(subject, html_split, text_split), _Filler(html_split),
                  _Filler(text_split))


@dataclass(frozen=True)
class RenderedIssue:
    """An issue's subject, inlined HTML and text, with slots for each recipient's values.

    Made by :meth:`Renderer.render_issue`, or again from the strings an issue keeps:
    the slots are found in them (see the module's docstring).
    """

    subject: str
    html: str
    text: str
    preheader: str
    warnings: tuple[str, ...] = field(default=())

    @cached_property
    def _slots(self) -> _Slots:
        return _find_slots(self.subject, self.html, self.text)

    @property
    def tokens(self) -> tuple[str, ...]:
        """The markers that stand at the slots, in the order of :meth:`Recipient.parts`
        (SendGrid's substitution keys)."""
        tag = self._slots.tag
        return tuple(_marker(code, tag) for code in SLOT_CODES)

    def substitutions(self, recipient: Recipient) -> dict[str, str]:
        """Marker → value, for one recipient: what SendGrid puts in place of each."""
        return dict(zip(self.tokens, recipient.parts(), strict=True))

    def personalize(self, recipient: Recipient) -> tuple[str, str]:
        """The HTML and text one recipient gets."""
        slots, values = self._slots, recipient.parts()
        return slots.html.fill(values), slots.text.fill(values)

    @property
    def html_bytes(self) -> int:
        """Size of the HTML part as sent, in bytes."""
        return len(self.html.encode("utf-8"))


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
    words or hyphens (a word longer than a line gets a line of its own), without
    textwrap's chunking by regular expression, which costs far more than this loop."""
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


def sentence_cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at the end of a sentence (at a word,
    with "…", when no sentence ends in the first third)."""
    if len(text) <= limit:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text[:limit + 1]) if m.end() <= limit]
    if ends and ends[-1] >= limit // 3:
        return text[:ends[-1]]
    return cut_text(text, limit)


class Size(NamedTuple):
    """An image's size as the email shows it, in CSS pixels."""

    width: int
    height: int


def fitted(image: Image, width: int = COLUMN) -> Size | None:
    """An image's width and height scaled to fit ``width``; None when its size is
    unknown (an email needs both, so such an image is left out)."""
    if not image.width or not image.height:
        return None
    shown = min(width, image.width)
    return Size(shown, max(1, round(image.height * shown / image.width)))


def email_summary(fragment: str, title: str) -> str:
    """Sanitized feed HTML as the email shows it: no images (the entry's image is shown
    on its own, with its size), no "Read also" block (the entry lists those links on its
    own), and the title as the text of a link whose whole text is "click here". One
    parse (:func:`digest.core.sanitize.email_fragment`), linear in the fragment."""
    return email_fragment(fragment, title)


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
        # Jinja2, whose import would be a sizeable part of their start.
        import jinja2
        self.env: jinja2.Environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates or template_dir())),
            autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
            extensions=["jinja2.ext.do"], bytecode_cache=bytecode_cache)
        self.env.filters.update(wrap=_wrap, plain=html_to_text, longdate=long_date,
                                sentences=sentence_cut,
                                email_summary=email_summary, underline=underline)
        self.env.globals.update(fitted=fitted, TextLinks=TextLinks, COLUMN=COLUMN,
                                TEXT_WIDTH=TEXT_WIDTH, counted=counted)
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
        """Render the issue's email once; personalize afterwards per recipient.

        Each step of the module docstring's three is marked below.
        """
        drawn = secrets.token_urlsafe(_TAG_BYTES)  # 1: the templates' own markers
        context = {"issue": content, "sections": content.sections,
                   "preheader": content.preheader, "sender": content.sender,
                   **_template_markers(drawn)}
        markup = _Split.at(self.env.get_template("email/issue.html").render(context), drawn)
        text = self.env.get_template("email/issue.txt").render(context)
        text_split = _Split.at(re.sub(r"\n{3,}", "\n\n", text).strip() + "\n", drawn)
        given = _tag(content.subject, markup, text_split)  # 2: the same for the same issue
        inlined = _Split.at(self.inline(markup.marked(given)), given)
        if inlined.codes != markup.codes:
            raise SlotError(content.list_name, content.number,
                            f"inlining changed the slots from {markup.codes!r} to "
                            f"{inlined.codes!r}")
        tag = _tag(content.subject, inlined, text_split)  # 3: what the kept strings prove
        html_part = inlined.marked(tag)
        warnings = []
        size = len(html_part.encode("utf-8"))
        if size > self.size_warning:
            warnings.append(
                f"the HTML is {size / 1000:.0f} KB; Gmail clips messages near "
                f"{GMAIL_CLIP_BYTES // 1000} KB and hides the rest (unsubscribe link included)")
        for warning in warnings:
            log.warning("issue %s #%s: %s", content.list_name, content.number, warning)
        rendered = RenderedIssue(content.subject, html_part, text_split.marked(tag),
                                 content.preheader, tuple(warnings))
        if rendered._slots.tag != tag:
            # Made again from its strings, the issue would have no slots: the template
            # printed something that looks like a marker after its last slot.
            raise SlotError(content.list_name, content.number,
                            "its last slot is not its last marker (the templates must "
                            "print no entry text after their footer)")
        return rendered
