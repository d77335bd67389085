"""`digest status`: the state of the whole service on one screen, and what needs a person.

Everything here is read-only and cheap: one query per table, and per list only its last
issue's deliveries are counted (from the counts stored at the end of its last send when
it is finished).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.services.storage.context import Context
from digest.services.storage.db import HEAD_REVISION, schema_problem, schema_revision, utcnow
from digest.services.storage.models import (
    DeliveryStatus,
    Entry,
    Feed,
    FeedStatus,
    Issue,
    IssueStatus,
    SendBatch,
    Skip,
    deliveries_by_status,
    held_batches,
)
from digest.services.storage.schedule_models import RunStatus, ScheduleRun
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import MailingList, Subscription, Suppression
from schedules.service import list_schedules

FEED_FAILING_DAYS = 3
WEEK = timedelta(days=7)


@dataclass(frozen=True)
class FeedHealth:
    """A feed's last fetches and what it gave: a row of `digest status` and of the
    editors' dashboard."""

    id: int
    name: str
    url: str
    last_fetched_at: datetime | None
    last_status: str | None  # a FeedStatus
    last_success: datetime | None
    last_error: str | None  # the last fetch's error, only while it fails
    warning: str | None  # what the parser said of the last body it read
    failures: int
    failing_since: datetime | None
    entries: int
    entries_this_week: int
    # Entries its last read did not store, by reason.
    skipped: dict[Skip, int] = field(default_factory=dict)

    @property
    def failing(self) -> bool:
        """Whether its last fetch failed."""
        return self.last_status == FeedStatus.ERROR


def feed_health(session: Session, now: datetime) -> list[FeedHealth]:
    """Every feed with its last fetches and its entries, all and of the week to ``now``
    (two queries)."""
    counts = {feed_id: (total, week) for feed_id, total, week in session.execute(
        select(Entry.feed_id, func.count(),
               func.count().filter(Entry.first_seen_at >= now - WEEK))
        .group_by(Entry.feed_id))}
    rows = []
    for feed in session.scalars(select(Feed).order_by(Feed.id)):
        failing = feed.last_status == FeedStatus.ERROR
        total, week = counts.get(feed.id, (0, 0))
        rows.append(FeedHealth(feed.id, feed.name, feed.url, feed.last_fetched_at,
                               feed.last_status, feed.last_ok_at,
                               feed.last_error if failing else None,
                               None if failing else feed.last_error, feed.failures or 0,
                               feed.failing_since, total, week, dict(feed.skipped or {})))
    return rows


@dataclass
class ScheduleHealth:
    name: str
    list: str
    paused: bool
    next_fire: datetime | None
    last_slot: str | None
    last_outcome: str | None
    last_message: str


@dataclass
class ListHealth:
    name: str
    active: int
    unconfirmed: int
    last_issue: int | None
    last_issue_status: str | None
    last_issue_at: datetime | None
    accepted: int = 0
    failed: int = 0
    uncertain: int = 0
    pending: int = 0


@dataclass
class Status:
    database: str
    backend: str
    schema: str | None
    schema_at_head: bool
    feeds: list[FeedHealth] = field(default_factory=list)
    schedules: list[ScheduleHealth] = field(default_factory=list)
    lists: list[ListHealth] = field(default_factory=list)
    suppressions_this_week: int = 0
    needs_attention: list[str] = field(default_factory=list)
    # Worth knowing, but nothing is wrong: they do not make `digest status` exit 1.
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.needs_attention

    def as_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value
        return {**plain(asdict(self)), "healthy": self.healthy}


def gather(ctx: Context, now: datetime | None = None) -> Status:
    """The state of the service as `digest status` shows it."""
    now = now or utcnow()
    revision = schema_revision(ctx.db.engine)
    status = Status(ctx.db.engine.url.render_as_string(hide_password=True),
                    ctx.db.engine.dialect.name, revision, revision == HEAD_REVISION)
    attention = status.needs_attention
    problem = schema_problem(revision)
    if problem:
        attention.append(problem)
    with ctx.db.session() as session:
        week_ago = now - WEEK
        status.feeds.extend(feed_health(session, now))
        attention.extend(
            f"feed {feed.url} has failed for {(now - feed.failing_since).days} days "
            f"({feed.failures} fetches in a row): {feed.last_error}"
            for feed in status.feeds if feed.failing_since
            and now - feed.failing_since >= timedelta(days=FEED_FAILING_DAYS))

        last_runs: dict[int, ScheduleRun] = {}
        for past in session.scalars(select(ScheduleRun).order_by(ScheduleRun.started_at)):
            last_runs[past.schedule_id] = past
        waiting_ids = set(session.scalars(select(ScheduleRun.schedule_id)
                                          .where(ScheduleRun.status == RunStatus.WAITING)))

        lists = session.scalars(select(MailingList).order_by(MailingList.name)).all()
        by_status: dict[int, Counter[str]] = {}
        for list_id, sub_status, n in session.execute(
                select(Subscription.list_id, Subscription.status, func.count())
                .group_by(Subscription.list_id, Subscription.status)):
            by_status.setdefault(list_id, Counter())[sub_status] = n
        last_issue_ids = select(func.max(Issue.id)).where(
            Issue.status != IssueStatus.SANDBOX).group_by(Issue.list_id)
        last_issues = {i.list_id: i for i in session.scalars(
            select(Issue).where(Issue.id.in_(last_issue_ids)))}
        for mailing_list in lists:
            subs = by_status.get(mailing_list.id, Counter())
            issue = last_issues.get(mailing_list.id)
            health = ListHealth(mailing_list.name, subs[SubscriptionStatus.ACTIVE],
                                subs[SubscriptionStatus.PENDING],
                                issue.number if issue else None,
                                issue.status if issue else None,
                                (issue.sent_at or issue.created_at) if issue else None)
            if issue is not None:
                tally = (Counter(issue.counts or {}) if issue.status == IssueStatus.SENT
                         else deliveries_by_status(session, issue.id))
                health.accepted = tally[DeliveryStatus.ACCEPTED]
                health.failed = tally[DeliveryStatus.FAILED]
                health.uncertain = tally[DeliveryStatus.UNCERTAIN]
                health.pending = tally[DeliveryStatus.PENDING]
                if health.uncertain:
                    attention.append(
                        f"issue {issue.number} of {mailing_list.name}: {health.uncertain} "
                        "deliveries are uncertain; check SendGrid's activity, then `digest "
                        f"send --list {mailing_list.name} --resend-uncertain` if needed")
                if issue.status == IssueStatus.SENDING and not _held(session, issue.id, now):
                    attention.append(
                        f"issue {issue.number} of {mailing_list.name} stopped while sending "
                        f"({health.pending} not sent yet): `digest send --list "
                        f"{mailing_list.name}` resumes it")
            status.lists.append(health)
        status.suppressions_this_week = session.scalar(
            select(func.count()).select_from(Suppression)
            .where(Suppression.created_at >= week_ago)) or 0

    if not ctx.settings.sendgrid_webhook_public_key:
        status.notes.append(
            "the SendGrid webhook (/webhooks/sendgrid) refuses every event, so no bounce "
            "or spam report is applied: set sendgrid_webhook_public_key to the "
            "verification key SendGrid shows under Settings → Mail Settings → Signed "
            "Event Webhook (in digest.toml, or DIGEST_SENDGRID_WEBHOOK_PUBLIC_KEY)")
    for view in list_schedules(ctx.db, now=now, count=1):
        run = last_runs.get(view.id)
        status.schedules.append(ScheduleHealth(
            view.name, view.list_name, view.paused,
            view.next_fires[0] if view.next_fires else None,
            run.slot_key if run else None, run.status if run else None,
            run.message if run else ""))
        if view.id in waiting_ids:
            attention.append(f"schedule {view.name}: an issue of {view.list_name} is held "
                             "for approval (editor's issue page, or `digest send`)")
        elif run is not None and run.status == RunStatus.FAILED:
            attention.append(f"schedule {view.name}: its last run failed: {run.message}")
    return status


def _held(session: Any, issue_id: int, now: datetime) -> bool:
    """Whether some sender is working on the issue now (a batch held, its lease alive)."""
    return bool(session.scalar(held_batches(issue_id).where(SendBatch.lease_until > now)))
