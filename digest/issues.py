"""Build issues (editions) from collected entries, and record them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.context import Context
from digest.db import utcnow
from digest.errors import ConfigError, DigestError, NotFoundError
from digest.grouping import Item, KeywordConfig, Section, group
from digest.models import Delivery, Entry, Feed, Issue, IssueEntry, SendBatch
from digest.rendering import IssueContent, Recipient, RenderedIssue, Sender, long_date
from subscribers.lists import get_list
from subscribers.models import MailingList, Subscription

SENT_OR_SENDING = ("sending", "sent")


@dataclass(frozen=True)
class Draft:
    """The next issue of a list, grouped and rendered, not yet recorded."""

    list_id: int
    list_name: str
    list_title: str
    number: int
    items: list[Item]
    sections: list[Section]
    content: IssueContent
    rendered: RenderedIssue
    window_start: datetime
    window_end: datetime


def keyword_config(ctx: Context) -> KeywordConfig:
    """The grouping configuration from the settings."""
    s = ctx.settings
    return KeywordConfig.from_settings(s.keyword_order, s.keyword_aliases, s.keyword_rules,
                                       s.untagged_section)


def held_entry_ids(list_id: int) -> Select[Any]:
    """Entry ids already in an issue of the list that was sent (or is being sent)."""
    return (select(IssueEntry.entry_id).join(Issue, Issue.id == IssueEntry.issue_id)
            .where(Issue.list_id == list_id, Issue.status.in_(SENT_OR_SENDING)))


def new_items(session: Session, list_id: int, *, since: datetime) -> list[Item]:
    """Entries dated since ``since`` that no earlier issue of the list held."""
    rows = session.execute(
        select(Entry, Feed.name).outerjoin(Feed, Feed.id == Entry.feed_id)
        .where(Entry.dated_at >= since, Entry.id.not_in(held_entry_ids(list_id)))
        .order_by(Entry.dated_at.desc(), Entry.id)).all()
    return [Item(e.id, e.title, e.link, e.summary_html, tuple(e.keywords), e.dated_at,
                 source or "", e.author) for e, source in rows]


def make_subject(template: str, *, list_title: str, date: datetime,
                 sections: list[Section]) -> str:
    """Fill the subject template; an unknown field is a configuration error."""
    names = [s.title for s in sections if s.key]
    top = ", ".join(names[:3]) if names else "this week's recaps"
    try:
        subject = template.format(list_title=list_title, date=long_date(date),
                                  count=sum(len(s.entries) for s in sections),
                                  top_sections=top)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"cannot fill the subject template: {e}",
                          key="subject_template") from e
    return " ".join(subject.split())[:250]


def archive_path(list_name: str, number: int) -> str:
    """Path of an issue's page in the web archive."""
    return f"archive/{list_name}/{number}"


def draft_issue(ctx: Context, list_name: str, *, now: datetime | None = None,
                subject: str | None = None, intro: str = "") -> Draft | None:
    """The next issue of a list, or None when nothing is new. Changes nothing."""
    now = now or utcnow()
    since = now - timedelta(days=ctx.settings.lookback_days)
    with ctx.db.session() as session:
        mailing_list = get_list(session, list_name)
        items = new_items(session, mailing_list.id, since=since)
        number = (session.scalar(select(func.max(Issue.number))
                                 .where(Issue.list_id == mailing_list.id)) or 0) + 1
        list_id, list_title = mailing_list.id, mailing_list.title
    if not items:
        return None
    sections = group(items, keyword_config(ctx))
    s = ctx.settings
    content = IssueContent(
        list_name=list_name, list_title=list_title, number=number,
        subject=subject or make_subject(s.subject_template, list_title=list_title, date=now,
                                        sections=sections),
        date=now, sections=sections, intro=intro,
        sender=Sender(s.from_name, s.from_email, s.postal_address),
        view_url=ctx.url(archive_path(list_name, number)))
    rendered = ctx.renderer.render_issue(content)
    return Draft(list_id, list_name, list_title, number, items, sections, content, rendered,
                 since, now)


def write_preview_files(ctx: Context, draft: Draft, html_path: Path,
                        text_path: Path | None = None) -> None:
    """Write a draft's HTML (and text) as a sample reader would get it."""
    sample = Recipient(ctx.url("u/preview"), ctx.url("p/preview"), "reader")
    html, text = draft.rendered.personalize(sample)
    html_path.write_text(html, encoding="utf-8")
    if text_path is not None:
        text_path.write_text(text, encoding="utf-8")


def section_summary(sections: list[Section]) -> list[dict[str, Any]]:
    """Sections as stored with an issue: title, key and entry count."""
    return [{"title": s.title, "key": s.key, "count": len(s.entries)} for s in sections]


class IssueTaken(DigestError):
    """Another process recorded the same issue of the list a moment earlier."""


def record_issue(ctx: Context, draft: Draft, *, now: datetime | None = None,
                 status: str = "sending") -> int:
    """Record the issue, its entries, and a pending delivery per active subscriber.

    One transaction: an issue exists only together with its whole audience. Raise
    :class:`IssueTaken` when another process recorded this issue number first.
    """
    try:
        return _record_issue(ctx, draft, now or utcnow(), status)
    except IntegrityError as e:
        raise IssueTaken(f"issue {draft.number} of {draft.list_name} was started by another "
                         "process at the same moment") from e


def _record_issue(ctx: Context, draft: Draft, now: datetime, status: str) -> int:
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
        session.execute(insert(Delivery).from_select(
            ["issue_id", "subscriber_id", "subscription_id", "status", "attempts",
             "updated_at"],
            select(literal(issue.id), Subscription.subscriber_id, Subscription.id,
                   literal("pending"), literal(0), literal(now, type_=Delivery.updated_at.type))
            .where(Subscription.list_id == draft.list_id, Subscription.status == "active")
            .order_by(Subscription.id)))
        add_batches(session, issue.id, ctx.settings.batch_size, now)
        return issue.id


def add_batches(session: Session, issue_id: int, size: int, now: datetime,
                status: str = "pending") -> None:
    """Cut an issue's deliveries in ``status`` into send batches of ``size`` by id."""
    numbered = (select(Delivery.id.label("id"),
                       ((func.row_number().over(order_by=Delivery.id) - 1) // size)
                       .label("batch"))
                .where(Delivery.issue_id == issue_id, Delivery.status == status)
                .subquery())
    session.execute(insert(SendBatch).from_select(
        ["issue_id", "first_id", "last_id", "status", "updated_at"],
        select(literal(issue_id), func.min(numbered.c.id), func.max(numbered.c.id),
               literal("pending"), literal(now, type_=SendBatch.updated_at.type))
        .group_by(numbered.c.batch)))


def unfinished_issue(session: Session, list_id: int, *,
                     with_uncertain: bool = False) -> Issue | None:
    """The list's issue whose sending was started and not finished, if any.

    With ``with_uncertain``, also the latest issue that has uncertain deliveries.
    """
    found = session.scalars(select(Issue).where(Issue.list_id == list_id,
                                                Issue.status == "sending")
                            .order_by(Issue.id)).first()
    if found is None and with_uncertain:
        found = session.scalars(
            select(Issue).where(Issue.list_id == list_id, Issue.id.in_(
                select(Delivery.issue_id).where(Delivery.status == "uncertain")))
            .order_by(Issue.id.desc())).first()
    return found


def get_issue(session: Session, issue_id: int) -> tuple[Issue, MailingList]:
    """An issue and its list by id, or a clear error."""
    issue = session.get(Issue, issue_id)
    if issue is None:
        raise NotFoundError(f"no issue {issue_id}", hint="`digest issues list` shows them")
    mailing_list = session.get(MailingList, issue.list_id)
    assert mailing_list is not None
    return issue, mailing_list


def audience_size(ctx: Context, list_id: int) -> int:
    """How many subscriptions of a list are active (would receive an issue now)."""
    with ctx.db.session() as session:
        return session.scalar(select(func.count()).select_from(Subscription).where(
            Subscription.list_id == list_id, Subscription.status == "active")) or 0


def discard_sandbox_issues(ctx: Context, list_id: int) -> None:
    """Delete a list's sandbox issues: they validated a send and must hold no entries."""
    with ctx.db.session() as session:
        for issue in session.scalars(select(Issue).where(Issue.list_id == list_id,
                                                         Issue.status == "sandbox")):
            session.delete(issue)
