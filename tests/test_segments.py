"""Keyword preferences: each reader gets their sections, rendered once per segment."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, Sequence
from email.message import EmailMessage

import pytest
from sqlalchemy import select, update

from digest.core.grouping import KeywordConfig, group
from digest.services.building.drafts import draft_issue, plan_segments
from digest.services.feeds.collect import add_feed, collect
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.storage.models import Delivery, IssueVariant
from digest.services.storage.subscriber_models import MailingList
from digest.services.transports.locmem import LocmemTransport
from subscribers.lists import create_list
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


class CountedRules(Mapping[str, Sequence[str]]):
    """Editor rules that count how often they are read: once for each time a keyword
    configuration is built from them (settings) or resolved against entries (grouping)."""

    def __init__(self, rules: dict[str, Sequence[str]]) -> None:
        self.rules, self.reads = rules, 0

    def __getitem__(self, key: str) -> Sequence[str]:
        return self.rules[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def items(self) -> ItemsView[str, Sequence[str]]:
        self.reads += 1
        return self.rules.items()


def test_a_run_with_segments_builds_the_keyword_configuration_once(
        desk: Context, locmem: type[LocmemTransport]) -> None:
    rules = CountedRules({"Turkey": ["Ankara"]})
    add_subscriber(desk.db, "weekly", "syria@example.org", keywords=["Syria"])
    ctx = Context(desk.settings.replace(keyword_rules=rules), desk.db)
    result = run_list(ctx, RunRequest("weekly"), transport=locmem())
    assert result.send is not None and result.send.finished
    with ctx.db.session() as session:
        variants = session.scalars(select(IssueVariant.keys)).all()
    assert sorted(variants) == ["iran", "iran;yemen", "syria"]
    # The draft, the segments' plan and each of the three renderings share one.
    assert rules.reads == 1


def test_the_segments_are_cut_from_the_drafts_one_grouping(desk: Context) -> None:
    collect(desk.db, desk.settings)
    rules = CountedRules({"Turkey": ["Ankara"]})
    config = KeywordConfig(order=("Yemen",), aliases={"Persia": "Iran"}, rules=rules)
    draft = draft_issue(desk, "weekly", config=config)
    assert draft is not None and draft.grouping.config is config
    segments = ["iran", "persia", "syria", "turkey", "iran;yemen", "syria;yemen"]
    by_segment, variants = plan_segments(desk, draft, segments)
    assert rules.reads == 1  # grouped once: the draft, the plan and every rendering
    assert by_segment == {"iran": ("iran",), "persia": ("iran",), "syria": ("syria",),
                          "turkey": None, "iran;yemen": ("iran", "yemen"),
                          "syria;yemen": ("syria", "yemen")}
    fresh = KeywordConfig(order=("Yemen",), aliases={"Persia": "Iran"},
                          rules={"Turkey": ("Ankara",)})
    assert draft.sections == group(draft.items, fresh)
    for keys, variant in variants.items():
        assert variant.sections == group(draft.items, fresh, only=frozenset(keys)), keys
