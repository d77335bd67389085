"""Recording a built issue: the issue row, its entries and keyword segments' renderings,
one delivery per subscriber and the batches senders claim; and finding issues again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    case,
    cast,
    column,
    func,
    insert,
    literal,
    select,
    values,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.core.grouping import (
    Section,
)
from digest.errors import DigestError
from digest.services.building.drafts import Draft, plan_segments
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.models import (
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueEntry,
    IssueStatus,
    IssueVariant,
    SendBatch,
    delete_deliveries,
)
from digest.services.storage.states import SubscriptionStatus, WhenNothingMatches
from digest.services.storage.subscriber_models import Subscription
from digest.services.transports import batch_size


def section_summary(sections: list[Section]) -> list[dict[str, Any]]:
    """Sections as stored with an issue: title, key and entry count."""
    return [{"title": s.title, "key": s.key, "count": len(s.entries)} for s in sections]


class IssueTaken(DigestError):
    """Another process recorded the same issue of the list a moment earlier."""


def record_issue(ctx: Context, draft: Draft, *, now: datetime | None = None,
                 status: IssueStatus = IssueStatus.SENDING) -> int:
    """Record the issue, its entries, and a pending delivery per active subscriber.

    One transaction: an issue exists only together with its whole audience. Raise
    :class:`IssueTaken` when another process recorded this issue number first.
    """
    try:
        return _record_issue(ctx, draft, now or utcnow(), status)
    except IntegrityError as e:
        raise IssueTaken(f"issue {draft.number} of {draft.list_name} was started by another "
                         "process at the same moment") from e


def _record_issue(ctx: Context, draft: Draft, now: datetime, status: IssueStatus) -> int:
    with ctx.db.session() as session:
        issue = Issue(list_id=draft.list_id, number=draft.number, status=status,
                      subject=draft.rendered.subject, intro=draft.content.intro,
                      html=draft.rendered.html, text=draft.rendered.text,
                      sections=section_summary(draft.sections),
                      window_start=draft.window_start, window_end=draft.window_end,
                      created_at=now)
        session.add(issue)
        session.flush()
        session.add_all(IssueEntry(issue_id=issue.id, entry_id=placed.item.id,
                                   section=section.title, position=position)
                        for section in draft.sections
                        for position, placed in enumerate(section.entries))
        first, last = _add_deliveries(ctx, session, draft, issue.id, now)
        if first is not None and last is not None:
            add_batch_ranges(session, issue.id, first, last, batch_size(ctx.settings), now)
        return issue.id


NOTHING_MATCHES = "none of your keywords has anything new in this issue"


def _add_deliveries(ctx: Context, session: Session, draft: Draft, issue_id: int,
                    now: datetime) -> tuple[int | None, int | None]:
    """One delivery per active subscription, each with its segment's rendering; return
    the first and last delivery id.

    Subscribers without preferences get the full issue. Those whose keywords have
    nothing new are recorded as skipped (or get the full issue, if the list says so).
    """
    active = (Subscription.list_id == draft.list_id,
              Subscription.status == SubscriptionStatus.ACTIVE)
    segments = list(session.scalars(select(Subscription.segment).where(*active).distinct()))
    by_segment, variants = plan_segments(ctx, draft, segments)
    variant_ids: dict[tuple[str, ...], int] = {}
    for keys, variant in variants.items():
        row = IssueVariant(issue_id=issue_id, keys=";".join(keys),
                           subject=variant.rendered.subject, html=variant.rendered.html,
                           text=variant.rendered.text, sections=section_summary(variant.sections))
        session.add(row)
        session.flush()
        variant_ids[keys] = row.id
    skip = draft.when_nothing_matches == WhenNothingMatches.SKIP
    plan = [(segment, variant_ids[keys] if keys else None,
             DeliveryStatus.SKIPPED if keys is None and skip else DeliveryStatus.PENDING)
            for segment, keys in by_segment.items()]
    columns = ["issue_id", "subscriber_id", "subscription_id", "status", "error",
               "variant_id", "attempts", "updated_at"]
    stamp = literal(now, type_=Delivery.updated_at.type)
    if all(variant is None and status == DeliveryStatus.PENDING for _, variant, status in plan):
        # Everyone gets the full issue: no segment table to join, no sort (the list's
        # index already gives subscriptions in id order). Half the time of the join.
        add = insert(Delivery).from_select(columns, select(
            literal(issue_id), Subscription.subscriber_id, Subscription.id,
            literal(DeliveryStatus.PENDING, type_=String), literal(None, type_=String),
            literal(None, type_=Integer), literal(0), stamp)
            .where(*active).order_by(Subscription.id))
    else:
        # The segment → (variant, status) table goes in as one VALUES list, joined once.
        seg = values(column("segment", String), column("variant_id", Integer),
                     column("status", String), name="seg").data(plan).cte("seg")
        subs = (select(Subscription.subscriber_id, Subscription.id,
                       cast(seg.c.variant_id, Integer).label("variant_id"),
                       func.coalesce(seg.c.status, DeliveryStatus.PENDING).label("status"))
                .select_from(Subscription)
                .outerjoin(seg, seg.c.segment == Subscription.segment)
                .where(*active).subquery())
        add = insert(Delivery).from_select(columns, select(
            literal(issue_id), subs.c.subscriber_id, subs.c.id, subs.c.status,
            case((subs.c.status == DeliveryStatus.SKIPPED, NOTHING_MATCHES), else_=None),
            subs.c.variant_id, literal(0), stamp)
            .order_by(subs.c.variant_id, subs.c.id))
    if ctx.db.is_postgres:
        # The insert's own RETURNING gives the ids: looking them up again afterwards
        # means reading every new row (there is no index on the issue and id).
        added = add.returning(Delivery.id).cte("added")
        first, last = session.execute(select(func.min(added.c.id),
                                             func.max(added.c.id))).one()
    else:
        session.execute(add)
        # SQLite's (issue_id, subscriber_id) index holds the rowid: no table reads.
        first, last = session.execute(select(func.min(Delivery.id), func.max(Delivery.id))
                                      .where(Delivery.issue_id == issue_id)).one()
    return first, last


def add_batch_ranges(session: Session, issue_id: int, first: int, last: int, size: int,  # noqa: PLR0913 - one issue's id range, its batch size and the time
                     now: datetime) -> None:
    """Cut the ids ``first``…``last`` of a newly recorded issue into send batches of at most
    ``size`` deliveries (fewer where ids belong to another issue or were skipped)."""
    session.execute(insert(SendBatch), [
        {"issue_id": issue_id, "first_id": start, "last_id": min(last, start + size - 1),
         "status": BatchStatus.PENDING, "updated_at": now}
        for start in range(first, last + 1, size)])


def add_batches(session: Session, issue_id: int, size: int, now: datetime,
                status: DeliveryStatus = DeliveryStatus.PENDING) -> None:
    """Cut an issue's deliveries in ``status`` into send batches of ``size`` by id (for
    deliveries scattered through the issue: uncertain ones to send again)."""
    numbered = (select(Delivery.id.label("id"),
                       ((func.row_number().over(order_by=Delivery.id) - 1) // size)
                       .label("batch"))
                .where(Delivery.issue_id == issue_id, Delivery.status == status)
                .subquery())
    session.execute(insert(SendBatch).from_select(
        ["issue_id", "first_id", "last_id", "status", "updated_at"],
        select(literal(issue_id), func.min(numbered.c.id), func.max(numbered.c.id),
               literal(BatchStatus.PENDING, type_=String),
               literal(now, type_=SendBatch.updated_at.type))
        .group_by(numbered.c.batch)))


def unfinished_issue(session: Session, list_id: int, *,
                     with_uncertain: bool = False) -> Issue | None:
    """The list's issue whose sending was started and not finished, if any.

    With ``with_uncertain``, also the latest issue that has uncertain deliveries.
    """
    found = session.scalars(select(Issue).where(Issue.list_id == list_id,
                                                Issue.status == IssueStatus.SENDING)
                            .order_by(Issue.id)).first()
    if found is None and with_uncertain:
        # Each send run ends by counting its issue's deliveries onto the issue.
        latest = next((issue_id for issue_id, tally in session.execute(
            select(Issue.id, Issue.counts).where(Issue.list_id == list_id,
                                                 Issue.status == IssueStatus.SENT)
            .order_by(Issue.id.desc())) if (tally or {}).get(DeliveryStatus.UNCERTAIN)), None)
        found = session.get(Issue, latest) if latest is not None else None
    return found


def audience_size(ctx: Context, list_id: int) -> int:
    """How many subscriptions of a list are active (would receive an issue now)."""
    with ctx.db.session() as session:
        return session.scalar(select(func.count()).select_from(Subscription).where(
            Subscription.list_id == list_id,
            Subscription.status == SubscriptionStatus.ACTIVE)) or 0


def discard_sandbox_issues(ctx: Context, list_id: int) -> None:
    """Delete a list's sandbox issues: they validated a send and must hold no entries."""
    with ctx.db.session() as session:
        sandbox = select(Issue.id).where(Issue.list_id == list_id,
                                         Issue.status == IssueStatus.SANDBOX)
        delete_deliveries(session, issue_ids=sandbox)
        for issue in session.scalars(select(Issue).where(Issue.id.in_(sandbox))):
            session.delete(issue)
