"""Build issues (editions) from collected entries, and record them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Integer,
    Select,
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

from digest.context import Context
from digest.db import utcnow
from digest.errors import ConfigError, DigestError, NotFoundError
from digest.feeds import Image
from digest.grouping import (
    Item,
    KeywordConfig,
    Placed,
    Section,
    canonical_keys,
    group,
    keys_carried,
)
from digest.models import (
    Delivery,
    Entry,
    Feed,
    Issue,
    IssueEdit,
    IssueEntry,
    IssueVariant,
    SendBatch,
    delete_deliveries,
)
from digest.rendering import IssueContent, Recipient, RenderedIssue, Sender, long_date
from digest.transports import batch_size
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
    edit: EditView | None = None
    when_nothing_matches: str = "skip"


@dataclass(frozen=True)
class EditView:
    """An editor's changes to the next issue, as drafting applies them."""

    subject: str = ""
    intro: str = ""
    dropped: frozenset[int] = frozenset()
    moves: Mapping[int, str] = field(default_factory=dict)
    section_order: tuple[str, ...] = ()
    approved_by: str | None = None
    approved_at: datetime | None = None

    @classmethod
    def of(cls, row: IssueEdit) -> EditView:
        """From its stored row."""
        return cls(row.subject, row.intro, frozenset(row.dropped),
                   {int(k): v for k, v in row.moves.items()}, tuple(row.section_order),
                   row.approved_by, row.approved_at)


@dataclass(frozen=True)
class Variant:
    """An issue as one keyword segment gets it."""

    keys: tuple[str, ...]
    sections: list[Section]
    rendered: RenderedIssue


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
                 source or "", e.author, e.lead or "",
                 Image(e.image_url, e.image_alt or "", e.image_width, e.image_height)
                 if e.image_url else None,
                 tuple((t, u) for t, u in e.related or ()))
            for e, source in rows]


def list_look(mailing_list: MailingList) -> dict[str, Any]:
    """How a list's emails look, as IssueContent fields."""
    logo = (Image(mailing_list.logo_url, mailing_list.logo_alt or mailing_list.title,
                  mailing_list.logo_width, mailing_list.logo_height)
            if mailing_list.logo_url else None)
    parts = tuple(p for p in (mailing_list.entry_parts or "").split(",") if p)
    return {"language": mailing_list.language or "en", "logo": logo, "parts": parts,
            "lead_max_chars": mailing_list.lead_max_chars or 300}


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


def apply_edit(sections: list[Section], edit: EditView | None) -> list[Section]:
    """An editor's moves and section order applied to grouped sections."""
    if edit is None or not (edit.moves or edit.section_order):
        return sections
    titles = {s.key: s.title for s in sections}
    entries: dict[str, list[Placed]] = {s.key: list(s.entries) for s in sections}
    for entry_id, target in edit.moves.items():
        if target not in entries:
            continue  # moved to a section this issue (or segment) does not have
        for key, placed in entries.items():
            found = next((p for p in placed if p.item.id == entry_id), None)
            if found is not None and key != target:
                placed.remove(found)
                entries[target].append(found)
                break
    order = {key: i for i, key in enumerate(edit.section_order)}
    keys = sorted(entries, key=lambda k: (order.get(k, len(order)),
                                          [s.key for s in sections].index(k)))
    return [Section(k, titles[k], tuple(entries[k])) for k in keys if entries[k]]


def load_edit(session: Session, list_id: int, number: int) -> EditView | None:
    """The editor's changes to issue ``number`` of a list, if any."""
    row = session.scalars(select(IssueEdit).where(IssueEdit.list_id == list_id,
                                                  IssueEdit.number == number)).first()
    return EditView.of(row) if row else None


def draft_issue(ctx: Context, list_name: str, *, now: datetime | None = None,
                subject: str | None = None, intro: str = "",
                allow_empty: bool = False) -> Draft | None:
    """The next issue of a list, or None when nothing is new. Changes nothing.

    An editor's saved changes for this issue number (subject, intro, dropped and moved
    entries, section order) are applied.
    """
    now = now or utcnow()
    since = now - timedelta(days=ctx.settings.lookback_days)
    with ctx.db.session() as session:
        mailing_list = get_list(session, list_name)
        number = (session.scalar(select(func.max(Issue.number))
                                 .where(Issue.list_id == mailing_list.id)) or 0) + 1
        edit = load_edit(session, mailing_list.id, number)
        items = new_items(session, mailing_list.id, since=since)
        list_id, list_title = mailing_list.id, mailing_list.title
        nothing_matches = mailing_list.when_nothing_matches
        look = list_look(mailing_list)
    if edit is not None:
        items = [i for i in items if i.id not in edit.dropped]
        subject = subject or edit.subject or None
        intro = intro or edit.intro
    if not items and not allow_empty:
        return None
    sections = apply_edit(group(items, keyword_config(ctx)), edit)
    s = ctx.settings
    content = IssueContent(
        list_name=list_name, list_title=list_title, number=number,
        subject=subject or make_subject(s.subject_template, list_title=list_title, date=now,
                                        sections=sections),
        date=now, sections=sections, intro=intro,
        sender=Sender(s.from_name, s.from_email, s.postal_address),
        view_url=ctx.url(archive_path(list_name, number)),
        keyword_url=ctx.url(f"archive/{list_name}/k/"), **look)
    rendered = ctx.renderer.render_issue(content)
    return Draft(list_id, list_name, list_title, number, items, sections, content, rendered,
                 since, now, edit, nothing_matches)


def render_variant(ctx: Context, draft: Draft, keys: frozenset[str]) -> Variant | None:
    """The draft as subscribers of a keyword segment get it; None if nothing matches."""
    sections = apply_edit(group(draft.items, keyword_config(ctx), only=keys), draft.edit)
    if not sections:
        return None
    content = draft.content
    fixed = draft.edit is not None and draft.edit.subject
    subject = content.subject if fixed else make_subject(
        ctx.settings.subject_template, list_title=draft.list_title, date=content.date,
        sections=sections)
    rendered = ctx.renderer.render_issue(replace(content, subject=subject, sections=sections))
    return Variant(tuple(sorted(s.key for s in sections)), sections, rendered)


def plan_segments(ctx: Context, draft: Draft, segments: Sequence[str]
                  ) -> tuple[dict[str, tuple[str, ...] | None], dict[tuple[str, ...], Variant]]:
    """Which rendering each segment gets: segment → variant keys (None: nothing matches).

    Renders once per distinct set of sections, never per subscriber: segments whose
    keywords have the same sections this week share one rendering.
    """
    config = keyword_config(ctx)
    # Every key an entry carries, not only the full issue's sections: an entry tagged
    # Syria and Iran sits under Iran there, and still reaches the Syria readers.
    present = keys_carried(draft.items, config)
    by_segment: dict[str, tuple[str, ...] | None] = {}
    rendered: dict[tuple[str, ...], Variant | None] = {}
    for segment in segments:
        if not segment:
            continue
        key = tuple(sorted(canonical_keys(segment.split(";"), config) & present))
        if key and key not in rendered:
            rendered[key] = render_variant(ctx, draft, frozenset(key))
        by_segment[segment] = key if key and rendered[key] is not None else None
    return by_segment, {k: v for k, v in rendered.items() if v is not None}


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
    active = (Subscription.list_id == draft.list_id, Subscription.status == "active")
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
    skip = draft.when_nothing_matches == "skip"
    plan = [(segment, variant_ids[keys] if keys else None,
             "skipped" if keys is None and skip else "pending")
            for segment, keys in by_segment.items()]
    columns = ["issue_id", "subscriber_id", "subscription_id", "status", "error",
               "variant_id", "attempts", "updated_at"]
    stamp = literal(now, type_=Delivery.updated_at.type)
    if all(variant is None and status == "pending" for _, variant, status in plan):
        # Everyone gets the full issue: no segment table to join, no sort (the list's
        # index already gives subscriptions in id order). Half the time of the join.
        add = insert(Delivery).from_select(columns, select(
            literal(issue_id), Subscription.subscriber_id, Subscription.id,
            literal("pending"), literal(None, type_=String), literal(None, type_=Integer),
            literal(0), stamp).where(*active).order_by(Subscription.id))
    else:
        # The segment → (variant, status) table goes in as one VALUES list, joined once.
        seg = values(column("segment", String), column("variant_id", Integer),
                     column("status", String), name="seg").data(plan).cte("seg")
        subs = (select(Subscription.subscriber_id, Subscription.id,
                       cast(seg.c.variant_id, Integer).label("variant_id"),
                       func.coalesce(seg.c.status, "pending").label("status"))
                .select_from(Subscription)
                .outerjoin(seg, seg.c.segment == Subscription.segment)
                .where(*active).subquery())
        add = insert(Delivery).from_select(columns, select(
            literal(issue_id), subs.c.subscriber_id, subs.c.id, subs.c.status,
            case((subs.c.status == "skipped", NOTHING_MATCHES), else_=None),
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


def add_batch_ranges(session: Session, issue_id: int, first: int, last: int, size: int,
                     now: datetime) -> None:
    """Cut the ids ``first``…``last`` of a newly recorded issue into send batches of at most
    ``size`` deliveries (fewer where ids belong to another issue or were skipped)."""
    session.execute(insert(SendBatch), [
        {"issue_id": issue_id, "first_id": start, "last_id": min(last, start + size - 1),
         "status": "pending", "updated_at": now}
        for start in range(first, last + 1, size)])


def add_batches(session: Session, issue_id: int, size: int, now: datetime,
                status: str = "pending") -> None:
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
        # Each send run ends by counting its issue's deliveries onto the issue.
        latest = next((issue_id for issue_id, tally in session.execute(
            select(Issue.id, Issue.counts).where(Issue.list_id == list_id,
                                                 Issue.status == "sent")
            .order_by(Issue.id.desc())) if (tally or {}).get("uncertain")), None)
        found = session.get(Issue, latest) if latest is not None else None
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
        sandbox = select(Issue.id).where(Issue.list_id == list_id, Issue.status == "sandbox")
        delete_deliveries(session, issue_ids=sandbox)
        for issue in session.scalars(select(Issue).where(Issue.id.in_(sandbox))):
            session.delete(issue)
