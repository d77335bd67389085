"""Keyword preferences: each reader gets their sections, rendered once per segment."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from sqlalchemy import select, update

from digest.services.collect import add_feed
from digest.services.context import Context
from digest.services.models import Delivery, IssueVariant
from digest.services.pipeline import RunRequest, run_list
from digest.services.transports.locmem import LocmemTransport
from subscribers.lists import create_list
from subscribers.models import MailingList
from subscribers.subscriptions import add_subscriber
from tests.feedserver import FeedServer, rss
from tests.test_send import recap


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


@pytest.fixture
def desk(any_ctx: Context, feed_server: FeedServer) -> Context:
    """Recaps on Iran (two), Syria+Iran, Yemen and one untagged; readers with preferences."""
    url = feed_server.add("/feed.xml", body=rss([
        recap(1, tags=["Iran"]), recap(2, tags=["Iran"]), recap(3, tags=["Syria", "Iran"]),
        recap(4, tags=["Yemen"]), recap(5, tags=[])]))
    add_feed(any_ctx.db, url, "Desk")
    create_list(any_ctx.db, "weekly", "The Weekly Recap")
    add_subscriber(any_ctx.db, "weekly", "all@example.org")
    add_subscriber(any_ctx.db, "weekly", "persia@example.org", keywords=["PERSIA"])
    add_subscriber(any_ctx.db, "weekly", "iran@example.org", keywords=["iran"])
    add_subscriber(any_ctx.db, "weekly", "yemen@example.org", keywords=["Yemen", "Iran "])
    add_subscriber(any_ctx.db, "weekly", "turkey@example.org", keywords=["Turkey"])
    return any_ctx


def by_address(outbox: list[EmailMessage]) -> dict[str, EmailMessage]:
    return {str(m["To"]): m for m in outbox}


def test_readers_get_only_their_sections_and_nothing_when_nothing_matches(
        desk: Context, locmem: type[LocmemTransport]) -> None:
    ctx = Context(desk.settings.replace(keyword_aliases={"Persia": "Iran"}), desk.db)
    result = run_list(ctx, RunRequest("weekly"), transport=locmem())
    assert result.send is not None and result.send.finished
    mail = by_address(locmem.outbox)
    # Turkey has nothing new: no email, and the record says why.
    assert sorted(mail) == ["all@example.org", "iran@example.org", "persia@example.org",
                            "yemen@example.org"]
    assert result.send.counts == {"accepted": 4, "skipped": 1}
    with ctx.db.session() as session:
        reason = session.scalar(select(Delivery.error).where(Delivery.status == "skipped"))
        variants = session.scalars(select(IssueVariant.keys)).all()
    assert reason is not None and "none of your keywords" in reason
    # Three readers with preferences, two renderings: the alias puts Persia with Iran.
    assert sorted(variants) == ["iran", "iran;yemen"]

    full = html_of(mail["all@example.org"])
    assert all(f"Recap {n}:" in full for n in range(1, 6))
    iran = html_of(mail["iran@example.org"])
    # Recap 3 (Syria and Iran) is in Iran's section for an Iran reader.
    assert [n for n in range(1, 6) if f"Recap {n}:" in iran] == [1, 2, 3]
    persia = html_of(mail["persia@example.org"])
    assert [n for n in range(1, 6) if f"Recap {n}:" in persia] == [1, 2, 3]
    assert "More recaps" not in iran and "Yemen" not in iran
    yemen = html_of(mail["yemen@example.org"])
    assert [n for n in range(1, 6) if f"Recap {n}:" in yemen] == [1, 2, 3, 4]
    assert "Iran" in str(mail["iran@example.org"]["Subject"])
    assert "Yemen" not in str(mail["iran@example.org"]["Subject"])


def test_a_list_can_send_the_full_issue_when_nothing_matches(
        desk: Context, locmem: type[LocmemTransport]) -> None:
    with desk.db.session() as session:
        session.execute(update(MailingList).values(when_nothing_matches="full"))
    run_list(desk, RunRequest("weekly"), transport=locmem())
    turkey = html_of(by_address(locmem.outbox)["turkey@example.org"])
    assert all(f"Recap {n}:" in turkey for n in range(1, 6))


def test_a_keyword_with_no_section_of_its_own_still_reaches_its_readers(
        desk: Context, locmem: type[LocmemTransport]) -> None:
    # Recap 3 is tagged Syria and Iran; Iran is larger, so the full issue has no Syria
    # section. A Syria reader still gets recap 3, under Syria.
    add_subscriber(desk.db, "weekly", "syria@example.org", keywords=["Syria"])
    run_list(desk, RunRequest("weekly"), transport=locmem())
    syria = html_of(by_address(locmem.outbox)["syria@example.org"])
    assert [n for n in range(1, 6) if f"Recap {n}:" in syria] == [3]
    assert "SYRIA" in syria.upper()
