"""Deliver a recorded issue: one delivery record per subscriber, exactly once.

Every delivery moves pending → sending → accepted | failed | uncertain (or skipped,
for someone who left after the issue was built). Each step is committed before the
next network call, so a process stopped at any moment resumes without sending twice:
recipients of the batch in flight at the stop are checked with the transport where it
can tell, and otherwise reported uncertain — never silently resent.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update

from digest.context import Context
from digest.db import utcnow
from digest.errors import DeliveryError
from digest.issues import get_issue
from digest.messages import domain_of, format_sender
from digest.models import Delivery, Issue
from digest.rendering import Recipient, RenderedIssue
from digest.transports.base import (
    ACCEPTED,
    FAILED,
    UNCERTAIN,
    Outcome,
    OutgoingIssue,
    OutgoingRecipient,
    Transport,
)
from subscribers.models import MailingList, Subscriber, Subscription

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass
class SendReport:
    """Counts of one issue's deliveries after a send, with the failures named."""

    issue_id: int
    list_name: str
    number: int
    subject: str
    counts: Counter[str] = field(default_factory=Counter)
    sent_now: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    finished: bool = False
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing is uncertain."""
        return not self.counts[FAILED] and not self.counts[UNCERTAIN]


def outgoing_issue(mailing_list: MailingList, issue: Issue, ctx: Context, *,
                   sandbox: bool = False) -> OutgoingIssue:
    """The shared part of every message of an issue, from its record."""
    s = ctx.settings
    domain = domain_of(s.from_email)
    return OutgoingIssue(
        issue_id=issue.id, list_id=mailing_list.id, list_name=mailing_list.name,
        list_title=mailing_list.title, number=issue.number,
        rendered=RenderedIssue(issue.subject, issue.html, issue.text, ""),
        sender=format_sender(s.from_name, s.from_email), sender_email=s.from_email,
        reply_to=s.reply_to or None,
        headers={"List-Id": f"{mailing_list.title} <{mailing_list.name}.{domain}>",
                 "Precedence": "bulk", "Auto-Submitted": "auto-generated"},
        sandbox=sandbox)


def recipient_values(ctx: Context, subscription_id: int, name: str) -> Recipient:
    """The signed per-recipient links and the name, for the placeholders."""
    return Recipient(
        unsubscribe_url=ctx.url("u/" + ctx.tokens.make("unsubscribe", subscription_id)),
        preferences_url=ctx.url("p/" + ctx.tokens.make("preferences", subscription_id)),
        name=name)


def unsubscribe_headers(values: Recipient) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe headers for one recipient."""
    return {"List-Unsubscribe": f"<{values.unsubscribe_url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def make_recipient(ctx: Context, issue: OutgoingIssue, delivery_id: int, subscriber_id: int,
                   subscription_id: int, email: str, name: str) -> OutgoingRecipient:
    """One recipient of a batch with their links, headers and Message-ID."""
    values = recipient_values(ctx, subscription_id, name)
    domain = domain_of(issue.sender_email)
    return OutgoingRecipient(
        delivery_id=delivery_id, subscriber_id=subscriber_id, email=email, name=name,
        values=values, headers=unsubscribe_headers(values),
        message_id=f"<digest.{issue.list_name}.{issue.number}.{delivery_id}@{domain}>")


def _rows(ctx: Context, issue_id: int, status: str, limit: int | None = None,
          after: int = 0) -> list[tuple[int, int, int, str, str, str]]:
    with ctx.db.session() as session:
        query = (select(Delivery.id, Delivery.subscriber_id, Delivery.subscription_id,
                        Subscriber.email, Subscriber.name, Subscription.status)
                 .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                 .join(Subscription, Subscription.id == Delivery.subscription_id)
                 .where(Delivery.issue_id == issue_id, Delivery.status == status,
                        Delivery.id > after)
                 .order_by(Delivery.id))
        if limit:
            query = query.limit(limit)
        return [tuple(r) for r in session.execute(query).all()]  # type: ignore[misc]


def _set_status(ctx: Context, ids: Sequence[int], status: str, *, now: datetime,
                error: str | None = None, message_id: str | None = None,
                only_from: str | None = None, count_attempt: bool = False) -> list[int]:
    """Move deliveries to ``status``; return the ids that actually moved."""
    if not ids:
        return []
    values: dict[str, object] = {"status": status, "updated_at": now}
    if error is not None:
        values["error"] = error[:2000]
    if message_id is not None:
        values["message_id"] = message_id
    if count_attempt:
        values["attempts"] = Delivery.attempts + 1
    moved: list[int] = []
    with ctx.db.session() as session:
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            query = update(Delivery).where(Delivery.id.in_(chunk)).values(**values)
            if only_from is not None:
                query = query.where(Delivery.status == only_from)
            moved.extend(session.scalars(query.returning(Delivery.id)).all())
    return moved


def recover_interrupted(ctx: Context, issue: OutgoingIssue, transport: Transport,
                        now: datetime) -> tuple[int, int]:
    """Settle deliveries left 'sending' by a stopped process: (confirmed, uncertain)."""
    rows = _rows(ctx, issue.issue_id, "sending")
    if not rows:
        return 0, 0
    recipients = [make_recipient(ctx, issue, d, sub, subn, email, name)
                  for d, sub, subn, email, name, _ in rows]
    confirmed = transport.already_sent(issue, recipients)
    _set_status(ctx, sorted(confirmed), ACCEPTED, now=now, only_from="sending")
    unsure = [r.delivery_id for r in recipients if r.delivery_id not in confirmed]
    _set_status(ctx, unsure, UNCERTAIN, now=now, only_from="sending",
                error="the send stopped while this message was being handed over")
    if unsure:
        log.warning("issue %s: %d deliveries were in flight when a send stopped; marked "
                    "uncertain (resend with --resend-uncertain)", issue.issue_id, len(unsure))
    return len(confirmed), len(unsure)


def counts(ctx: Context, issue_id: int) -> Counter[str]:
    """Deliveries of an issue by status."""
    with ctx.db.session() as session:
        return Counter(dict(session.execute(
            select(Delivery.status, func.count()).where(Delivery.issue_id == issue_id)
            .group_by(Delivery.status)).all()))


def failures(ctx: Context, issue_id: int, limit: int = 50) -> list[tuple[str, str]]:
    """(address, reason) of failed and uncertain deliveries of an issue."""
    with ctx.db.session() as session:
        return [(email, f"{status}: {error or ''}".strip(": ")) for email, status, error in
                session.execute(
                    select(Subscriber.email, Delivery.status, Delivery.error)
                    .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                    .where(Delivery.issue_id == issue_id,
                           Delivery.status.in_((FAILED, UNCERTAIN)))
                    .order_by(Delivery.id).limit(limit))]


def deliver(ctx: Context, issue_id: int, transport: Transport, *,
            resend_uncertain: bool = False, sandbox: bool = False,
            on_progress: ProgressCallback | None = None,
            should_stop: Callable[[], bool] | None = None,
            now: Callable[[], datetime] = utcnow) -> SendReport:
    """Send an issue's pending deliveries in batches; resumable at any point."""
    with ctx.db.session() as session:
        issue_row, mailing_list = get_issue(session, issue_id)
        issue = outgoing_issue(mailing_list, issue_row, ctx, sandbox=sandbox)
    report = SendReport(issue_id, issue.list_name, issue.number, issue.rendered.subject)
    batch_size = ctx.settings.batch_size

    with transport:
        recover_interrupted(ctx, issue, transport, now())
        if resend_uncertain:
            with ctx.db.session() as session:
                session.execute(update(Delivery).where(
                    Delivery.issue_id == issue_id, Delivery.status == UNCERTAIN)
                    .values(status="pending", error=None, updated_at=now()))
        before = counts(ctx, issue_id)
        total = sum(before.values())
        done = total - before["pending"]
        if on_progress:
            on_progress(done, total)
        last_id = 0
        while True:
            if should_stop is not None and should_stop():
                report.stopped = True
                break
            rows = _rows(ctx, issue_id, "pending", batch_size, after=last_id)
            if not rows:
                break
            last_id = rows[-1][0]
            left = [r[0] for r in rows if r[5] != "active"]
            _set_status(ctx, left, "skipped", now=now(), only_from="pending",
                        error="no longer subscribed when the batch was sent")
            wanted = {r[0]: r for r in rows if r[5] == "active"}
            claimed = set(_set_status(ctx, list(wanted), "sending", now=now(),
                                      only_from="pending", count_attempt=True))
            recipients = [make_recipient(ctx, issue, d, sub, subn, email, name)
                          for d, (_, sub, subn, email, name, _) in wanted.items()
                          if d in claimed]
            if recipients:
                try:
                    outcomes = transport.send_batch(issue, recipients)
                except DeliveryError:
                    # The transport knows nothing left: the batch can be tried again.
                    _set_status(ctx, [r.delivery_id for r in recipients], "pending",
                                now=now(), only_from="sending")
                    raise
                _record(ctx, outcomes, now())
                report.sent_now += sum(1 for o in outcomes if o.status == ACCEPTED)
            done += len(rows)
            if on_progress:
                on_progress(done, total)

    report.counts = counts(ctx, issue_id)
    report.failures = failures(ctx, issue_id)
    if not report.counts["pending"] and not report.counts["sending"]:
        with ctx.db.session() as session:
            row = session.get(Issue, issue_id)
            if row is not None and row.status != "sent":
                row.status, row.sent_at = "sent", now()
        report.finished = True
    return report


def _record(ctx: Context, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Write each outcome onto its delivery record, in one transaction."""
    rows = [{"id": o.delivery_id, "status": o.status, "message_id": o.message_id,
             "error": o.error[:2000] if o.error else None, "updated_at": now}
            for o in outcomes]
    if rows:
        with ctx.db.session() as session:
            session.execute(update(Delivery), rows)
