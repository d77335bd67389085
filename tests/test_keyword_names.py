"""One name per keyword, everywhere a reader meets it: the email's sections, subject,
preheader, intro, "Also in" and keyword links, the archive's keyword pages, and the
preferences and subscribe pages — on the bundled sample feeds (Arabic and Turkish tags
among them), with the demo desk's aliases and a feed that spells Iran three ways."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage
from urllib.parse import quote, unquote

import lxml.html
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from digest.core.grouping import keyword_key
from digest.edges.demo import SAMPLE_FEEDS, render_sample
from digest.edges.web.app import create_app
from digest.services.feeds.collect import add_feed
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.subscriber_models import Subscriber, Subscription
from digest.services.transports.locmem import LocmemTransport
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.feedserver import FeedServer, rss
from tests.test_send import recap

ALIASES = {"Türkiye": "Turkey", "سوريا": "Syria", "إيران": "Iran", "لبنان": "Lebanon",
           "العراق": "Iraq", "اليمن": "Yemen"}
# Spellings no reader should meet: an alias's own form, or a case nobody chose.
NEVER_SHOWN = ("Türkiye", "TÜRKIYE", "سوريا", "إيران", "لبنان", "العراق", "اليمن", "IRAN",
               "iran")


@pytest.fixture(params=[[], ["Syria", "Iran", "Ukraine"]], ids=["no-order", "demo-order"])
def desk(request: pytest.FixtureRequest, any_ctx: Context, feed_server: FeedServer,
         locmem: type[LocmemTransport]) -> Iterator[Context]:
    """The demo's sample feeds and aliases, with no keyword order or the demo's; a feed
    tagging Iran as "  iran ", "IRAN" and "Iran", and Turkey as "TÜRKIYE"; readers of
    every section and readers who stored raw choices ("إيران", " türkiye", "IRAN ")."""
    ctx = Context(any_ctx.settings.replace(
        transport="locmem", keyword_order=request.param, keyword_aliases=ALIASES,
        keyword_rules={"Israel": ["Golan", "Knesset"]}), any_ctx.db)
    now = utcnow()
    for name, (title, content_type) in SAMPLE_FEEDS.items():
        url = feed_server.add(f"/{name}", body=render_sample(name, feed_server.base, now),
                              content_type=content_type)
        add_feed(ctx.db, url, title)
    url = feed_server.add("/spellings.xml", body=rss([
        recap(901, tags=["  iran "]), recap(902, tags=["IRAN", "Russia"]),
        recap(903, tags=["TÜRKIYE"])]))
    add_feed(ctx.db, url, "Spellings")
    create_list(ctx.db, "weekly", "The Weekly Recap")
    add_subscriber(ctx.db, "weekly", "all@example.org")
    add_subscriber(ctx.db, "weekly", "persian@example.org", keywords=["إيران", " türkiye"])
    add_subscriber(ctx.db, "weekly", "shouty@example.org", keywords=["IRAN "])
    yield ctx


def sent(ctx: Context) -> dict[str, EmailMessage]:
    LocmemTransport.outbox.clear()
    result = run_list(ctx, RunRequest("weekly"), transport=LocmemTransport())
    assert result.send is not None and result.send.finished
    return {str(m["To"]): m for m in LocmemTransport.outbox}


def body(message: EmailMessage, kind: str) -> str:
    part = message.get_body((kind,))
    assert part is not None
    return str(part.get_content())


def words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text))


def check_html(html: str, subject: str) -> tuple[list[str], set[str]]:
    """What the HTML names, checked: the sections; every name any part of it uses."""
    doc = lxml.html.fromstring(html)
    titles = [h.text_content() for h in doc.xpath("//h2") if h.text_content() != "Top story"]
    assert len(titles) == len(set(titles)), titles
    keyword_titles = titles[:-1] if titles[-1] == "More recaps" else titles
    used = set(keyword_titles)
    for entry in doc.xpath("//td[contains(@class, 'entry')]"):
        links = entry.xpath(".//p[contains(@class, 'keywords')]/a")
        labels = [a.text_content() for a in links]
        assert len(labels) == len(set(labels)), labels  # each keyword once per entry
        for a in links:
            assert a.get("href").endswith("/k/" + quote(keyword_key(a.text_content()),
                                                        safe=""))
        used.update(labels)
        [meta] = entry.xpath(".//p[contains(@class, 'meta')]")
        also = re.search(r"Also in: (.*)$", meta.text_content())
        if also:
            named = also[1].split(", ")
            # Only sections this email has: never "Also in: Russia" without Russia.
            assert set(named) <= set(keyword_titles), (named, keyword_titles)
            used.update(named)
    contents = doc.xpath("//td[contains(@class, 'contents')]/a")
    assert [re.sub(r"\s\(\d+\)$", "", a.text_content()) for a in contents] in ([], titles)
    preheader = doc.xpath("//div[contains(@class, 'preheader')]")[0].text_content()
    intro = doc.xpath("//td[contains(@class, 'intro')]")[0].text_content()
    named_in_summary = re.findall(r"\d+ on ([^,]+?)(?=,| and |$)", preheader.split("\u2007")[0])
    assert named_in_summary and set(named_in_summary) <= set(keyword_titles)
    for text in (subject, preheader, intro, *used):
        assert not words(text) & set(NEVER_SHOWN), text
    return keyword_titles, used


def check_text(text: str, titles: list[str]) -> None:
    """The text part names the same sections, labels and "Also in" as the HTML."""
    headings = re.findall(r"^(.+) \(\d+\)\n-+$", text, re.MULTILINE)
    assert [h for h in headings if h not in ("More recaps", "Top story")] == titles
    for line in re.findall(r"Also in: ([^\n]+(?:\n  [^\n*]+)*)", text):
        assert set(" ".join(line.split()).split(", ")) <= set(titles), line
    for block in re.findall(r"Keywords: ([^\n]+(?:\n  (?!\[)[^\n]+)*)", text):
        labels = [re.sub(r" \[\d+\]$", "", k) for k in " ".join(block.split()).split(", ")]
        assert len(labels) == len(set(labels)) and not set(labels) & set(NEVER_SHOWN), labels
    for url in re.findall(r"https://digest\.example/archive/weekly/k/(\S+)", text):
        assert unquote(url) == keyword_key(unquote(url))


def test_every_part_of_the_email_names_each_keyword_once(desk: Context) -> None:
    mail = sent(desk)
    full = mail["all@example.org"]
    subject = str(full["Subject"])
    titles, used = check_html(body(full, "html"), subject)
    check_text(body(full, "plain"), titles)
    # Iran, spelled four ways, is one section under its mixed-case name; Türkiye is
    # Turkey, as the alias says; the Arabic tags joined their English sections.
    assert titles.count("Iran") == 1 and "Turkey" in titles and "Syria" in titles
    assert subject.startswith("The Weekly Recap: ") and "iran" not in subject
    assert {"Iran", "Turkey", "Syria"} <= used
    # A segment reader's email (stored "إيران" and " türkiye"): only their sections,
    # named alike, and "Also in" only among them.
    persian = mail["persian@example.org"]
    segment_titles, _ = check_html(body(persian, "html"), str(persian["Subject"]))
    check_text(body(persian, "plain"), segment_titles)
    assert segment_titles == [t for t in titles if t in ("Iran", "Turkey")]
    shouty = mail["shouty@example.org"]
    assert check_html(body(shouty, "html"), str(shouty["Subject"]))[0] == ["Iran"]


def client_for(ctx: Context) -> TestClient:
    return TestClient(create_app(ctx), base_url="https://digest.example",
                      follow_redirects=False)


def test_the_archive_has_one_page_per_keyword_under_its_name(desk: Context) -> None:
    mail = sent(desk)
    html = body(mail["all@example.org"], "html")
    doc = lxml.html.fromstring(html)
    carrying: dict[str, set[str]] = {}
    for entry in doc.xpath("//td[contains(@class, 'entry')]"):
        title = entry.xpath(".//h3")[0].text_content()
        for a in entry.xpath(".//p[contains(@class, 'keywords')]/a"):
            carrying.setdefault(a.get("href"), set()).add(title)
    client = client_for(desk)
    for href, titles in carrying.items():
        page = client.get(href.removeprefix("https://digest.example"))
        assert page.status_code == 200, href
        page_doc = lxml.html.fromstring(page.text)
        heading = page_doc.xpath("//h1")[0].text_content()
        assert keyword_key(heading) == unquote(href.rsplit("/", 1)[1])
        assert heading not in NEVER_SHOWN
        listed = {h.text_content() for h in page_doc.xpath("//article/h2")}
        assert titles <= listed, (href, titles - listed)  # every recap the email links
    assert lxml.html.fromstring(client.get("/archive/weekly/k/iran").text).xpath(
        "//h1")[0].text_content() == "Iran"
    # Any other spelling, or an alias, is the same page at its one address.
    for spelling, key in (("IRAN", "iran"), ("إيران", "iran"), ("Türkiye", "turkey"),
                          (" Syria ", "syria")):
        moved = client.get(f"/archive/weekly/k/{quote(spelling)}")
        assert moved.status_code == 301 and moved.headers["location"] == \
            f"/archive/weekly/k/{key}"
    turkey = lxml.html.fromstring(client.get("/archive/weekly/k/turkey").text)
    assert turkey.xpath("//h1")[0].text_content() == "Turkey"
    assert turkey.xpath("//title")[0].text_content().startswith("Turkey · ")


def test_the_preferences_page_offers_the_sections_each_once(desk: Context) -> None:
    mail = sent(desk)
    titles, _ = check_html(body(mail["all@example.org"], "html"), "")
    persian = body(mail["persian@example.org"], "html")
    link = re.search(r'href="https://digest\.example(/p/[^"]+)"', persian)
    assert link
    client = client_for(desk)
    page = lxml.html.fromstring(client.get(link[1]).text)
    boxes = page.xpath("//input[@name='keywords']")
    offered = [b.get("value") for b in boxes]
    labels = [b.getparent().text_content().strip() for b in boxes]
    # The sections the list's issues had: each once, by the email's names; no alias
    # beside its target, no tag that never became a section.
    assert offered == labels and len(offered) == len(set(offered))
    assert sorted(offered, key=str.casefold) == sorted(titles, key=str.casefold)
    assert not set(offered) & set(NEVER_SHOWN)
    assert "Russia" not in offered or "Russia" in titles
    # The reader's stored "إيران" and " türkiye" are ticked under the names on offer.
    assert sorted(b.get("value") for b in boxes if b.get("checked") is not None) == \
        ["Iran", "Turkey"]
    # Saved again, the choices are stored by those names, and still reach the reader.
    csrf = page.xpath("//input[@name='csrf']")[0].get("value")
    saved = client.post(link[1], data={"csrf": csrf, "keywords": ["Iran", "Turkey"],
                                       "action": "save"})
    assert saved.status_code == 200 and "Saved" in saved.text
    with desk.db.session() as session:
        stored = session.scalars(select(Subscription.keywords).join(
            Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email == "persian@example.org")).one()
    assert stored == ["Iran", "Turkey"]
    again = lxml.html.fromstring(client.get(link[1]).text)
    assert [b.get("value") for b in again.xpath("//input[@name='keywords'][@checked]")] \
        == ["Iran", "Turkey"]
    subscribe = lxml.html.fromstring(client.get("/subscribe?list=weekly").text)
    assert [b.get("value") for b in subscribe.xpath("//input[@name='keywords']")] == offered


def test_the_editors_segment_menu_names_readers_choices_once(desk: Context) -> None:
    """The workbench's "Preview as readers of" menu shows each segment's keywords under
    their one names, however the readers typed them."""
    from digest.services.building.editing import segments
    sent(desk)
    add_subscriber(desk.db, "weekly", "farsi@example.org", keywords=["إيران"])
    add_subscriber(desk.db, "weekly", "latin@example.org", keywords=["iran"])
    menu = [s for s in segments(desk, "weekly") if s.key]
    labels = {s.label: s.readers for s in menu}
    # One row per rendering: "إيران" and "iran" (and "IRAN ") are one segment, Iran.
    assert labels == {"Iran, Turkey": 1, "Iran": 3}
    assert len(labels) == len(menu)
    assert not words(" ".join(labels)) & set(NEVER_SHOWN)
