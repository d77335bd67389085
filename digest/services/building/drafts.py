"""Building an issue, in the order it happens: the entries no earlier issue held, the
editor's saved changes, grouping into sections (the pure core), the changes applied, the
issue's content and its rendering (the pure core again); then the keyword segments'
renderings, and the preview files. :func:`draft_issue` runs the steps top to bottom;
each step is defined below it in that order.

Recording a built issue and its deliveries is :mod:`digest.services.delivery.recording`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Select,
    func,
    select,
)
from sqlalchemy.orm import Session

from digest.core.feeds import Image
from digest.core.grouping import (
    Grouping,
    Item,
    KeywordConfig,
    Placed,
    Section,
)
from digest.core.rendering import IssueContent, Recipient, RenderedIssue, Sender, long_date
from digest.errors import ConfigError
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.models import (
    Entry,
    Feed,
    Issue,
    IssueEdit,
    IssueEntry,
    IssueStatus,
)
from digest.services.storage.states import WhenNothingMatches
from digest.services.storage.subscriber_models import MailingList
from subscribers.lists import get_list


@dataclass(frozen=True)
class Draft:
    """The next issue of a list, grouped and rendered, not yet recorded."""

    list_id: int
    list_name: str
    list_title: str
    number: int
    items: list[Item]
    grouping: Grouping  # the feeds' sections before any edit; segments are cut from it
    sections: list[Section]
    content: IssueContent
    rendered: RenderedIssue
    window_start: datetime
    window_end: datetime
    edit: EditView | None = None
    when_nothing_matches: str = WhenNothingMatches.SKIP


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
    entry_order: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    overrides: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    pinned: int | None = None
    hidden_images: frozenset[int] = frozenset()
    version: int = 0
    updated_by: str | None = None

    @classmethod
    def of(cls, row: IssueEdit) -> EditView:
        """From its stored row."""
        return cls(row.subject, row.intro, frozenset(row.dropped),
                   {int(k): v for k, v in row.moves.items()}, tuple(row.section_order),
                   row.approved_by, row.approved_at,
                   {k: tuple(v) for k, v in (row.entry_order or {}).items()},
                   {int(k): dict(v) for k, v in (row.overrides or {}).items()},
                   row.pinned, frozenset(row.hidden_images or ()), row.version or 0,
                   row.updated_by)


@dataclass(frozen=True)
class Variant:
    """An issue as one keyword segment gets it."""

    keys: tuple[str, ...]
    sections: list[Section]
    rendered: RenderedIssue


def draft_issue(ctx: Context, list_name: str, *, now: datetime | None = None,
                allow_empty: bool = False,
                config: KeywordConfig | None = None) -> Draft | None:
    """The next issue of a list, or None when nothing is new. Changes nothing.

    An editor's saved changes for this issue number (subject, intro, dropped and moved
    entries, section order) are applied. The entries are grouped once, under ``config``
    (by default :func:`keyword_config`); the draft keeps that grouping, and the keyword
    segments' sections are cut from it (:func:`plan_segments`).
    """
    now = now or utcnow()
    with ctx.db.session() as session:
        mailing_list = get_list(session, list_name)
        # The list's own window when it has one (`digest lists edit --list NAME --lookback-days N`).
        since = now - timedelta(days=mailing_list.lookback_days or ctx.settings.lookback_days)
        number = next_number(session, mailing_list.id)
        edit = load_edit(session, mailing_list.id, number)
        items = new_items(session, mailing_list.id, since=since)
        list_id, list_title = mailing_list.id, mailing_list.title
        nothing_matches = mailing_list.when_nothing_matches
        look = list_look(mailing_list)
    subject, intro = (edit.subject or None, edit.intro) if edit is not None else (None, "")
    if edit is not None:
        items = [i for i in items if i.id not in edit.dropped]
    if not items and not allow_empty:
        return None
    grouping = Grouping.of(items, config or keyword_config(ctx))
    sections = apply_edit(grouping.sections(), edit)
    s = ctx.settings
    content = IssueContent(
        list_name=list_name, list_title=list_title, number=number,
        subject=subject or make_subject(s.subject_template, list_title=list_title, date=now,
                                        sections=sections),
        date=now, sections=sections, intro=intro,
        sender=Sender(s.from_name, s.from_email, s.postal_address),
        view_url=ctx.url(archive_path(list_name, number)),
        keyword_url=ctx.url(f"archive/{list_name}/k/"),
        top_story=edit.pinned if edit is not None else None, **look)
    rendered = ctx.renderer.render_issue(content)
    return Draft(list_id, list_name, list_title, number, items, grouping, sections, content,
                 rendered, since, now, edit, nothing_matches)


def next_number(session: Session, list_id: int) -> int:
    """The number the list's next issue will have."""
    return (session.scalar(select(func.max(Issue.number))
                           .where(Issue.list_id == list_id)) or 0) + 1


def load_edit(session: Session, list_id: int, number: int) -> EditView | None:
    """The editor's changes to issue ``number`` of a list, if any."""
    row = session.scalars(select(IssueEdit).where(IssueEdit.list_id == list_id,
                                                  IssueEdit.number == number)).first()
    return EditView.of(row) if row else None


def new_items(session: Session, list_id: int, *, since: datetime) -> list[Item]:
    """Entries dated since ``since`` that no earlier issue of the list held."""
    rows = session.execute(
        select(Entry, Feed.name).outerjoin(Feed, Feed.id == Entry.feed_id)
        .where(Entry.dated_at >= since, Entry.id.not_in(held_entry_ids(list_id)))
        .order_by(Entry.dated_at.desc(), Entry.id)).all()
    return [item_of(e, source) for e, source in rows]


def item_of(e: Entry, source: str | None) -> Item:
    """A stored entry as grouping and rendering take it (``source``: its feed's name)."""
    return Item(e.id, e.title, e.link, e.summary_html, tuple(e.keywords), e.dated_at,
                source or "", e.author, e.lead or "",
                Image(e.image_url, e.image_alt or "", e.image_width, e.image_height)
                if e.image_url else None,
                tuple((t, u) for t, u in e.related or ()))


SENT_OR_SENDING = (IssueStatus.SENDING, IssueStatus.SENT)


def held_entry_ids(list_id: int) -> Select[Any]:
    """Entry ids already in an issue of the list that was sent (or is being sent)."""
    return (select(IssueEntry.entry_id).join(Issue, Issue.id == IssueEntry.issue_id)
            .where(Issue.list_id == list_id, Issue.status.in_(SENT_OR_SENDING)))


def list_look(mailing_list: MailingList) -> dict[str, Any]:
    """How a list's emails look, as IssueContent fields."""
    logo = (Image(mailing_list.logo_url, mailing_list.logo_alt or mailing_list.title,
                  mailing_list.logo_width, mailing_list.logo_height)
            if mailing_list.logo_url else None)
    parts = tuple(p for p in (mailing_list.entry_parts or "").split(",") if p)
    return {"language": mailing_list.language or "en", "logo": logo, "parts": parts,
            "lead_max_chars": mailing_list.lead_max_chars or 300}


def keyword_config(ctx: Context) -> KeywordConfig:
    """The grouping configuration from the settings (built once per draft, which carries
    it in its grouping)."""
    s = ctx.settings
    return KeywordConfig.from_settings(s.keyword_order, s.keyword_aliases, s.keyword_rules,
                                       s.untagged_section)


def apply_edit(sections: list[Section], edit: EditView | None) -> list[Section]:
    """An editor's changes applied to grouped sections: entries moved between sections,
    sections and entries reordered, titles and leads rewritten, images hidden."""
    if edit is None or not (edit.moves or edit.section_order or edit.entry_order
                            or edit.overrides or edit.hidden_images):
        return sections
    titles = {s.key: s.title for s in sections}
    entries: dict[str, list[Placed]] = {s.key: [_shaped(p, edit) for p in s.entries]
                                        for s in sections}
    for entry_id, target in edit.moves.items():
        if target not in entries:
            continue  # moved to a section this issue (or segment) does not have
        for key, placed in entries.items():
            found = next((p for p in placed if p.item.id == entry_id), None)
            if found is not None and key != target:
                placed.remove(found)
                entries[target].append(found)
                break
    for key, ids in edit.entry_order.items():
        if key in entries:
            rank = {entry_id: i for i, entry_id in enumerate(ids)}
            # sorted() is stable: entries the editor's order does not name keep theirs.
            entries[key].sort(key=lambda p: rank.get(p.item.id, len(rank)))
    order = {key: i for i, key in enumerate(edit.section_order)}
    keys = sorted(entries, key=lambda k: (order.get(k, len(order)),
                                          [s.key for s in sections].index(k)))
    return [Section(k, titles[k], tuple(entries[k])) for k in keys if entries[k]]


def _shaped(placed: Placed, edit: EditView) -> Placed:
    """One entry with the editor's title and lead (already made plain text when saved)
    and its image hidden if asked."""
    override = edit.overrides.get(placed.item.id, {})
    hidden = placed.item.id in edit.hidden_images
    if not override and not hidden:
        return placed
    item = replace(placed.item, title=override.get("title") or placed.item.title,
                   lead=override.get("lead") or placed.item.lead,
                   image=None if hidden else placed.item.image)
    return replace(placed, item=item)


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


def render_variant(ctx: Context, draft: Draft, keys: frozenset[str]) -> Variant | None:
    """The draft as subscribers of a keyword segment get it; None if nothing matches.

    Its sections are cut from the draft's grouping, never grouped again."""
    sections = apply_edit(draft.grouping.sections(only=keys), draft.edit)
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
    # Every key an entry carries, not only the full issue's sections: an entry tagged
    # Syria and Iran sits under Iran there, and still reaches the Syria readers.
    present = draft.grouping.keys_carried
    by_segment: dict[str, tuple[str, ...] | None] = {}
    rendered: dict[tuple[str, ...], Variant | None] = {}
    for segment in segments:
        if not segment:
            continue
        key = tuple(sorted(draft.grouping.canonical_keys(segment.split(";")) & present))
        if key and key not in rendered:
            rendered[key] = render_variant(ctx, draft, frozenset(key))
        by_segment[segment] = key if key and rendered[key] is not None else None
    return by_segment, {k: v for k, v in rendered.items() if v is not None}


def sample_recipient(ctx: Context) -> Recipient:
    """The reader a preview or a test email is made for: links to the preview pages
    where each reader's own unsubscribe and preferences links go."""
    return Recipient(ctx.url("u/preview"), ctx.url("p/preview"), "reader")


def write_preview_files(ctx: Context, draft: Draft, html_path: Path,
                        text_path: Path | None = None) -> None:
    """Write a draft's HTML (and text) as a sample reader would get it."""
    html, text = draft.rendered.personalize(sample_recipient(ctx))
    html_path.write_text(html, encoding="utf-8")
    if text_path is not None:
        text_path.write_text(text, encoding="utf-8")
