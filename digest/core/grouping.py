"""Group entries into sections by keyword. Pure functions: entries in, sections out."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from digest.core.feeds import Image
from digest.core.sanitize import html_to_text

UNTAGGED_KEY = ""


def keyword_key(keyword: str) -> str:
    """The matching form of a keyword: NFKC, trimmed, inner spaces folded, case-folded."""
    return " ".join(unicodedata.normalize("NFKC", keyword).split()).casefold()


@dataclass(frozen=True)
class KeywordConfig:
    """How keywords become sections: order, aliases and editor rules."""

    order: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    untagged_title: str = "More recaps"

    @classmethod
    def from_settings(cls, order: Sequence[str], aliases: Mapping[str, str],
                      rules: Mapping[str, Sequence[str]], untagged_title: str
                      ) -> KeywordConfig:
        """Build from the settings' plain values."""
        return cls(tuple(order), dict(aliases), {k: tuple(v) for k, v in rules.items()},
                   untagged_title)


@dataclass(frozen=True)
class Item:
    """An entry as grouping and rendering see it."""

    id: int
    title: str
    link: str | None
    summary_html: str
    keywords: tuple[str, ...]
    dated_at: datetime
    source: str = ""
    author: str | None = None
    lead: str = ""
    image: Image | None = None
    related: tuple[tuple[str, str], ...] = ()  # "Read also": (title, url)


@dataclass(frozen=True)
class Placed:
    """An entry placed in its section, with the other sections it belongs to."""

    item: Item
    also_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """A titled run of entries; ``key`` is the keyword's matching form ("" for untagged)."""

    key: str
    title: str
    entries: tuple[Placed, ...]


def _aliases(config: KeywordConfig) -> dict[str, str]:
    """A configuration's aliases by the matching form of the alias."""
    return {keyword_key(k): v.strip() for k, v in config.aliases.items()}


def _canonical(raw: str, aliases: Mapping[str, str]) -> str:
    """The section key a raw keyword stands for: its matching form, or its alias's."""
    key = keyword_key(raw)
    target = aliases.get(key)
    return keyword_key(target) if target else key


class _Keywords:
    """Resolves raw keywords to (key, display) under the configuration."""

    def __init__(self, config: KeywordConfig) -> None:
        self.aliases = _aliases(config)
        self.order: dict[str, int] = {}
        self.display: dict[str, str] = {}
        for index, name in enumerate(config.order):
            key = _canonical(name, self.aliases)
            self.order.setdefault(key, index)
            self.display.setdefault(key, " ".join(name.split()))
        self.rules = [(_canonical(k, self.aliases), " ".join(k.split()),
                       [re.compile(rf"(?<!\w){re.escape(w.strip())}(?!\w)", re.IGNORECASE)
                        for w in words if w.strip()])
                      for k, words in config.rules.items()]

    def resolve(self, raw: str) -> str:
        key = keyword_key(raw)
        target = self.aliases.get(key)
        if target:
            key = keyword_key(target)
            self.display.setdefault(key, target)
        self.display.setdefault(key, " ".join(unicodedata.normalize("NFKC", raw).split()))
        return key

    def keys_of(self, item: Item) -> list[str]:
        keys: list[str] = []
        for raw in item.keywords:
            key = self.resolve(raw)
            if key and key not in keys:
                keys.append(key)
        if keys:
            return keys
        text = f"{item.title} {html_to_text(item.summary_html)}"
        for key, display, patterns in self.rules:
            if any(p.search(text) for p in patterns) and key not in keys:
                self.display.setdefault(key, display)
                keys.append(key)
        return keys


def canonical_keys(keywords: Iterable[str], config: KeywordConfig) -> frozenset[str]:
    """The section keys a subscriber's keywords stand for (aliases applied)."""
    aliases = _aliases(config)
    return frozenset(key for k in keywords if (key := _canonical(k, aliases)))


def keys_carried(items: Iterable[Item], config: KeywordConfig) -> frozenset[str]:
    """Every section key some entry carries (tags, aliases and editor rules applied),
    whether or not the full issue gives it a section of its own."""
    return Grouping.of(items, config).keys_carried


@dataclass(frozen=True)
class Grouping:
    """Entries with their resolved keywords: resolved once (tags, aliases, editor rules),
    then cut into the full issue's sections or any keyword segment's.

    Resolving is the costly part of grouping (the rules read each untagged entry's
    text); the sections of the issue and of every segment are derived from it.
    """

    config: KeywordConfig
    keyed: tuple[tuple[Item, tuple[str, ...]], ...]
    order: Mapping[str, int]
    display: Mapping[str, str]
    aliases: Mapping[str, str]

    @classmethod
    def of(cls, items: Iterable[Item], config: KeywordConfig) -> Grouping:
        """Resolve each entry's keywords under the configuration."""
        resolver = _Keywords(config)
        keyed = tuple((item, tuple(resolver.keys_of(item))) for item in items)
        return cls(config, keyed, resolver.order, resolver.display, resolver.aliases)

    @property
    def keys_carried(self) -> frozenset[str]:
        """Every section key some entry carries, whether or not the full issue gives it
        a section of its own."""
        return frozenset(key for _, keys in self.keyed for key in keys)

    def canonical_keys(self, keywords: Iterable[str]) -> frozenset[str]:
        """The section keys a subscriber's keywords stand for (aliases applied)."""
        return frozenset(key for k in keywords if (key := _canonical(k, self.aliases)))

    def sections(self, only: frozenset[str] | None = None) -> list[Section]:
        """Place each entry in exactly one section and order the sections.

        An entry goes to its first keyword in the configured order, else to its largest
        keyword (by how many entries carry it), and lists its other keywords as "also
        in". Sections follow the configured order, then size; untagged entries come last.

        With ``only`` (a subscriber's keyword segment), just those sections are made,
        from the entries that carry one of those keywords.
        """
        keyed = self.keyed
        if only is not None:
            keyed = tuple((item, kept) for item, keys in keyed
                          if (kept := tuple(k for k in keys if k in only)))
        sizes = Counter(key for _, keys in keyed for key in keys)
        unplaced = len(self.order) + 1

        def home(keys: tuple[str, ...]) -> str:
            if not keys:
                return UNTAGGED_KEY
            ranked = [k for k in keys if k in self.order]
            if ranked:
                return min(ranked, key=lambda k: self.order[k])
            # Largest first; among equals, the entry's own first tag.
            return max(keys, key=lambda k: (sizes[k], -keys.index(k)))

        buckets: dict[str, list[Placed]] = {}
        for item, keys in keyed:
            chosen = home(keys)
            also = tuple(self.display[k] for k in keys if k != chosen)
            buckets.setdefault(chosen, []).append(Placed(item, also))

        def section_rank(key: str) -> tuple[int, int, int, str]:
            if key == UNTAGGED_KEY:
                return (1, unplaced, 0, "")
            return (0, self.order.get(key, unplaced), -len(buckets[key]),
                    self.display[key].casefold())

        sections = []
        for key in sorted(buckets, key=section_rank):
            entries = sorted(buckets[key], key=lambda p: (-p.item.dated_at.timestamp(),
                                                          p.item.title.casefold()))
            title = self.config.untagged_title if key == UNTAGGED_KEY else self.display[key]
            sections.append(Section(key, title, tuple(entries)))
        return sections


def group(items: Iterable[Item], config: KeywordConfig,
          only: frozenset[str] | None = None) -> list[Section]:
    """Place each entry in exactly one section and order the sections (one
    :class:`Grouping`, cut once; see :meth:`Grouping.sections`)."""
    return Grouping.of(items, config).sections(only)


def summary_line(sections: Sequence[Section], *, most: int = 3) -> str:
    """A phrase like "4 on Syria, 3 on Iran, 2 on Turkey and 5 more recaps"."""
    named = [s for s in sections if s.key != UNTAGGED_KEY]
    parts = [f"{len(s.entries)} on {s.title}" for s in named[:most]]
    rest = sum(len(s.entries) for s in sections) - sum(len(s.entries) for s in named[:most])
    if not parts:
        return f"{rest} recap{'s' if rest != 1 else ''}"
    if rest:
        return ", ".join(parts) + f" and {rest} more"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]

