"""Render an issue into the HTML and text of one email. Pure: data in, strings out.

The HTML is rendered and its CSS inlined once per issue. Values that differ per
recipient (unsubscribe URL, name) stand in it as placeholder tokens of
``[A-Za-z0-9_-]`` only — premailer percent-encodes anything else inside an href —
and are filled in afterwards by :meth:`RenderedIssue.personalize`.
"""

from __future__ import annotations

import html
import logging
import re
import textwrap
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from digest.grouping import Section, summary_line
from digest.sanitize import html_to_text

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
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
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


def _wrap(text: str, width: int = 72, indent: str = "") -> str:
    return "\n".join(textwrap.fill(p, width=width, initial_indent=indent,
                                   subsequent_indent=indent, break_long_words=False,
                                   break_on_hyphens=False)
                     for p in text.split("\n") if p.strip())


def long_date(value: datetime) -> str:
    """A date as the digest writes it: "23 November 2026"."""
    return f"{value.day} {value:%B %Y}"


class Renderer:
    """Jinja2 templates plus one reused premailer instance."""

    def __init__(self, templates: Path | None = None, *,
                 size_warning: int = 100_000) -> None:
        # Imported here: the commands that render nothing (most of them) start without
        # Jinja2 and premailer, which cost a tenth of a second to load.
        import jinja2
        import premailer
        self.env: jinja2.Environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates or template_dir())),
            autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(wrap=_wrap, plain=html_to_text, longdate=long_date,
                                neutral=neutralize)
        self.env.globals["ph"] = {k: v[0] for k, v in PLACEHOLDERS.items()}
        self.env.globals["ph_text"] = {k: v[1] for k, v in PLACEHOLDERS.items()}
        self.size_warning = size_warning
        # strip_important=False: the @media rules must keep their !important to beat the
        # inlined styles on a phone.
        self._premailer = premailer.Premailer(
            base_url=None, allow_network=False, disable_validation=True,
            cssutils_logging_level=logging.CRITICAL, keep_style_tags=False,
            strip_important=False, remove_classes=False,
            # Feed HTML reaches us without style attributes (the sanitizer drops them), so
            # there are no floated images to align, and our CSS never says "unset".
            align_floating_images=False, remove_unset_properties=False)
        self._lock = threading.Lock()  # premailer keeps state while it transforms

    def inline(self, markup: str) -> str:
        """Inline a document's CSS (media queries stay in a style block)."""
        with self._lock:
            result: str = self._premailer.transform(markup, pretty_print=False)
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
