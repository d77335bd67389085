"""What the editors' dashboard shows: lists, schedules, recent issues, feed health."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select

from digest.services.delivery.reports import IssueRow, issue_rows
from digest.services.operations.status import FeedHealth, feed_health
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.models import Entry
from schedules.service import RequestedRunView, ScheduleView, list_schedules, requested_runs
from subscribers.lists import ListSummary, summarize_lists


@dataclass(frozen=True)
class Dashboard:
    """Everything on the dashboard."""

    lists: list[ListSummary]
    schedules: list[ScheduleView]
    issues: list[IssueRow]
    feeds: list[FeedHealth]
    per_day: list[tuple[date, int]]  # new entries per day, oldest first
    sends: list[RequestedRunView]  # the latest "Send now" runs, newest first

    @property
    def per_day_max(self) -> int:
        """The tallest bar of the chart (at least 1)."""
        return max([n for _, n in self.per_day] + [1])


def dashboard(ctx: Context, *, now: datetime | None = None, days: int = 30) -> Dashboard:
    """Gather the dashboard (a handful of queries)."""
    now = now or utcnow()
    since = now - timedelta(days=days)
    with ctx.db.session() as session:
        seen = session.scalars(select(Entry.first_seen_at)
                               .where(Entry.first_seen_at >= since)).all()
        feeds = feed_health(session, now)
    by_day = Counter(seen_at.date() for seen_at in seen)
    first = (now - timedelta(days=days - 1)).date()
    per_day = [(first + timedelta(days=i), by_day.get(first + timedelta(days=i), 0))
               for i in range(days)]
    return Dashboard(
        lists=summarize_lists(ctx.db), schedules=list_schedules(ctx.db, now=now, count=1),
        issues=issue_rows(ctx, limit=10),
        feeds=feeds,
        per_day=per_day, sends=requested_runs(ctx.db, limit=5))
