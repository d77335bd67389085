"""Feed text never reaches a recipient's values (issue 26, item 1).

A feed puts every placeholder string there ever was, and marker-shaped strings of the
form the renderer uses now, in every field an entry shows: title, link, lead, image URL
and alt, "Read also" link text and href, keywords. Two named readers (one of them on a
keyword segment, so a second rendering) get the issue with every entry part on, through
the outbox and through SendGrid (its substitutions applied as SendGrid applies them).
Each message must hold its reader's unsubscribe and preferences links, their tokens and
their name only where the product puts them, the other reader's nowhere, and the feed's
strings exactly as the feed wrote them.
"""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import lxml.html
import pytest

from digest.core.rendering import RenderedIssue
from digest.services.building.drafts import draft_issue
from digest.services.feeds.collect import add_feed, collect
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.transports.sendgrid import SendGridTransport
from subscribers.lists import create_list, edit_list
from subscribers.subscriptions import add_subscriber
from tests.feedserver import FeedServer, Route, rss
from tests.sendgrid_standin import SendGridStandIn
from tests.test_send import recap

# Every placeholder the renderer ever used, in both forms (HTML and text).
OLD = ["__DIGEST_UNSUBSCRIBE_URL__", "__DIGEST_UNSUBSCRIBE_URL_TEXT__",
       "__DIGEST_PREFERENCES_URL__", "__DIGEST_PREFERENCES_URL_TEXT__",
       "__DIGEST_NAME__", "__DIGEST_NAME_TEXT__"]
# Strings of today's marker shape, each slot's code with a made-up tag.
SHAPED = [f"__DIGEST_{code}{'Zq3_x-' * 3}abcd__" for code in "UuPpNn"]
PEOPLE = [("zuleika@example.org", "Zuleika Quimby"), ("yorick@example.net", "Yorick Pemberton")]
KEY = "SG.test-key"


@dataclass(frozen=True)
class Entry:
    """What one hostile entry says, field by field, as the feed writes it."""

    n: int
    strings: list[str]

    @property
    def words(self) -> str:
        return " ".join(self.strings)

    @property
    def title(self) -> str:
        return f"Recap {self.n} {self.words}"

    @property
    def link(self) -> str:
        return f"https://evil.example/{self.n}/" + "/".join(self.strings)

    @property
    def lead(self) -> str:
        return f"Lead {self.n} says {self.words}."

    @property
    def image(self) -> str:
        return f"https://img.evil.example/{self.n}/" + "/".join(self.strings) + ".png"

    @property
    def alt(self) -> str:
        return f"Alt {self.n} {self.words}"

    @property
    def also_url(self) -> str:
        return f"https://evil.example/also/{self.n}/" + "-".join(self.strings)

    @property
    def also_label(self) -> str:
        return f"Also {self.n} {self.words}"

    @property
    def keywords(self) -> list[str]:
        """The strings as keywords: those that differ in case alone are one keyword."""
        seen: dict[str, str] = {}
        for string in self.strings:
            seen.setdefault(string.casefold(), string)
        return list(seen.values())

    def item(self) -> dict[str, object]:
        item = recap(self.n, tags=["Syria", *self.strings])
        item.update(
            title=self.title, link=self.link,
            summary=(f'<p>{self.lead}</p><img src="{self.image}" alt="{self.alt}" '
                     f'width="640" height="360"><p>Read also: <a href="{self.also_url}">'
                     f"{self.also_label}</a></p>"))
        return item


@dataclass(frozen=True)
class Reader:
    """A reader, and the values of theirs that must stay in their own email."""

    email: str
    name: str
    unsubscribe_url: str
    preferences_url: str

    @property
    def secrets(self) -> list[str]:
        return [self.unsubscribe_url, self.preferences_url, self.name,
                self.unsubscribe_url.rsplit("/", 1)[1], self.preferences_url.rsplit("/", 1)[1]]


@dataclass(frozen=True)
class Received:
    """One message as its reader sees it."""

    to: str
    html: str
    text: str
    headers: str  # every header, one per line


@pytest.fixture
def attack(any_ctx: Context, feed_server: FeedServer) -> Iterator[tuple[Context, list[Entry],
                                                                          list[Reader]]]:
    """A list whose one feed is hostile, collected twice: the second time with the
    markers of a preview of the first as well (an attacker who learnt a tag)."""
    ctx = any_ctx
    # One entry for each kind of string (so that each field stays within what a feed
    # entry keeps of it: 300 characters of alt text, say).
    first = [Entry(1, OLD), Entry(2, SHAPED)]
    url = feed_server.add("/evil.xml", body=rss([e.item() for e in first]))
    add_feed(ctx.db, url, "Evil Desk")
    create_list(ctx.db, "weekly", "The Weekly Recap")
    edit_list(ctx.db, "weekly", entry_parts="image,lead,read_also,keywords")
    unsubscribe, preferences = ctx.tokens.maker("unsubscribe"), ctx.tokens.maker("preferences")
    readers = []
    for (address, name), keywords in zip(PEOPLE, [[], ["Syria"]], strict=True):
        added = add_subscriber(ctx.db, "weekly", address, name=name, keywords=keywords)
        assert added.subscription_id is not None
        readers.append(Reader(address, name,
                              ctx.url("u/" + unsubscribe(added.subscription_id)),
                              ctx.url("p/" + preferences(added.subscription_id))))
    collect(ctx.db, ctx.settings)
    preview = draft_issue(ctx, "weekly")
    assert preview is not None
    learnt = Entry(3, list(preview.rendered.tokens))
    feed_server.routes["/evil.xml"] = Route(body=rss([e.item() for e in [*first, learnt]]))
    collect(ctx.db, ctx.settings)
    yield ctx, [*first, learnt], readers


def flat(text: str) -> str:
    return " ".join(text.split())


def check(received: Received, me: Reader, other: Reader, entries: list[Entry]) -> None:
    """What the reader must see, and must not."""
    html, text, headers = received.html, received.text, received.headers
    whole = html + text + headers
    for value in other.secrets:
        assert value not in whole, f"{other.name}'s {value!r} reached {me.name}"
    # My own values stand only where the product puts them: the footer's two links and
    # the greeting in each part, List-Unsubscribe and To in the headers.
    unsubscribe_token, preferences_token = me.secrets[3:]
    assert html.count(me.unsubscribe_url) == html.count(unsubscribe_token) == 1
    assert html.count(me.preferences_url) == html.count(preferences_token) == 1
    assert html.count(me.name) == 1 and f"Hi {me.name}," in html
    assert text.count(me.unsubscribe_url) == text.count(unsubscribe_token) == 1
    assert text.count(me.preferences_url) == text.count(preferences_token) == 1
    assert text.count(me.name) == 1 and f"Hi {me.name}," in text
    assert f"Unsubscribe: {me.unsubscribe_url}\n" in text
    assert headers.count(unsubscribe_token) == 1
    assert f"List-Unsubscribe: <{me.unsubscribe_url}>" in headers
    assert preferences_token not in headers and headers.count(me.name) == 1
    assert f"To: {me.name} <{me.email}>" in headers
    # The feed's strings, everywhere they are shown, as the feed wrote them.
    doc = lxml.html.fromstring(html)
    titles = {(a.get("href"), a.text_content()) for a in doc.xpath("//h3/a")}
    images = {(i.get("src"), i.get("alt")) for i in doc.xpath("//img[@class='picture']")}
    also = {(a.get("href"), a.text_content()) for a in doc.xpath("//ul[@class='also']//a")}
    keywords = {a.text_content() for a in doc.xpath("//p[@class='keywords']/a")}
    leads = flat(" ".join(p.text_content() for p in doc.xpath("//td[@class='entry']/p")))
    for entry in entries:
        assert (entry.link, entry.title) in titles
        assert (entry.image, entry.alt) in images
        assert (entry.also_url, entry.also_label) in also
        assert set(entry.keywords) <= keywords
        assert entry.lead in leads
        for shown in (entry.title, entry.link, entry.lead, entry.also_url,
                      entry.also_label, *entry.keywords):
            assert shown in flat(text), shown
    # Nothing marker-shaped is left but what the feed wrote.
    rest = html + text
    for entry in entries:
        for written in sorted(entry.strings, key=len, reverse=True):
            rest = rest.replace(written, "")
    assert "__DIGEST_" not in rest


def both(readers: list[Reader], received: list[Received]) -> Iterator[tuple[Received, Reader,
                                                                            Reader]]:
    """Each message with its reader and the other reader."""
    assert sorted(r.to for r in received) == sorted(r.email for r in readers)
    for message in received:
        me, other = readers if readers[0].email == message.to else readers[::-1]
        yield message, me, other


def test_feed_placeholders_reach_no_recipient_value_through_the_outbox(
        attack: tuple[Context, list[Entry], list[Reader]]) -> None:
    ctx, entries, readers = attack
    result = run_list(ctx, RunRequest("weekly", collect_first=False))
    assert result.send is not None and result.send.counts == {"accepted": 2}
    received = []
    for path in sorted(Path(ctx.settings.outbox_dir).rglob("*.eml")):
        message: EmailMessage = email.message_from_bytes(  # type: ignore[assignment]
            path.read_bytes(), policy=email.policy.default)
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        headers = "\n".join(f"{k}: {v}" for k, v in message.items())
        received.append(Received(message["To"].addresses[0].addr_spec, html,
                                 text.replace("\r\n", "\n"), headers))
    for message, me, other in both(readers, received):
        check(message, me, other, entries)


def test_feed_placeholders_reach_no_recipient_value_through_sendgrid(
        attack: tuple[Context, list[Entry], list[Reader]]) -> None:
    ctx, entries, readers = attack
    standin = SendGridStandIn(KEY)
    try:
        transport = SendGridTransport(KEY, host=standin.url, timeout=5.0, attempts=2,
                                      sleep=lambda s: time.sleep(min(s, 0.1)))
        result = run_list(ctx, RunRequest("weekly", collect_first=False), transport=transport)
        bodies = standin.bodies
    finally:
        standin.close()
    assert result.send is not None and result.send.counts == {"accepted": 2}
    received = []
    for body in bodies:
        text, html = (c["value"] for c in body["content"])
        # The keys are the issue's own markers, in what SendGrid was given.
        assert set(body["personalizations"][0]["substitutions"]) == set(
            RenderedIssue(body["subject"], html, text, "").tokens)
        for person in body["personalizations"]:
            def substituted(value: str, person: dict[str, object] = person) -> str:
                # As SendGrid does: every occurrence of each key, in subject and content.
                for key, replacement in person["substitutions"].items():  # type: ignore[attr-defined]
                    value = value.replace(key, replacement)
                return value
            to = person["to"][0]  # type: ignore[index]
            headers = {"Subject": substituted(body["subject"]), **body["headers"],
                       **person["headers"], "To": f"{to['name']} <{to['email']}>"}  # type: ignore[dict-item]
            received.append(Received(to["email"], substituted(html), substituted(text),
                                     "\n".join(f"{k}: {v}" for k, v in headers.items())))
    for message, me, other in both(readers, received):
        check(message, me, other, entries)


def test_a_kept_issue_finds_only_its_own_slots(
        attack: tuple[Context, list[Entry], list[Reader]]) -> None:
    """The strings an issue keeps, read back as a resumed send reads them: the same
    slots, none of the feed's."""
    ctx, entries, _ = attack
    draft = draft_issue(ctx, "weekly")
    assert draft is not None
    rendered = draft.rendered
    kept = RenderedIssue(rendered.subject, rendered.html, rendered.text, "")
    assert kept.tokens == rendered.tokens
    assert [rendered.html.count(t) for t in rendered.tokens[::2]] == [1, 1, 1]
    assert [rendered.text.count(t) for t in rendered.tokens[1::2]] == [1, 1, 1]
    # A feed's string with the tag of this very rendering would have to contain the
    # rendering's hash: the tag differs from every one the feed wrote.
    written = {s for entry in entries for s in entry.strings}
    assert not written & set(rendered.tokens)
