"""Public pages against the real app: one-click unsubscribe, preferences, double opt-in,
the archive, and the SendGrid webhook — then a send proves who is (not) mailed."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from starlette.testclient import TestClient

from digest.edges.web.app import create_app
from digest.services.building.editing import save_edit
from digest.services.feeds.collect import add_feed, collect
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.models import Delivery, Entry, Issue
from digest.services.storage.subscriber_models import Subscription
from digest.services.transports.locmem import LocmemTransport
from subscribers.lists import create_list
from subscribers.optin import expire_pending
from subscribers.subscriptions import add_subscriber
from tests.feedserver import FeedServer, Route, rss
from tests.test_send import recap


@pytest.fixture
def desk(any_ctx: Context, feed_server: FeedServer,
         locmem: type[LocmemTransport]) -> Iterator[Context]:
    """Two readers on "weekly", one on "daily", a feed; mail goes to locmem."""
    ctx = Context(any_ctx.settings.replace(transport="locmem",
                                           keyword_order=["Iran", "Syria", "Yemen"]),
                  any_ctx.db)
    url = feed_server.add("/feed.xml", body=rss([recap(1), recap(2, tags=["Syria"])]))
    add_feed(ctx.db, url, "Desk")
    create_list(ctx.db, "weekly", "The Weekly Recap")
    create_list(ctx.db, "daily", "The Daily Recap")
    add_subscriber(ctx.db, "weekly", "alice@example.org", name="Alice")
    add_subscriber(ctx.db, "weekly", "bob@example.org")
    add_subscriber(ctx.db, "daily", "alice@example.org")
    yield ctx


def client_for(ctx: Context) -> TestClient:
    return TestClient(create_app(ctx), base_url="https://digest.example",
                      follow_redirects=False)


def send(ctx: Context) -> dict[str, EmailMessage]:
    """Run the list's job; the messages sent now, by recipient address."""
    LocmemTransport.outbox.clear()
    run_list(ctx, RunRequest("weekly"), transport=LocmemTransport())
    return {str(m["To"]).split("<")[-1].rstrip(">"): m for m in LocmemTransport.outbox}


def status_of(ctx: Context, email: str, list_id: int = 1) -> str:
    with ctx.db.session() as s:
        from digest.services.storage.subscriber_models import Subscriber
        return s.scalar(select(Subscription.status).join(
            Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email == email, Subscription.list_id == list_id)) or "none"


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_scanners_never_unsubscribe_and_one_click_does(desk: Context,
                                                        feed_server: FeedServer) -> None:
    sent = send(desk)
    link = str(sent["bob@example.org"]["List-Unsubscribe"]).strip("<>")
    client = client_for(desk)
    # A link scanner only GETs: a page with a button, nothing changes.
    for _ in range(3):
        page = client.get(path_of(link))
        assert page.status_code == 200 and "Unsubscribe" in page.text
    assert status_of(desk, "bob@example.org") == "active"
    # RFC 8058: a POST with this body, no cookie, answers 200 at once (no redirect).
    fresh = TestClient(create_app(desk), base_url="https://digest.example",
                       follow_redirects=False)
    answer = fresh.post(path_of(link), content=b"List-Unsubscribe=One-Click",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200 and "unsubscribed" in answer.text
    assert "set-cookie" not in answer.headers or "digest_session" not in answer.headers.get(
        "set-cookie", "")
    assert status_of(desk, "bob@example.org") == "unsubscribed"
    # The next issue goes to Alice only.
    publish(feed_server, 1, 2, 7)
    assert sorted(send(desk)) == ["alice@example.org"]


def publish(server: FeedServer, *numbers: int) -> None:
    """Put more recaps in the feed, so the next run has a new issue."""
    server.routes["/feed.xml"] = Route(body=rss([recap(n) for n in numbers]))


def test_a_tampered_token_is_a_400_and_changes_nothing(desk: Context) -> None:
    sent = send(desk)
    link = path_of(str(sent["bob@example.org"]["List-Unsubscribe"]).strip("<>"))
    client = client_for(desk)
    tampered = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
    for path in (tampered, "/u/not-a-token", "/p/" + link.rsplit("/", 1)[1]):
        answer = client.post(path, content=b"List-Unsubscribe=One-Click",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status_code in (400, 403), path
        assert client.get(path).status_code == 400
    assert status_of(desk, "bob@example.org") == "active"
    # A POST without the one-click body changes nothing either.
    assert client.post(link).status_code == 400
    assert status_of(desk, "bob@example.org") == "active"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found[1]


def test_preferences_choose_keywords_pause_and_leave(desk: Context,
                                                     feed_server: FeedServer) -> None:
    sent = send(desk)
    html = sent["alice@example.org"].get_body(("html",))
    assert html is not None
    prefs = re.search(r'href="(https://digest.example/p/[^"]+)"', str(html.get_content()))
    assert prefs
    client = client_for(desk)
    page = client.get(path_of(prefs[1]))
    assert page.status_code == 200 and "Iran" in page.text and "Syria" in page.text
    # Without the form's CSRF token: refused.
    assert client.post(path_of(prefs[1]), data={"keywords": "Syria"}).status_code == 403
    saved = client.post(path_of(prefs[1]), data={"csrf": csrf_of(page.text),
                                                 "keywords": ["Syria"], "action": "save"})
    assert saved.status_code == 200 and "Saved" in saved.text
    with desk.db.session() as s:
        sub = s.scalars(select(Subscription).where(Subscription.id == 1)).one()
        assert sub.keywords == ["Syria"] and sub.segment == "syria"
    feed_server.routes["/feed.xml"] = Route(body=rss([
        recap(1), recap(2), recap(7, tags=["Iran"]), recap(8, tags=["Syria"])]))
    mail = send(desk)
    alice = mail["alice@example.org"].get_body(("html",))
    assert alice is not None and "Recap 8:" in str(alice.get_content())
    assert "Recap 7:" not in str(alice.get_content())
    # Pause: no email until resumed.
    page = client.get(path_of(prefs[1]))
    client.post(path_of(prefs[1]), data={"csrf": csrf_of(page.text), "paused": "on",
                                         "action": "save"})
    assert status_of(desk, "alice@example.org") == "paused"
    # Leave every list: weekly and daily.
    page = client.get(path_of(prefs[1]))
    left = client.post(path_of(prefs[1]), data={"csrf": csrf_of(page.text),
                                                "action": "leave_all"})
    assert left.status_code == 200 and "2 lists" in left.text
    assert status_of(desk, "alice@example.org", 1) == "unsubscribed"
    assert status_of(desk, "alice@example.org", 2) == "unsubscribed"


def confirmation_link(message: EmailMessage) -> str:
    text = message.get_body(("plain",))
    assert text is not None
    found = re.search(r"https://digest.example/confirm/\S+", str(text.get_content()))
    assert found
    return found[0]


def test_double_opt_in_from_the_form(desk: Context) -> None:
    client = client_for(desk)
    form = client.get("/subscribe?list=weekly")
    assert form.status_code == 200 and "The Weekly Recap" in form.text
    LocmemTransport.outbox.clear()
    assert 'value="Syria"' in form.text  # sections on offer
    answer = client.post("/subscribe", data={"csrf": csrf_of(form.text),
                                             "email": "New.Reader@Example.org",
                                             "list": "weekly", "website": "",
                                             "keywords": ["Syria"]})
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    [confirm] = LocmemTransport.outbox
    assert str(confirm["To"]) == "New.Reader@example.org"
    assert status_of(desk, "New.Reader@example.org") == "pending"
    # Pending readers are not mailed.
    assert "New.Reader@example.org" not in send(desk)
    link = path_of(confirmation_link(confirm))
    # A scanner's GET does not confirm.
    assert client.get(link).status_code == 200
    assert status_of(desk, "New.Reader@example.org") == "pending"
    done = client.post(link)
    assert done.status_code == 200 and "confirmed" in done.text
    assert status_of(desk, "New.Reader@example.org") == "active"
    with desk.db.session() as s:
        chosen = s.scalar(select(Subscription.segment).where(Subscription.id == 4))
    assert chosen == "syria"
    # Asking again for an active address sends nothing, and says the same.
    LocmemTransport.outbox.clear()
    again = client.post("/subscribe", data={"csrf": csrf_of(form.text),
                                            "email": "new.reader@example.org", "list": "weekly"})
    assert "Check your inbox" in again.text and LocmemTransport.outbox == []


def test_the_form_refuses_bots_floods_and_bad_input(desk: Context) -> None:
    ctx = Context(desk.settings.replace(subscribe_per_ip_per_hour=3), desk.db)
    client = client_for(ctx)
    csrf = csrf_of(client.get("/subscribe").text)
    LocmemTransport.outbox.clear()
    # The honeypot: a bot fills every field; it is told the same, and nothing is sent.
    bot = client.post("/subscribe", data={"csrf": csrf, "email": "bot@example.org",
                                          "list": "weekly", "website": "http://spam"})
    assert "Check your inbox" in bot.text and LocmemTransport.outbox == []
    assert status_of(ctx, "bot@example.org") == "none"
    bad = client.post("/subscribe", data={"csrf": csrf, "email": "not an address",
                                          "list": "weekly"})
    assert bad.status_code == 400 and "not an address" in bad.text
    # Without the CSRF token: refused.
    assert client.post("/subscribe", data={"email": "x@example.org",
                                           "list": "weekly"}).status_code == 403
    # Per address: a second request minutes later sends no second email.
    for _ in range(2):
        client.post("/subscribe", data={"csrf": csrf, "email": "twice@example.org",
                                        "list": "weekly"})
    assert len(LocmemTransport.outbox) == 1
    # Per IP: the limit (3 an hour here) answers 429.
    flood = client.post("/subscribe", data={"csrf": csrf, "email": "c@example.org",
                                            "list": "weekly"})
    assert flood.status_code == 429


def test_unconfirmed_subscriptions_expire(desk: Context) -> None:
    from subscribers.optin import request_subscription
    request_subscription(desk, "weekly", "late@example.org", transport=LocmemTransport())
    link = path_of(confirmation_link(LocmemTransport.outbox[-1]))
    assert expire_pending(desk, now=utcnow() + timedelta(hours=71)) == 0
    assert expire_pending(desk, now=utcnow() + timedelta(hours=73)) == 1
    answer = client_for(desk).post(link)
    assert answer.status_code == 400
    assert status_of(desk, "late@example.org") == "none"


def test_cli_add_with_confirm_sends_the_link(desk: Context, runner: object) -> None:
    from click.testing import CliRunner

    from digest.edges.cli import cli
    env = {"DIGEST_DATABASE_URL": desk.settings.database_url, "DIGEST_TRANSPORT": "outbox",
           "DIGEST_OUTBOX_DIR": desk.settings.outbox_dir,
           "DIGEST_SECRET_KEY": "test-secret", "DIGEST_BASE_URL": "https://digest.example"}
    assert isinstance(runner, CliRunner)
    result = runner.invoke(cli, ["subscribers", "add", "cli@example.org", "--list", "weekly",
                                 "--confirm"], env=env)
    assert result.exit_code == 0, result.output
    assert "confirmation link" in result.output
    assert status_of(desk, "cli@example.org") == "pending"
    from pathlib import Path
    [eml] = list(Path(desk.settings.outbox_dir).rglob("*.eml"))
    assert b"/confirm/" in eml.read_bytes()


# --- the SendGrid webhook ---------------------------------------------------------------

@pytest.fixture
def signer() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_b64(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def signed(key: ec.EllipticCurvePrivateKey, body: bytes,
           timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp or int(time.time()))
    signature = key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
            "Content-Type": "application/json"}


def test_webhook_applies_signed_events_once_and_refuses_the_rest(
        desk: Context, signer: ec.EllipticCurvePrivateKey, feed_server: FeedServer) -> None:
    ctx = Context(desk.settings.replace(sendgrid_webhook_public_key=public_b64(signer)),
                  desk.db)
    send(ctx)
    with ctx.db.session() as s:
        ids = dict(s.execute(select(Delivery.subscriber_id, Delivery.id)).all())
    alice_delivery, bob_delivery = str(ids[1]), str(ids[2])
    client = client_for(ctx)
    events = [
        {"sg_event_id": "e1", "event": "delivered", "email": "alice@example.org",
         "delivery_id": alice_delivery},
        {"sg_event_id": "e2", "event": "open", "email": "alice@example.org",
         "delivery_id": alice_delivery},
        {"sg_event_id": "e3", "event": "click", "email": "alice@example.org",
         "delivery_id": alice_delivery},
        {"sg_event_id": "e4", "event": "bounce", "type": "bounce",
         "email": "bob@example.org", "delivery_id": bob_delivery},
    ]
    body = json.dumps(events).encode()
    assert client.post("/webhooks/sendgrid", content=body,
                       headers={"Content-Type": "application/json"}).status_code == 401
    forged = signed(signer, body)
    forged["X-Twilio-Email-Event-Webhook-Signature"] = signed(
        ec.generate_private_key(ec.SECP256R1()), body)[
        "X-Twilio-Email-Event-Webhook-Signature"]
    assert client.post("/webhooks/sendgrid", content=body, headers=forged).status_code == 403
    stale = signed(signer, body, timestamp=int(time.time()) - 3600)
    assert client.post("/webhooks/sendgrid", content=body, headers=stale).status_code == 403
    tampered = signed(signer, body)
    assert client.post("/webhooks/sendgrid", content=body.replace(b"bounce", b"bounc"),
                       headers=tampered).status_code == 403
    assert status_of(ctx, "bob@example.org") == "active"
    # Signed: applied; the same batch again (SendGrid retries): applied once.
    for _ in range(2):
        answer = client.post("/webhooks/sendgrid", content=body, headers=signed(signer, body))
        assert answer.status_code == 200
    assert answer.json()["applied"] == {"duplicate": 4}
    with ctx.db.session() as s:
        alice = s.get(Delivery, int(alice_delivery))
        assert alice is not None
        assert (alice.opens, alice.clicks, alice.delivered_at is not None) == (1, 1, True)
    assert status_of(ctx, "bob@example.org") == "bounced"
    # A spam report stops every list, and no import brings the address back.
    body = json.dumps([{"sg_event_id": "e5", "event": "spamreport",
                        "email": "alice@example.org"}]).encode()
    client.post("/webhooks/sendgrid", content=body, headers=signed(signer, body))
    assert status_of(ctx, "alice@example.org", 1) == "complained"
    assert status_of(ctx, "alice@example.org", 2) == "complained"
    assert add_subscriber(ctx.db, "weekly", "alice@example.org").outcome == "suppressed"
    publish(feed_server, 1, 2, 9)
    assert send(ctx) == {}


def test_webhook_unsubscribe_leaves_only_that_list(
        desk: Context, signer: ec.EllipticCurvePrivateKey) -> None:
    desk = Context(desk.settings.replace(sendgrid_webhook_public_key=public_b64(signer)),
                   desk.db)
    send(desk)
    with desk.db.session() as s:
        delivery = s.scalar(select(Delivery.id).where(Delivery.subscriber_id == 1))
    body = json.dumps([{"sg_event_id": "u1", "event": "unsubscribe",
                        "email": "alice@example.org", "delivery_id": str(delivery)}]).encode()
    answer = client_for(desk).post("/webhooks/sendgrid", content=body,
                                   headers=signed(signer, body))
    assert answer.status_code == 200
    assert status_of(desk, "alice@example.org", 1) == "unsubscribed"
    assert status_of(desk, "alice@example.org", 2) == "active"


def test_the_archive_shows_sent_issues_without_personal_links(desk: Context) -> None:
    sent = send(desk)
    view = re.search(r'href="(https://digest.example/archive/[^"]+)"',
                     str(sent["alice@example.org"].get_body(("html",)).get_content()))  # type: ignore[union-attr]
    assert view and view[1].endswith("/archive/weekly/1")
    client = client_for(desk)
    page = client.get("/archive/weekly/1")
    assert page.status_code == 200 and "Recap 1: Iran Moves in Syria" in page.text
    assert "/u/" not in page.text and "__DIGEST_" not in page.text
    listing = client.get("/archive/weekly")
    assert "/archive/weekly/1" in listing.text
    assert client.get("/archive/weekly/2").status_code == 404
    assert client.get("/archive/nope").status_code == 404


def test_a_returning_reader_who_never_confirms_stays_unsubscribed(desk: Context) -> None:
    from subscribers.optin import request_subscription
    from subscribers.subscriptions import remove_subscriber
    remove_subscriber(desk.db, "weekly", "bob@example.org")
    sent = request_subscription(desk, "weekly", "bob@example.org", transport=LocmemTransport())
    assert sent.outcome == "sent" and status_of(desk, "bob@example.org") == "pending"
    assert expire_pending(desk, now=utcnow() + timedelta(hours=73)) == 0
    assert status_of(desk, "bob@example.org") == "unsubscribed"
    assert add_subscriber(desk.db, "weekly", "bob@example.org").outcome == "suppressed"


def test_keywords_from_forms_are_trimmed_deduplicated_and_bounded(desk: Context) -> None:
    from subscribers.preferences import save_preferences
    save_preferences(desk.db, 1, keywords=["  Iran ", "Iran", "", "x" * 500,
                                           *[f"k{i}" for i in range(100)]], paused=False)
    with desk.db.session() as s:
        sub = s.get(Subscription, 1)
        assert sub is not None
        assert sub.keywords[:2] == ["Iran", "x" * 100] and len(sub.keywords) == 50


# --- the archive ---------------------------------------------------------------------------

def page_of(text: str) -> Any:
    from lxml import html
    return html.fromstring(text)


def entry_id(ctx: Context, title: str) -> int:
    with ctx.db.session() as s:
        found = s.scalar(select(Entry.id).where(Entry.title == title))
    assert found is not None
    return found


def feed_link(page: Any) -> str:
    [link] = page.xpath('//head/link[@rel="alternate"][@type="application/atom+xml"]')
    return str(link.get("href"))


def test_the_archive_copy_is_a_web_page_not_the_email(desk: Context) -> None:
    first, second = "Recap 1: Iran Moves in Syria", "Recap 2: Iran Moves in Syria"
    collect(desk.db, desk.settings)
    # What the editor did is what the archive shows: a new title, the top story.
    save_edit(desk, "weekly", "editor", intro="The week in two recaps.",
              overrides={entry_id(desk, second): {"title": "Syria, retitled"}},
              pinned=entry_id(desk, second))
    sent = send(desk)
    email_html = str(sent["alice@example.org"].get_body(("html",)).get_content())  # type: ignore[union-attr]
    assert "Hi Alice" in email_html and "Syria, retitled" in email_html
    answer = client_for(desk).get("/archive/weekly/1")
    assert answer.status_code == 200
    page = page_of(answer.text)
    text = " ".join(page.text_content().split())
    # A web page of the site, not the email: no greeting, no reason, no personal links.
    assert page.xpath('//link[@href="/static/site.css"]')
    for emails_own in ("Hi ", "because you subscribed", "Unsubscribe", "View in browser",
                       "Choose your topics"):
        assert emails_own not in text, emails_own
    hrefs = page.xpath("//a/@href")
    assert not [h for h in hrefs if "/u/" in h or "/p/" in h], hrefs
    assert "__DIGEST_" not in answer.text
    # It offers subscribing instead, and its feed.
    assert "/subscribe?list=weekly" in hrefs
    assert feed_link(page) == "/archive/weekly/feed.atom"
    # The issue as sent: the intro, the top story first, each section with its recaps.
    assert page.xpath("string(//h1)") == sent["alice@example.org"]["Subject"]
    assert "The week in two recaps." in text
    headings = [" ".join(h.text_content().split()) for h in page.xpath("//h2 | //h3")]
    assert headings == ["Top story", "Syria, retitled", "Iran", first], headings
    assert "/archive/weekly/k/iran" in hrefs and "https://news.example/r/1" in hrefs
    assert "Summary 1." in text
    assert client_for(desk).get("/archive/weekly/2").status_code == 404


def test_the_archive_index_shows_each_issue_with_its_sections_and_lead(
        desk: Context, feed_server: FeedServer) -> None:
    send(desk)
    publish(feed_server, 1, 2, 3, 4)
    send(desk)
    client = client_for(desk)
    page = page_of(client.get("/archive/weekly").text)
    issues = page.xpath('//article[contains(@class, "issue")]')
    assert [a.xpath("string(.//h2/a/@href)") for a in issues] == [
        "/archive/weekly/2", "/archive/weekly/1"]
    newest = " ".join(issues[0].text_content().split())
    # Its lead story, its lead, and its sections with their counts.
    assert "Recap 3: Iran Moves in Syria Summary 3." in newest, newest
    assert "No. 2" in newest and "2 recaps" in newest
    assert issues[0].xpath('string(.//p[@class="sections"])') == "Iran\xa0(2)"
    assert issues[0].xpath('.//a[@href="/archive/weekly/k/iran"]')
    assert feed_link(page) == "/archive/weekly/feed.atom"
    assert "/subscribe?list=weekly" in page.xpath("//a/@href")
    # A page at a time: those before an issue, and nonsense refused.
    older = page_of(client.get("/archive/weekly?before=2").text)
    assert older.xpath("//article//h2/a/@href") == ["/archive/weekly/1"]
    assert client.get("/archive/weekly?before=x").status_code == 404
    made_up = client.get("/archive/weekly/k/visit%20evil.example%20for%20a%20refund")
    assert made_up.status_code == 404 and "evil.example" not in made_up.text.lower()
    # Numbers no issue can have are no page, not a server error.
    for url in ("/archive/weekly?before=" + "9" * 30, "/archive/weekly?before=" + "9" * 5000,
                "/archive/weekly/" + "9" * 30, "/archive/weekly?before=²"):
        assert client.get(url).status_code == 404, url
    keyword = page_of(client.get("/archive/weekly/k/iran").text)
    assert feed_link(keyword) == "/archive/weekly/feed.atom"
    # The site's archive index advertises every list's feed.
    front = page_of(client.get("/archive").text)
    assert {str(h) for h in front.xpath('//head/link[@rel="alternate"]/@href')} == {
        "/archive/weekly/feed.atom", "/archive/daily/feed.atom"}


HOSTILE = 'Alarm </title><script>alert(1)</script> & "quotes" ]]> \x01\x0b end'


def test_the_archive_feed_is_atom_that_feed_readers_read(desk: Context,
                                                        feed_server: FeedServer) -> None:
    import feedparser
    from lxml import etree
    send(desk)
    publish(feed_server, 1, 2, 3)
    send(desk)
    # Feed text is hostile, and an older row may hold what no XML may.
    with desk.db.session() as s:
        s.get(Entry, entry_id(desk, "Recap 3: Iran Moves in Syria")).title = HOSTILE  # type: ignore[union-attr]
    answer = client_for(desk).get("/archive/weekly/feed.atom")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/atom+xml; charset=utf-8"
    etree.fromstring(answer.content)  # well-formed: a strict parser takes it
    feed = feedparser.parse(answer.content)
    assert not feed.bozo, feed.bozo_exception
    assert feed.version == "atom10"
    assert feed.feed.title == "The Weekly Recap"
    assert feed.feed.link == "https://digest.example/archive/weekly"
    assert [e.link for e in feed.entries] == ["https://digest.example/archive/weekly/2",
                                             "https://digest.example/archive/weekly/1"]
    newest = feed.entries[0]
    assert newest.title.startswith("The Weekly Recap") and newest.published_parsed
    assert newest.summary == "In this issue: Iran (1)"
    content = page_of(newest.content[0].value)
    # The hostile title arrives as text (what XML cannot hold taken out), never markup.
    assert 'Alarm </title><script>alert(1)</script> & "quotes" ]]>   end' in \
        content.text_content()
    assert not content.xpath("//script")
    assert "https://news.example/r/3" in content.xpath("//a/@href")
    assert "https://digest.example/subscribe?list=weekly" in content.xpath("//a/@href")
    # The same text on the issue's page is escaped there too.
    issue_page = client_for(desk).get("/archive/weekly/2").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in issue_page
    assert "<script>alert" not in issue_page


def test_issues_stored_before_the_archive_read_them_still_show(desk: Context) -> None:
    send(desk)
    # An issue row as older versions may have kept it: sections without keys, or none.
    with desk.db.session() as s:
        issue = s.scalar(select(Issue).where(Issue.number == 1))
        assert issue is not None
        issue.sections = [{"title": "Syria", "count": 1}]
    page = page_of(client_for(desk).get("/archive/weekly/1").text)
    assert [h.text_content() for h in page.xpath("//h2")] == ["Syria", "Iran"]
    assert {"/archive/weekly/k/syria", "/archive/weekly/k/iran"} <= set(page.xpath("//a/@href"))
    with desk.db.session() as s:
        issue = s.scalar(select(Issue).where(Issue.number == 1))
        assert issue is not None
        issue.sections = []
    page = page_of(client_for(desk).get("/archive/weekly/1").text)
    assert sorted(h.text_content() for h in page.xpath("//h2")) == ["Iran", "Syria"]


def test_a_keyword_page_lists_the_recaps_a_rule_put_under_it(
        any_ctx: Context, feed_server: FeedServer, locmem: type[LocmemTransport]) -> None:
    # Two rules match the untagged recap: it is under both keywords in the email, so it
    # is on both keyword pages, though it was placed in one section only.
    ctx = Context(any_ctx.settings.replace(
        transport="locmem", keyword_rules={"Israel": ["Golan"], "Lebanon": ["Golan"]}),
        any_ctx.db)
    golan = dict(recap(1, tags=[]), title="Recap: A Quiet Week on the Golan")
    tagged = dict(recap(2, tags=["Israel"]), title="Recap: The Coalition Survives")
    add_feed(ctx.db, feed_server.add("/feed.xml", body=rss([golan, tagged])), "Desk")
    create_list(ctx.db, "weekly", "The Weekly Recap")
    add_subscriber(ctx.db, "weekly", "alice@example.org")
    [message] = send(ctx).values()
    assert "A Quiet Week on the Golan" in str(message.get_body(("html",)).get_content())  # type: ignore[union-attr]
    page = client_for(ctx).get("/archive/weekly/k/israel")
    assert page.status_code == 200
    assert "A Quiet Week on the Golan" in page.text and "The Coalition Survives" in page.text
    lebanon = client_for(ctx).get("/archive/weekly/k/lebanon")
    assert lebanon.status_code == 200 and "A Quiet Week on the Golan" in lebanon.text



def test_a_keyword_with_a_slash_has_its_page(
        any_ctx: Context, feed_server: FeedServer, locmem: type[LocmemTransport]) -> None:
    ctx = Context(any_ctx.settings.replace(transport="locmem"), any_ctx.db)
    both = dict(recap(1, tags=["Israel/Palestine"]), title="Recap: Talks Resume")
    add_feed(ctx.db, feed_server.add("/feed.xml", body=rss([both])), "Desk")
    create_list(ctx.db, "weekly", "The Weekly Recap")
    add_subscriber(ctx.db, "weekly", "alice@example.org")
    [message] = send(ctx).values()
    html = str(message.get_body(("html",)).get_content())  # type: ignore[union-attr]
    [link] = {u for u in re.findall(r'href="([^"]+/k/[^"]+)"', html)}
    page = client_for(ctx).get(link.removeprefix(ctx.settings.base_url.rstrip("/")))
    assert page.status_code == 200 and "Recap: Talks Resume" in page.text
