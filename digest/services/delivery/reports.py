"""Read-only views of issues and their deliveries, for the CLI and the web app.

`digest issues list/show` and the web app's pages import this module: it loads nothing of
the sending path (transports, rendering, metrics).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import load_only

from digest.services.storage.context import Context
from digest.services.storage.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    deliveries_by_status,
    get_issue,
)
from digest.services.storage.subscriber_models import MailingList, Subscriber
from subscribers.lists import get_list


def counts(ctx: Context, issue_id: int) -> Counter[str]:
    """Deliveries of an issue by status, counted now."""
    with ctx.db.session() as session:
        return deliveries_by_status(session, issue_id)


def failures(ctx: Context, issue_id: int, limit: int = 50, *,
             tally: Counter[str] | None = None) -> list[tuple[str, str]]:
    """(address, reason) of failed and uncertain deliveries of an issue.

    Given the issue's ``tally``, an issue with none looks at no delivery.
    """
    if tally is not None and not tally[DeliveryStatus.FAILED] \
            and not tally[DeliveryStatus.UNCERTAIN]:
        return []
    with ctx.db.session() as session:
        return [(email, f"{status}: {error or ''}".strip(": ")) for email, status, error in
                session.execute(
                    select(Subscriber.email, Delivery.status, Delivery.error)
                    .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                    .where(Delivery.issue_id == issue_id,
                           Delivery.status.in_((DeliveryStatus.FAILED,
                                                DeliveryStatus.UNCERTAIN)))
                    .order_by(Delivery.id).limit(limit))]


@dataclass(frozen=True)
class IssueRow:
    """An issue as lists of issues show it, with its delivery counts."""

    id: int
    list_name: str
    number: int
    subject: str
    status: str
    created_at: datetime
    accepted: int
    failed: int
    uncertain: int

    @property
    def created(self) -> str:
        """When the issue was made, to the minute (UTC)."""
        return self.created_at.strftime("%Y-%m-%d %H:%M")


def issue_rows(ctx: Context, list_name: str | None = None,
               limit: int | None = None) -> list[IssueRow]:
    """One row per issue (the newest ``limit``), newest first, with delivery counts."""
    with ctx.db.session() as session:
        query = (select(Issue, MailingList.name).join(MailingList,
                                                      MailingList.id == Issue.list_id)
                 .options(load_only(Issue.id, Issue.number, Issue.subject, Issue.status,
                                    Issue.created_at, Issue.counts))
                 .order_by(Issue.id.desc()).limit(limit))
        if list_name:
            query = query.where(Issue.list_id == get_list(session, list_name).id)
        issues = session.execute(query).all()
    rows: list[IssueRow] = []
    for issue, name in issues:
        # Counted at the end of each send run; an issue being sent is counted now.
        t = counts(ctx, issue.id) if issue.status == IssueStatus.SENDING \
            or issue.counts is None else issue.counts
        rows.append(IssueRow(issue.id, name, issue.number, issue.subject, issue.status,
                             issue.created_at, t.get(DeliveryStatus.ACCEPTED, 0),
                             t.get(DeliveryStatus.FAILED, 0),
                             t.get(DeliveryStatus.UNCERTAIN, 0)))
    return rows


def describe_issue(ctx: Context, issue_id: int) -> list[str]:
    """Lines describing one issue: what it held and how its delivery went."""
    with ctx.db.session() as session:
        issue, mailing_list = get_issue(session, issue_id)
    tally = counts(ctx, issue_id)
    lines = [
        f"Issue {issue.id}: {mailing_list.name} no. {issue.number}",
        f"Subject: {issue.subject}",
        f"Status: {issue.status}; created {issue.created_at:%Y-%m-%d %H:%M} UTC"
        + (f"; sent {issue.sent_at:%Y-%m-%d %H:%M} UTC" if issue.sent_at else ""),
        f"Window: {issue.window_start:%Y-%m-%d %H:%M} to {issue.window_end:%Y-%m-%d %H:%M} UTC",
        "Sections: " + ", ".join(f"{s['title']} ({s['count']})" for s in issue.sections),
        "Deliveries: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
        + f" (total {sum(tally.values())})",
    ]
    problems = failures(ctx, issue_id, tally=tally)
    if problems:
        lines.append("Failed or uncertain:")
        lines.extend(f"  {email}: {reason}" for email, reason in problems)
    return lines
