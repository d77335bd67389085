"""Group entries into sections by keyword. Pure functions: entries in, sections out."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from digest.core.feeds import Image
from digest.core.sanitize import html_to_text
from digest.core.words import counted

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
class Keyword:
    """A keyword resolved: its section key and the one name it is shown under."""

    key: str
    name: str


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
    """An entry placed in its section, with every keyword it carries (tags after
    aliases, or the editor rules it matched), each once under its one name."""

    item: Item
    keywords: tuple[Keyword, ...] = ()


@dataclass(frozen=True)
class Section:
    """A titled run of entries; ``key`` is the keyword's matching form ("" for untagged)."""

    key: str
    title: str
    entries: tuple[Placed, ...]


def _aliases(config: KeywordConfig) -> dict[str, str]:
    """A configuration's aliases by the matching form of the alias."""
    return {keyword_key(k): _spelling(v) for k, v in config.aliases.items()}


def _canonical(raw: str, aliases: Mapping[str, str]) -> str:
    """The section key a raw keyword stands for: its matching form, or its alias's."""
    key = keyword_key(raw)
    target = aliases.get(key)
    return keyword_key(target) if target else key


def _spelling(raw: str) -> str:
    """A keyword as it may be shown: NFKC, trimmed, inner spaces folded (case kept)."""
    return " ".join(unicodedata.normalize("NFKC", raw).split())


def _capitalized(spelling: str, key: str) -> str:
    """An all-lower-case spelling with each word's first letter made a capital, unless
    that would change what it matches (Turkish "ırak" → "Irak" would)."""
    shown = " ".join(word[:1].upper() + word[1:] for word in spelling.split(" "))
    return shown if keyword_key(shown) == key else spelling


def _preferred(spellings: Counter[str], key: str) -> str:
    """The one name among the spellings entries use for a key (none configured).

    Written in mixed case first ("Iran", "al-Qaeda"), then all in capitals or in a
    script without case ("NATO", "سوريا"), then all in lower case, capitalized ("iran"
    → "Iran"); within each, the most used, then the first in code-point order. The order
    the entries came in never matters, so every page naming the key names it alike.
    """
    def kind(spelling: str) -> int:
        upper = any(c.isupper() for c in spelling)
        lower = any(c.islower() for c in spelling)
        return 0 if upper and lower else 2 if lower else 1

    best = min(spellings, key=lambda s: (kind(s), -spellings[s], s))
    return _capitalized(best, key) if kind(best) == 2 else best


class KeywordNames:
    """One name per keyword: raw tags resolved to section keys (aliases applied), and
    each key named once, the same in every place that shows it.

    A key's name is the one the configuration gives it, if any (its place in the
    keyword order, else an alias's target, else an editor rule's keyword), so the desk's
    own word wins; else the entries' preferred spelling (:func:`_preferred`). A
    configured name counts only if it matches its key, so an order naming an alias
    ("Türkiye" → "Turkey") still shows "Turkey".
    """

    def __init__(self, config: KeywordConfig, spellings: Iterable[str] = ()) -> None:
        self.aliases = _aliases(config)
        self.configured: dict[str, str] = {}
        for name in (*config.order, *config.aliases.values(), *config.rules):
            key, shown = _canonical(name, self.aliases), _spelling(name)
            if key and keyword_key(shown) == key:
                self.configured.setdefault(key, shown)
        self.seen: dict[str, Counter[str]] = {}
        for raw in spellings:
            self.add(raw)

    def key(self, raw: str) -> str:
        """The section key a raw keyword stands for ("" for a blank one)."""
        return _canonical(raw, self.aliases)

    def add(self, raw: str) -> str:
        """Count a spelling an entry uses; return its key."""
        spelling = _spelling(raw)
        own = spelling.casefold()  # keyword_key(raw), from the spelling already made
        target = self.aliases.get(own)
        if target:  # an alias's spelling never names its target
            return keyword_key(target)
        if own:
            self.seen.setdefault(own, Counter())[spelling] += 1
        return own

    def name(self, key: str) -> str:
        """The name of a key (its own form when nothing names it)."""
        if key in self.configured:
            return self.configured[key]
        seen = self.seen.get(key)
        return _preferred(seen, key) if seen else _capitalized(key, key)

    def of(self, raw: str) -> Keyword:
        """A raw keyword resolved: its key, and the key's name (from this spelling alone
        when no other names it)."""
        key, spelling = self.key(raw), _spelling(raw)
        if key in self.configured or key in self.seen or spelling.casefold() != key:
            return Keyword(key, self.name(key))
        return Keyword(key, _preferred(Counter([spelling]), key))

    def unique(self, raws: Iterable[str]) -> list[Keyword]:
        """Raw keywords resolved, each key once, in their first order (blanks dropped)."""
        found: dict[str, Keyword] = {}
        for raw in raws:
            keyword = self.of(raw)
            if keyword.key:
                found.setdefault(keyword.key, keyword)
        return list(found.values())


class _Keywords:
    """Resolves each entry's raw keywords (and, for an untagged one, the editor rules)
    to section keys, counting the spellings that name them."""

    def __init__(self, config: KeywordConfig) -> None:
        self.names = KeywordNames(config)
        self.order: dict[str, int] = {}
        for index, name in enumerate(config.order):
            self.order.setdefault(self.names.key(name), index)
        self.rules = [(self.names.key(k),
                       [re.compile(rf"(?<!\w){re.escape(w.strip())}(?!\w)", re.IGNORECASE)
                        for w in words if w.strip()])
                      for k, words in config.rules.items()]

    def keys_of(self, item: Item) -> list[str]:
        keys: list[str] = []
        for raw in item.keywords:
            key = self.names.add(raw)
            if key and key not in keys:
                keys.append(key)
        if keys:
            return keys
        text = f"{item.title} {html_to_text(item.summary_html)}"
        for key, patterns in self.rules:
            if key and any(p.search(text) for p in patterns) and key not in keys:
                keys.append(key)
        return keys


def key_finder(config: KeywordConfig) -> Callable[[Item], list[str]]:
    """The section keys an entry goes under, as grouping finds them: its tags after
    aliases, else the keywords whose rules its title or summary match."""
    return _Keywords(config).keys_of


def canonical_keys(keywords: Iterable[str], config: KeywordConfig) -> frozenset[str]:
    """The section keys a subscriber's keywords stand for (aliases applied)."""
    aliases = _aliases(config)
    return frozenset(key for k in keywords if (key := _canonical(k, aliases)))


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
    names: Mapping[str, str]  # key → its one name (KeywordNames), for every key carried
    aliases: Mapping[str, str]

    @classmethod
    def of(cls, items: Iterable[Item], config: KeywordConfig) -> Grouping:
        """Resolve each entry's keywords under the configuration, and name each key
        once from every spelling the entries use (:class:`KeywordNames`)."""
        resolver = _Keywords(config)
        keyed = tuple((item, tuple(resolver.keys_of(item))) for item in items)
        names = resolver.names
        carried = {key for _, keys in keyed for key in keys}
        return cls(config, keyed, resolver.order,
                   {key: names.name(key) for key in carried | resolver.order.keys()},
                   names.aliases)

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
        keyword (by how many entries carry it); it carries all its keywords along
        (which of them are "also in" sections depends on the sections an email shows:
        :meth:`digest.core.rendering.IssueContent.also_in`). Sections follow the
        configured order, then size; untagged entries come last.

        With ``only`` (a subscriber's keyword segment), just those sections are made,
        from the entries that carry one of those keywords.
        """
        # Each entry with the keys it may be placed under, and all it carries.
        keyed = tuple((item, keys, keys) for item, keys in self.keyed)
        if only is not None:
            keyed = tuple((item, kept, keys) for item, keys, _ in keyed
                          if (kept := tuple(k for k in keys if k in only)))
        sizes = Counter(key for _, keys, _ in keyed for key in keys)
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
        for item, keys, every in keyed:
            placed = Placed(item, tuple(Keyword(k, self.names[k]) for k in every))
            buckets.setdefault(home(keys), []).append(placed)

        def section_rank(key: str) -> tuple[int, int, int, str]:
            if key == UNTAGGED_KEY:
                return (1, unplaced, 0, "")
            return (0, self.order.get(key, unplaced), -len(buckets[key]),
                    self.names[key].casefold())

        sections = []
        for key in sorted(buckets, key=section_rank):
            entries = sorted(buckets[key], key=lambda p: (-p.item.dated_at.timestamp(),
                                                          p.item.title.casefold()))
            title = self.config.untagged_title if key == UNTAGGED_KEY else self.names[key]
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
        return counted(rest, "recap")
    if rest:
        return ", ".join(parts) + f" and {rest} more"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]

