"""Rendering an issue: golden files, per-recipient slots, phone layout, size warning."""

from __future__ import annotations

import os
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from digest.core.feeds import Image, parse_feed
from digest.core.grouping import Item, KeywordConfig, group
from digest.core.rendering import (
    IssueContent,
    Recipient,
    RenderedIssue,
    Renderer,
    Sender,
)
from digest.settings import load_settings

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("DIGEST_REGEN_GOLDEN") == "1"
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
READER = Recipient("https://digest.example/u/TOKEN.sig", "https://digest.example/p/TOKEN.sig",
                   "Alice <&> Reader")


def render_case(case: str, renderer: Renderer) -> RenderedIssue:
    folder = GOLDEN / case
    settings = load_settings(folder / "config.toml", env={}).settings
    feed = parse_feed((folder / "feed.xml").read_bytes(), url="https://news.example/feed.xml")
    items = [Item(i, e.title, e.link, e.summary_html, e.keywords, e.published_at or NOW,
                  "Golden Desk", e.author, e.lead, e.image, e.related)
             for i, e in enumerate(feed.entries, 1)]
    look: dict[str, object] = {}
    if (folder / "look.toml").exists():
        raw = tomllib.loads((folder / "look.toml").read_text(encoding="utf-8"))
        look = {"language": raw.get("language", "en"), "parts": tuple(raw["parts"]),
                "lead_max_chars": raw.get("lead_max_chars", 300)}
        if raw.get("logo_url"):
            look["logo"] = Image(raw["logo_url"], raw["logo_alt"], raw["logo_width"],
                                 raw["logo_height"])
    sections = group(items, KeywordConfig.from_settings(
        settings.keyword_order, settings.keyword_aliases, settings.keyword_rules,
        settings.untagged_section))
    content = IssueContent("weekly", "The Weekly Recap", 7, "The Weekly Recap: Syria, Iran",
                           NOW, sections,
                           Sender(settings.from_name, "desk@news.example",
                                  settings.postal_address),
                           "https://digest.example/archive/weekly/7",
                           keyword_url="https://digest.example/archive/weekly/k/",
                           **look)  # type: ignore[arg-type]
    return renderer.render_issue(content)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.fixture(scope="module")
def rendered(renderer: Renderer) -> RenderedIssue:
    return render_case("basic", renderer)


@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
def test_golden_files(case: str, renderer: Renderer) -> None:
    html, text = render_case(case, renderer).personalize(READER)
    expected_html, expected_txt = GOLDEN / case / "expected.html", GOLDEN / case / "expected.txt"
    if REGENERATE:
        expected_html.write_text(html, encoding="utf-8")
        expected_txt.write_text(text, encoding="utf-8")
    assert html == expected_html.read_text(encoding="utf-8"), \
        "rendering changed; if on purpose, rerun with DIGEST_REGEN_GOLDEN=1 and review the diff"
    assert text == expected_txt.read_text(encoding="utf-8")


def test_slots_survive_inlining_and_are_filled_per_recipient(
        rendered: RenderedIssue) -> None:
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", token) for token in rendered.tokens)
    unsubscribe, unsubscribe_text = rendered.tokens[:2]
    assert f'href="{unsubscribe}"' in rendered.html and rendered.html.count(unsubscribe) == 1
    assert rendered.text.count(unsubscribe_text) == 1
    html, text = rendered.personalize(READER)
    assert 'href="https://digest.example/u/TOKEN.sig"' in html
    assert "Hi Alice &lt;&amp;&gt; Reader," in html          # escaped in HTML
    assert "Hi Alice <&> Reader," in text                   # as is in text
    assert "Unsubscribe: https://digest.example/u/TOKEN.sig" in text
    # A placeholder-looking string from a feed is shown as the feed wrote it.
    feeds_own = "Nobody is called __DIGEST_NAME__ here."
    assert feeds_own in html and feeds_own in text
    assert "__DIGEST_" not in html.replace(feeds_own, "")
    assert "__DIGEST_" not in text.replace(feeds_own, "")
    assert html.count("Alice") == 1 and text.count("Alice") == 1
    other, _ = rendered.personalize(Recipient("https://x/u/2", "https://x/p/2", ""))
    assert "Hi there," in other and "https://x/u/2" in other


def test_the_same_issue_renders_to_the_same_strings(renderer: Renderer) -> None:
    """The slots' markers are made from the content: a preview and the send give
    premailer the same document (the inline cache's key) and keep the same strings."""
    first, second = render_case("basic", renderer), render_case("basic", renderer)
    assert (first.html, first.text, first.tokens) == (second.html, second.text,
                                                      second.tokens)
    kept: dict[str, str] = {}

    class Cache:
        def get(self, key: str) -> str | None:
            return kept.get(key)

        def put(self, key: str, value: str) -> None:
            kept[key] = value

    render_case("basic", Renderer(inline_cache=Cache()))
    again = Renderer(inline_cache=Cache())
    assert render_case("basic", again).html == first.html
    assert not again.inliner_loaded  # the inlined email came from the cache


def test_a_rendering_made_again_from_its_strings_finds_its_slots(
        rendered: RenderedIssue) -> None:
    kept = RenderedIssue(rendered.subject, rendered.html, rendered.text, "")
    assert kept.tokens == rendered.tokens
    assert kept.personalize(READER) == rendered.personalize(READER)
    # Strings changed after rendering no longer prove their slots: nothing is filled in.
    changed = RenderedIssue(rendered.subject, rendered.html.replace("Golden", "Gilded"),
                            rendered.text, "")
    html, text = changed.personalize(READER)
    assert "TOKEN.sig" not in html + text and "Alice" not in html + text
    assert changed.tokens != rendered.tokens and rendered.tokens[0] in html


def test_email_layout(rendered: RenderedIssue) -> None:
    html = rendered.html
    assert 'width="600"' in html and "max-width:600px" in html.replace(" ", "")
    media = html[html.index("@media"):]
    assert "width: 100% !important" in media  # phone layout beats the inlined width
    assert html.count('dir="auto"') >= 4
    assert "View in browser" in html and "https://digest.example/archive/weekly/7" in html
    assert "1 Golden Street" in html and "The Golden Desk" in html
    assert "<script" not in html and "t.example/p.gif" not in html
    assert rendered.preheader == "2 on Syria, 1 on Iran and 1 more"
    assert "2 on Syria, 1 on Iran and 1 more" in html.split("<table", 1)[0]
    # Text part comes from the same data.
    assert "Syria (2)\n---------\n" in rendered.text
    assert "More recaps (1)\n---------------\n" in rendered.text
    assert "Also in: Iran" in rendered.text


def test_size_warning_when_html_nears_gmail_clip(renderer: Renderer) -> None:
    small = Renderer(size_warning=1_000)
    assert render_case("basic", small).warnings
    assert "Gmail" in render_case("basic", small).warnings[0]
    assert not render_case("basic", renderer).warnings


def test_a_document_inlined_before_loads_neither_premailer_nor_requests() -> None:
    # premailer imports requests (with charset_normalizer and urllib3) at its top: only
    # a process with a document not in the inline cache pays for them.
    import json
    import subprocess
    import sys
    code = ("import json, sys\nfrom digest.core.rendering import Renderer\n"
            "class Cache(dict):\n    def put(self, key, value): self[key] = value\n"
            "cache = Cache(json.load(sys.stdin))\n"
            "html = Renderer(inline_cache=cache).inline('<html><head><style>p {color: "
            "#123456}</style></head><body><p>x</p></body></html>')\n"
            "print(json.dumps([cache, html, sorted(m for m in ('premailer', 'requests', "
            "'urllib3') if m in sys.modules)]))")

    def run(cache: dict[str, str]) -> list[Any]:
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(cache),
                              capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    cache, html, loaded = run({})
    assert "color:#123456" in html and loaded == ["premailer", "requests", "urllib3"]
    assert run(cache)[1:] == [html, []]
