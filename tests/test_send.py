"""Building and delivering issues through the outbox: the whole job, exactly once."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from digest.services.building.drafts import draft_issue
from digest.services.delivery.reports import counts
from digest.services.feeds.collect import add_feed
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.storage.models import Delivery, Issue, SendBatch
from digest.services.transports.base import Outcome, OutgoingIssue, OutgoingRecipient
from digest.services.transports.outbox import OutboxTransport
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber, remove_subscriber
from tests.feedserver import FeedServer, Route, rss

NOW = datetime.now(UTC).replace(microsecond=0)


def recap(n: int, days_ago: float = 1, tags: Sequence[str] = ("Iran",)) -> dict[str, object]:
    return {"title": f"Recap {n}: Iran Moves in Syria", "guid": f"r{n}",
            "link": f"https://news.example/r/{n}", "tags": list(tags),
            "date": format_datetime(NOW - timedelta(days=days_ago)),
            "summary": f"<p>Summary {n}.</p>"}


def read_outbox(folder: Path) -> list[EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted(folder.rglob("*.eml"))]


@pytest.fixture
def newsroom(any_ctx: Context, feed_server: FeedServer) -> Context:
    """A list with three active subscribers and one who left, and a feed of two recaps."""
    url = feed_server.add("/feed.xml", body=rss([recap(1), recap(2, tags=["Syria"]),
                                                 recap(3, days_ago=10)]))
    add_feed(any_ctx.db, url, "Desk")
    create_list(any_ctx.db, "weekly", "The Weekly Recap")
    for address, name in [("Alice@Example.org", "Alice"), ("bob@example.net", ""),
                          ("layla@example.com", "ليلى"), ("gone@example.com", "Gone")]:
        add_subscriber(any_ctx.db, "weekly", address, name=name)
    remove_subscriber(any_ctx.db, "weekly", "gone@example.com")
    return any_ctx


def test_send_writes_one_complete_email_per_active_subscriber(newsroom: Context) -> None:
    result = run_list(newsroom, RunRequest("weekly"))
    assert result.send is not None and result.send.finished
    assert result.send.counts["accepted"] == 3
    messages = read_outbox(Path(newsroom.settings.outbox_dir))
    assert sorted(str(m["To"]) for m in messages) == [
        "Alice <Alice@example.org>", "bob@example.net", "ليلى <layla@example.com>"]
    for msg in messages:
        assert msg.get_content_type() == "multipart/alternative"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        assert all(p.get_content_charset() == "utf-8" for p in parts)
        for header in ("Message-ID", "Date", "From", "Subject", "List-Id"):
            assert msg[header], header
        assert msg["From"] == "The Desk <desk@news.example>"
        assert msg["List-Id"] == "The Weekly Recap <weekly.news.example>"
        unsubscribe = str(msg["List-Unsubscribe"])
        assert unsubscribe.startswith("<https://digest.example/u/") and unsubscribe.endswith(">")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = unsubscribe[1:-1]
        html = parts[1].get_content()
        text = parts[0].get_content()
        # The recipient's own link, in both parts; no placeholder left.
        assert f'href="{url}"' in html and url in text
        assert "__DIGEST_" not in html and "__DIGEST_" not in text
        token = url.rsplit("/", 1)[1]
        assert newsroom.tokens.read("unsubscribe", token) > 0
        assert "@" not in token  # no address in clear
        assert "Recap 1: Iran Moves in Syria" in html and "Recap 3" not in html
    # Each recipient's link is theirs alone.
    assert len({str(m["List-Unsubscribe"]) for m in messages}) == 3
    assert len({str(m["Message-ID"]) for m in messages}) == 3


def test_sending_again_sends_nothing_twice(newsroom: Context, feed_server: FeedServer) -> None:
    first = run_list(newsroom, RunRequest("weekly"))
    assert first.send is not None
    again = run_list(newsroom, RunRequest("weekly"))
    assert again.nothing_new and again.send is None
    outbox = Path(newsroom.settings.outbox_dir)
    assert len(read_outbox(outbox)) == 3
    # A new recap makes a second issue holding only it.
    feed_server.routes["/feed.xml"] = Route(body=rss([recap(1), recap(2), recap(4)]))
    second = run_list(newsroom, RunRequest("weekly"))
    assert second.send is not None and second.send.number == 2
    with newsroom.db.session() as s:
        issue = s.get(Issue, second.send.issue_id)
        assert issue is not None
        assert "Recap 4" in issue.html and "Recap 1:" not in issue.html
    assert len(read_outbox(outbox)) == 6


def test_preview_changes_nothing(newsroom: Context) -> None:
    from digest.services.feeds.collect import collect
    collect(newsroom.db, newsroom.settings)
    draft = draft_issue(newsroom, "weekly")
    assert draft is not None and draft.number == 1
    assert {p.item.title for s in draft.sections for p in s.entries} == {
        "Recap 1: Iran Moves in Syria", "Recap 2: Iran Moves in Syria"}
    with newsroom.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Issue)) == 0
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
    assert not Path(newsroom.settings.outbox_dir).exists()


def test_lookback_uses_first_seen_when_an_entry_has_no_date(newsroom: Context,
                                                            feed_server: FeedServer) -> None:
    feed_server.routes["/feed.xml"] = Route(body=rss([{"title": "Undated recap", "guid": "u1",
                                                       "link": "https://news.example/u1"}]))
    result = run_list(newsroom, RunRequest("weekly"))
    assert result.send is not None
    later = NOW + timedelta(days=8)
    assert run_list(newsroom, RunRequest("weekly"), now=later).nothing_new


class CrashingOutbox(OutboxTransport):
    """Writes the first ``survive`` messages of its ``crash_on``-th batch, then dies."""

    def __init__(self, directory: Path, crash_on: int, survive: int) -> None:
        super().__init__(directory)
        self.batches = 0
        self.crash_on = crash_on
        self.survive = survive

    def send_batch(self, issue: OutgoingIssue,
                   recipients: Sequence[OutgoingRecipient]) -> list[Outcome]:
        self.batches += 1
        if self.batches == self.crash_on:
            super().send_batch(issue, recipients[: self.survive])
            raise SystemExit("killed mid-batch")
        return super().send_batch(issue, recipients)


def test_an_interrupted_send_resumes_without_sending_twice(any_ctx: Context,
                                                           feed_server: FeedServer) -> None:
    ctx = any_ctx
    ctx.settings = ctx.settings.replace(batch_size=3)
    add_feed(ctx.db, feed_server.add("/f.xml", body=rss([recap(1)])))
    create_list(ctx.db, "weekly")
    for i in range(8):
        add_subscriber(ctx.db, "weekly", f"reader{i}@example.org")
    outbox = Path(ctx.settings.outbox_dir)
    crashing = CrashingOutbox(outbox, crash_on=2, survive=1)
    with pytest.raises(SystemExit):
        run_list(ctx, RunRequest("weekly"), transport=crashing)
    [issue_id] = _issue_ids(ctx)
    # Batch 1 went out; batch 2 was being handed over when the process died.
    assert counts(ctx, issue_id) == {"accepted": 3, "pending": 5}
    with ctx.db.session() as s:
        assert list(s.scalars(select(SendBatch.status).order_by(SendBatch.id))) == [
            "done", "sending", "pending"]
    # Someone leaves before the rest goes out: they are skipped, not sent to.
    remove_subscriber(ctx.db, "weekly", "reader7@example.org")
    # Run again: the outbox proves which in-flight messages were written.
    resumed = run_list(ctx, RunRequest("weekly"))
    assert resumed.resumed and resumed.send is not None
    # Batch 1: 3 accepted. Batch 2 (in flight): 1 written, so accepted; 2 uncertain.
    # Batch 3: reader6 sent, reader7 skipped.
    assert resumed.send.counts == {"accepted": 5, "uncertain": 2, "skipped": 1}
    files = sorted(p.name for p in outbox.rglob("*.eml"))
    assert len(files) == 5
    assert not any("reader7" in f for f in files)
    # Resending the uncertain ones completes the issue: everyone exactly once.
    again = run_list(ctx, RunRequest("weekly", resend_uncertain=True))
    assert again.send is not None and again.send.counts == {"accepted": 7, "skipped": 1}
    people = sorted(p.name.split("-", 1)[1] for p in outbox.rglob("*.eml"))
    assert people == [f"reader{i}@example.org.eml" for i in range(7)]
    assert run_list(ctx, RunRequest("weekly")).nothing_new


def test_uncertain_deliveries_are_reported_and_resent_only_when_asked(
        ctx: Context, feed_server: FeedServer, locmem: type) -> None:
    ctx.settings = ctx.settings.replace(batch_size=2)
    add_feed(ctx.db, feed_server.add("/f.xml", body=rss([recap(1)])))
    create_list(ctx.db, "weekly")
    for i in range(4):
        add_subscriber(ctx.db, "weekly", f"r{i}@example.org")

    class Dies(OutboxTransport):
        def send_batch(self, issue: OutgoingIssue,
                       recipients: Sequence[OutgoingRecipient]) -> list[Outcome]:
            raise SystemExit("gone before anything was written")

    with pytest.raises(SystemExit):
        run_list(ctx, RunRequest("weekly"), transport=Dies(Path(ctx.settings.outbox_dir)))
    resumed = run_list(ctx, RunRequest("weekly"), transport=locmem())
    assert resumed.send is not None
    assert resumed.send.counts["uncertain"] == 2 and resumed.send.counts["accepted"] == 2
    assert not resumed.send.ok
    assert {addr for addr, _ in resumed.send.failures} == {"r0@example.org", "r1@example.org"}
    assert len(locmem.outbox) == 2
    # Resent only when asked.
    again = run_list(ctx, RunRequest("weekly", resend_uncertain=True), transport=locmem())
    assert again.send is not None and again.send.counts["accepted"] == 4
    with ctx.db.session() as s:  # two hand-overs for the resent, one for the rest
        assert sorted(s.scalars(select(Delivery.attempts))) == [1, 1, 2, 2]
    assert sorted(str(m["To"]) for m in locmem.outbox) == [f"r{i}@example.org" for i in range(4)]


def _issue_ids(ctx: Context) -> list[int]:
    with ctx.db.session() as s:
        return list(s.scalars(select(Issue.id)))


def test_two_sends_racing_for_one_issue_send_it_once(newsroom: Context,
                                                      locmem: type) -> None:
    from digest.services.delivery.recording import IssueTaken, record_issue
    from digest.services.feeds.collect import collect
    collect(newsroom.db, newsroom.settings)
    mine = draft_issue(newsroom, "weekly")
    theirs = draft_issue(newsroom, "weekly")
    assert mine is not None and theirs is not None
    record_issue(newsroom, theirs)  # the other process wins the race
    with pytest.raises(IssueTaken):
        record_issue(newsroom, mine)
    result = run_list(newsroom, RunRequest("weekly", collect_first=False), transport=locmem())
    assert result.send is not None and result.send.counts == {"accepted": 3}
    assert len(locmem.outbox) == 3
    assert run_list(newsroom, RunRequest("weekly"), transport=locmem()).nothing_new


def test_a_sandbox_run_never_touches_an_unfinished_issue(newsroom: Context) -> None:
    from digest.errors import DigestError
    from digest.services.delivery.recording import record_issue
    from digest.services.feeds.collect import collect
    collect(newsroom.db, newsroom.settings)
    draft = draft_issue(newsroom, "weekly")
    assert draft is not None
    record_issue(newsroom, draft)
    with pytest.raises(DigestError, match="still being sent"):
        run_list(newsroom, RunRequest("weekly", sandbox=True))
    with newsroom.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)
                        .where(Delivery.status == "pending")) == 3


def test_forgetting_a_person_or_deleting_a_list_leaves_no_deliveries(newsroom: Context) -> None:
    from subscribers.lists import delete_list
    from subscribers.subscriptions import forget_subscriber
    run_list(newsroom, RunRequest("weekly"))
    with newsroom.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 3
    forget_subscriber(newsroom.db, "bob@example.net")
    with newsroom.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 2
    delete_list(newsroom.db, "weekly")
    with newsroom.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert s.scalar(select(func.count()).select_from(Issue)) == 0
