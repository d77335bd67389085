"""Grouping entries into sections: pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from digest.core.grouping import (
    Item,
    Keyword,
    KeywordConfig,
    KeywordNames,
    canonical_keys,
    group,
    summary_line,
)

T0 = datetime(2026, 11, 23, 8, tzinfo=UTC)


def entry(n: int, *keywords: str, title: str | None = None, summary: str = "",
          days: int = 0) -> Item:
    return Item(n, title or f"Recap {n}", f"https://n.example/{n}", summary, keywords,
                T0 - timedelta(days=days))


def layout(sections: list) -> list[tuple[str, list[int]]]:  # type: ignore[type-arg]
    return [(s.title, [p.item.id for p in s.entries]) for s in sections]


def test_each_entry_lands_in_exactly_one_section_by_configured_order() -> None:
    items = [entry(1, "Iran", "Syria"), entry(2, "Syria"), entry(3, "Iran"),
             entry(4, "Ukraine", "Syria"), entry(5)]
    sections = group(items, KeywordConfig(order=("Syria", "Iran")))
    assert layout(sections) == [("Syria", [1, 2, 4]), ("Iran", [3]), ("More recaps", [5])]
    carried = {p.item.id: [k.name for k in p.keywords] for s in sections for p in s.entries}
    assert carried[1] == ["Iran", "Syria"]
    assert carried[4] == ["Ukraine", "Syria"]
    assert carried[5] == []
    assert sum(len(s.entries) for s in sections) == len(items)


def test_without_configured_order_the_largest_keyword_wins() -> None:
    items = [entry(1, "Economy", "Russia"), entry(2, "Russia"), entry(3, "Russia"),
             entry(4, "Economy")]
    sections = group(items, KeywordConfig())
    assert layout(sections) == [("Russia", [1, 2, 3]), ("Economy", [4])]


def test_keywords_are_trimmed_case_folded_and_named_once() -> None:
    items = [entry(1, " iran "), entry(2, "IRAN"), entry(3, "Iran"), entry(4, "iran")]
    for order in ((), ("Syria",)):
        # Whichever entry comes first: the mixed-case spelling, however rare.
        for ordered in (items, items[::-1]):
            [section] = group(ordered, KeywordConfig(order=order))
            assert section.title == "Iran" and len(section.entries) == 4
            assert {k.name for p in section.entries for k in p.keywords} == {"Iran"}
    [section] = group(items, KeywordConfig(order=("IRAN",)))
    assert section.title == "IRAN"  # the configured form wins


def test_a_keyword_is_named_by_the_configuration_else_its_best_spelling() -> None:
    def title(config: KeywordConfig, *tags: str) -> str:
        [section] = group([entry(i, t) for i, t in enumerate(tags)], config)
        return section.title

    plain = KeywordConfig()
    assert title(plain, "iran", "iran") == "Iran"                # lower case, capitalized
    assert title(plain, "middle east") == "Middle East"
    assert title(plain, "nato", "NATO") == "NATO"                # capitals before lower
    assert title(plain, "al-Qaeda", "AL-QAEDA", "AL-QAEDA") == "al-Qaeda"  # mixed first
    assert title(plain, "Kurds", "KURDs", "KURDs") == "KURDs"    # then the most used
    assert title(plain, "ırak") == "ırak"  # "Irak" would match something else
    assert title(plain, "سوريا") == "سوريا"
    aliased = KeywordConfig(order=("türkiye",), aliases={"Türkiye": "Turkey"},
                            rules={"israel": ("Golan",)})
    assert title(aliased, "TÜRKIYE", "türkiye") == "Turkey"     # the alias's target
    assert title(aliased, "israel", "ISRAEL") == "israel"        # the rule's own word
    assert [k for k in KeywordNames(aliased, ["Türkiye", "turkey"]).unique(
        ["Türkiye", "  TURKEY ", "Iran", ""])] == [Keyword("turkey", "Turkey"),
                                                   Keyword("iran", "Iran")]


def test_aliases_merge_keywords() -> None:
    items = [entry(1, "Türkiye"), entry(2, "Turkey"), entry(3, "سوريا"), entry(4, "Syria")]
    config = KeywordConfig(aliases={"Türkiye": "Turkey", "سوريا": "Syria"})
    assert sorted(layout(group(items, config))) == [("Syria", [3, 4]), ("Turkey", [1, 2])]


def test_editor_rules_place_untagged_entries_by_words() -> None:
    items = [entry(1, title="A quiet week on the Golan"),
             entry(2, summary="<p>The <b>Knesset</b> voted.</p>"),
             entry(3, title="Golanski is not a match"),
             entry(4, "Israel")]
    config = KeywordConfig(rules={"Israel": ("Golan", "Knesset")})
    assert layout(group(items, config)) == [("Israel", [1, 2, 4]), ("More recaps", [3])]


def test_sections_follow_order_then_size_and_untagged_come_last() -> None:
    items = [entry(1), entry(2, "B"), entry(3, "C"), entry(4, "C"), entry(5, "A")]
    sections = group(items, KeywordConfig(order=("A",), untagged_title="Elsewhere"))
    assert [s.title for s in sections] == ["A", "C", "B", "Elsewhere"]


def test_entries_in_a_section_are_newest_first() -> None:
    items = [entry(1, "X", days=3), entry(2, "X", days=1), entry(3, "X", days=2)]
    assert layout(group(items, KeywordConfig())) == [("X", [2, 3, 1])]


def test_summary_line_and_keyword_filter() -> None:
    items = [entry(i, "Syria") for i in range(4)] + [entry(10 + i, "Iran") for i in range(3)] \
        + [entry(20, "Yemen"), entry(21, "Iraq"), entry(22)]
    sections = group(items, KeywordConfig(order=("Syria", "Iran")))
    assert summary_line(sections) == "4 on Syria, 3 on Iran, 1 on Iraq and 2 more"
    assert summary_line(group([entry(1, "Iran")], KeywordConfig())) == "1 on Iran"


def test_a_segment_gets_only_its_sections_with_every_entry_tagged_for_them() -> None:
    # Entry 2 is tagged Syria and Iran; Syria is larger, so the full issue shows it there.
    items = [entry(1, "Syria"), entry(2, "Syria", "Iran"), entry(3, "Syria"),
             entry(4, "Yemen"), entry(5)]
    config = KeywordConfig(aliases={"Persia": "Iran"})
    assert layout(group(items, config))[0] == ("Syria", [1, 2, 3])
    wanted = canonical_keys(["PERSIA", " yemen "], config)
    assert wanted == {"iran", "yemen"}
    # A reader of Iran and Yemen still gets entry 2, under Iran; nothing untagged.
    assert layout(group(items, config, only=wanted)) == [("Iran", [2]), ("Yemen", [4])]
    assert group(items, config, only=frozenset({"turkey"})) == []
