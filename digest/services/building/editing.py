"""What editors do to the next issue of a list: preview, edit, approve, send a test.

Edits are stored per (list, issue number) and applied by
:func:`digest.services.building.drafts.draft_issue`, so the preview, the test email and the real
send all come from the same code path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from digest.core.grouping import Section
from digest.core.messages import address_for_header, compose, format_sender
from digest.core.rendering import GMAIL_CLIP_BYTES, RenderedIssue
from digest.core.sanitize import html_to_text
from digest.errors import DigestError
from digest.services.building.drafts import (
    Draft,
    EditView,
    draft_issue,
    keyword_config,
    next_number,
    render_variant,
    sample_recipient,
)
from digest.services.building.editors import audit
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.models import Entry, IssueEdit
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import Subscription
from digest.services.transports import Transport, make_transport
from subscribers.addresses import normalize_address
from subscribers.lists import get_list
from subscribers.preferences import keyword_names


@dataclass(frozen=True)
class Preview:
    """The next issue as a reader (of a segment) would get it, with what editors check."""

    draft: Draft
    sections: list[Section]
    rendered: RenderedIssue
    html: str
    text: str
    links: list[str]
    segment: str

    @property
    def html_bytes(self) -> int:
        """Size of the HTML part."""
        return len(self.html.encode("utf-8"))

    @property
    def clip_share(self) -> int:
        """The HTML size as a percentage of Gmail's clipping size."""
        return round(100 * self.html_bytes / GMAIL_CLIP_BYTES)


def preview(ctx: Context, list_name: str, segment: str = "", *,
            now: datetime | None = None) -> Preview | None:
    """The next issue (edits applied), for everyone or for a keyword segment."""
    draft = draft_issue(ctx, list_name, now=now)
    if draft is None:
        return None
    sections, rendered = draft.sections, draft.rendered
    keys = draft.grouping.canonical_keys(k for k in re.split(r"[;,]", segment) if k.strip())
    if keys:
        variant = render_variant(ctx, draft, keys)
        if variant is None:
            sections = []  # readers of this segment get no email (or the full issue)
        else:
            sections, rendered = variant.sections, variant.rendered
    html, text = rendered.personalize(sample_recipient(ctx))
    # Every link, decoded as the link check reads them (its results are keyed so); its
    # module brings httpx, which the commands importing this one need not load.
    from digest.services.feeds.linkcheck import links_in
    links = links_in(html, schemes=None)
    return Preview(draft, sections, rendered, html, text, links, ";".join(sorted(keys)))


@dataclass(frozen=True)
class Segment:
    """Readers who chose the same keywords, as the editor's preview menu offers them."""

    key: str  # their subscriptions' segment ("" = the whole issue)
    label: str  # the keywords under their one names, ", "-joined
    readers: int


def segments(ctx: Context, list_name: str) -> list[Segment]:
    """The keyword segments of a list's active readers, largest first ("" = everything)."""
    with ctx.db.session() as session:
        list_id = get_list(session, list_name).id
        rows = session.execute(
            select(Subscription.segment, func.count())
            .where(Subscription.list_id == list_id,
                   Subscription.status == SubscriptionStatus.ACTIVE)
            .group_by(Subscription.segment).order_by(func.count().desc()).limit(50)).all()
    names = keyword_names(ctx.db, keyword_config(ctx), list_id=list_id)
    # Readers who typed one keyword two ways (an alias, another script) share a rendering,
    # as plan_segments gives them one: one row, under the keys after aliases.
    merged: dict[str, int] = {}
    for segment, n in rows:
        key = ";".join(sorted({k for part in segment.split(";") if (k := names.key(part))}))
        merged[key] = merged.get(key, 0) + n
    return [Segment(key, ", ".join(sorted((k.name for k in names.unique(key.split(";"))),
                                          key=str.casefold)), n)
            for key, n in sorted(merged.items(), key=lambda kv: -kv[1])]


def _edit_row(ctx: Context, list_name: str) -> tuple[int, int]:
    with ctx.db.session() as session:
        list_id = get_list(session, list_name).id
        number = next_number(session, list_id)
    with ctx.db.session() as session:
        row = session.scalars(select(IssueEdit).where(IssueEdit.list_id == list_id,
                                                      IssueEdit.number == number)).first()
        if row is None:
            session.add(IssueEdit(list_id=list_id, number=number, dropped=[], moves={},
                                  section_order=[], updated_at=utcnow()))
    return list_id, number


def _edit_of(session: Session, list_id: int, number: int) -> IssueEdit:
    """The edit row of issue ``number`` of a list (made by :func:`_edit_row`)."""
    return session.scalars(select(IssueEdit).where(IssueEdit.list_id == list_id,
                                                   IssueEdit.number == number)).one()


class StaleEdit(DigestError):
    """A save made from a version of the issue's edits that another save has replaced."""

    def __init__(self, by: str | None, version: int) -> None:
        super().__init__(f"{by or 'another editor'} changed this issue meanwhile (now at "
                         f"version {version}); your change was not saved",
                         hint="reload the page to see their change, then make yours again")
        self.by, self.version = by, version


UNDO_DEPTH = 50
_STATE = ("subject", "intro", "dropped", "moves", "section_order", "entry_order",
          "overrides", "pinned", "hidden_images")
_EDITOR_TEXT = {"title": 500, "lead": 2000}


def _check_version(row: IssueEdit, expected: int | None) -> None:
    if expected is not None and row.version != expected:
        raise StaleEdit(row.updated_by, row.version)


@contextmanager
def _versioned(ctx: Context, list_id: int, number: int) -> Iterator[Session]:
    """A session whose commit is refused with :class:`StaleEdit` when another save
    changed the edit row after this one read it (SQLAlchemy's version column)."""
    try:
        with ctx.db.session() as session:
            yield session
    except StaleDataError:
        with ctx.db.session() as session:
            row = _edit_of(session, list_id, number)
            raise StaleEdit(row.updated_by, row.version) from None


def editor_text(value: str, field: str) -> str:
    """An editor's title or lead, made exactly what a feed's becomes: plain text, spaces
    folded, as long as a feed's may be (it is escaped again when rendered)."""
    return " ".join(html_to_text(value).split())[:_EDITOR_TEXT[field]]


def save_edit(ctx: Context, list_name: str, editor: str, *,  # noqa: PLR0913 - keyword-only, one per field of an edit: a caller names what it changes
              expected_version: int | None = None, subject: str | None = None,
              intro: str | None = None, dropped: Sequence[int] | None = None,
              moves: Mapping[int, str] | None = None,
              section_order: Sequence[str] | None = None,
              entry_order: Mapping[str, Sequence[int]] | None = None,
              overrides: Mapping[int, Mapping[str, str]] | None = None,
              pinned: int | bool | None = False,
              hidden_images: Sequence[int] | None = None) -> list[str]:
    """Store changes to the next issue; return what changed (for the audit log).

    A change withdraws an earlier approval: what is sent is what was approved. With
    ``expected_version`` (what the editor's page showed), a save made after someone
    else's is refused with :class:`StaleEdit`, naming them. ``pinned=None`` unpins;
    False (the default) leaves it as it is.
    """
    list_id, number = _edit_row(ctx, list_name)
    with _versioned(ctx, list_id, number) as session:
        row = _edit_of(session, list_id, number)
        _check_version(row, expected_version)
        before = _state(row)
        changed = _change(row, subject=subject, intro=intro, dropped=dropped, moves=moves,
                          section_order=section_order, entry_order=entry_order,
                          overrides=overrides, pinned=pinned, hidden_images=hidden_images)
        if changed:
            row.history = [*(row.history or [])[-(UNDO_DEPTH - 1):], before]
            if row.approved_at is not None:
                changed.append("approval withdrawn")
            row.approved_by, row.approved_at = None, None
            row.updated_by, row.updated_at = editor, utcnow()
    if changed:
        audit(ctx.db, editor, "edit", f"issue {number}: " + "; ".join(changed), list_id)
    return changed


def _state(row: IssueEdit) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _STATE}


def _change(row: IssueEdit, *, subject: str | None, intro: str | None,  # noqa: PLR0913 - save_edit's fields
            dropped: Sequence[int] | None, moves: Mapping[int, str] | None,
            section_order: Sequence[str] | None,
            entry_order: Mapping[str, Sequence[int]] | None,
            overrides: Mapping[int, Mapping[str, str]] | None, pinned: int | bool | None,
            hidden_images: Sequence[int] | None) -> list[str]:
    changed: list[str] = []
    if subject is not None and subject.strip() != row.subject:
        row.subject = " ".join(subject.split())[:250]
        changed.append(f"subject → {row.subject!r}" if row.subject else "subject reset")
    if intro is not None and intro.strip() != row.intro:
        row.intro = intro.strip()[:2000]
        changed.append("intro edited" if row.intro else "intro removed")
    if dropped is not None and sorted(set(dropped)) != sorted(row.dropped):
        row.dropped = sorted(set(dropped))
        changed.append(f"dropped entries {row.dropped}")
    if moves is not None:
        wanted = {str(k): v for k, v in moves.items() if v}
        if wanted != row.moves:
            row.moves = wanted
            changed.append(f"moved entries {wanted}")
    if section_order is not None and list(section_order) != row.section_order:
        row.section_order = list(section_order)
        changed.append(f"section order {row.section_order}")
    if entry_order is not None:
        wanted_order = {k: [int(i) for i in v] for k, v in entry_order.items() if v}
        if wanted_order != (row.entry_order or {}):
            row.entry_order = wanted_order
            changed.append("entries reordered")
    if overrides is not None:
        wanted_text = {str(k): {f: editor_text(t, f) for f, t in v.items()
                                if f in _EDITOR_TEXT and t and t.strip()}
                       for k, v in overrides.items()}
        wanted_text = {k: v for k, v in wanted_text.items() if v}
        if wanted_text != (row.overrides or {}):
            edited = sorted(set(wanted_text) ^ set(row.overrides or {}) | {
                k for k in wanted_text if wanted_text[k] != (row.overrides or {}).get(k)})
            row.overrides = wanted_text
            changed.append(f"title or lead of entries {', '.join(edited)} edited")
    if pinned is not False and pinned != row.pinned:
        row.pinned = pinned if isinstance(pinned, int) and pinned is not True else None
        changed.append(f"top story: entry {row.pinned}" if row.pinned else "top story unpinned")
    if hidden_images is not None and sorted(set(hidden_images)) != sorted(
            row.hidden_images or []):
        row.hidden_images = sorted(set(hidden_images))
        changed.append(f"images hidden for entries {row.hidden_images}")
    return changed


def undo_last(ctx: Context, list_name: str, editor: str, *,
              expected_version: int | None = None) -> bool:
    """Put the next issue's edits back as they were before the latest change; False when
    there is nothing to undo."""
    list_id, number = _edit_row(ctx, list_name)
    with _versioned(ctx, list_id, number) as session:
        row = _edit_of(session, list_id, number)
        _check_version(row, expected_version)
        if not row.history:
            return False
        *rest, previous = row.history
        for name in _STATE:
            setattr(row, name, previous.get(name, getattr(row, name)))
        row.history = rest
        row.approved_by, row.approved_at = None, None
        row.updated_by, row.updated_at = editor, utcnow()
    audit(ctx.db, editor, "undo", f"issue {number}: last change undone", list_id)
    return True


def edit_version(ctx: Context, list_name: str) -> tuple[int, str | None]:
    """The version of the next issue's edits and who saved it last."""
    list_id, number = _edit_row(ctx, list_name)
    with ctx.db.session() as session:
        row = _edit_of(session, list_id, number)
        return row.version, row.updated_by


def dropped_entries(ctx: Context, edit: EditView | None) -> list[tuple[int, str]]:
    """(id, title) of the entries an editor dropped from the next issue."""
    if edit is None or not edit.dropped:
        return []
    with ctx.db.session() as session:
        return [(i, t) for i, t in session.execute(
            select(Entry.id, Entry.title).where(Entry.id.in_(edit.dropped))
            .order_by(Entry.id))]


def _feed_sections(draft: Draft) -> dict[int, str]:
    """Entry id → the section the feeds' keywords put it in (before any edit)."""
    return {p.item.id: s.key for s in draft.grouping.sections() for p in s.entries}


def edit_diff(ctx: Context, draft: Draft | None) -> list[str]:  # noqa: PLR0912 - a branch a kind of change, each one line of the diff
    """What the editors changed in a draft against the feeds' issue, one line a change."""
    if draft is None or draft.edit is None:
        return []
    edit = draft.edit
    items = {i.id: i for i in draft.items}
    dropped_titles = dict(dropped_entries(ctx, edit))
    original = _feed_sections(draft)
    titles = {s.key: s.title for s in draft.sections}
    lines = []
    if edit.subject:
        lines.append(f"Subject: {edit.subject!r}")
    if edit.intro:
        lines.append("Intro written by an editor")
    for entry_id in sorted(edit.dropped):
        lines.append(f"Dropped: {dropped_titles.get(entry_id, entry_id)}")
    for entry_id, target in sorted(edit.moves.items()):
        if entry_id in items and original.get(entry_id) != target:
            lines.append(f"Moved: {items[entry_id].title} → {titles.get(target, target)}")
    for entry_id, fields in sorted(edit.overrides.items()):
        if entry_id in items:
            for field, text in fields.items():
                feed = getattr(items[entry_id], field) or "(none)"
                lines.append(f"{field.capitalize()} of {items[entry_id].title!r}: "
                             f"{feed!r} → {text!r}")
    if edit.pinned in items:
        lines.append(f"Top story: {items[edit.pinned].title}")
    for entry_id in sorted(edit.hidden_images):
        if entry_id in items:
            lines.append(f"Image hidden: {items[entry_id].title}")
    if edit.section_order:
        lines.append("Sections reordered: " + ", ".join(
            titles.get(k, k) for k in edit.section_order if k in titles))
    if edit.entry_order:
        lines.append("Entries reordered in: " + ", ".join(
            titles.get(k, k) for k in edit.entry_order if k in titles))
    return lines


def approve(ctx: Context, list_name: str, editor: str) -> int:
    """Approve the next issue as it now stands; return its number."""
    list_id, number = _edit_row(ctx, list_name)
    with ctx.db.session() as session:
        row = _edit_of(session, list_id, number)
        row.approved_by, row.approved_at = editor, utcnow()
    audit(ctx.db, editor, "approve", f"issue {number}", list_id)
    return number


def approval(ctx: Context, list_id: int, number: int) -> tuple[str, datetime] | None:
    """Who approved issue ``number`` of a list, and when; None if nobody did."""
    with ctx.db.session() as session:
        row = session.scalars(select(IssueEdit).where(IssueEdit.list_id == list_id,
                                                      IssueEdit.number == number)).first()
        if row is None or row.approved_at is None or row.approved_by is None:
            return None
        return row.approved_by, row.approved_at


def send_test(ctx: Context, list_name: str, address: str, editor: str, *,  # noqa: PLR0913 - keyword-only: the segment, a transport given by tests
              segment: str = "", transport: Transport | None = None) -> str:
    """Send the next issue (as a segment gets it) to one address, marked as a test."""
    to = normalize_address(address)
    shown = preview(ctx, list_name, segment)
    if shown is None:
        raise DigestError(f"{list_name} has nothing new for a test issue")
    s = ctx.settings
    message = compose(subject=f"[Test] {shown.rendered.subject}",
                      sender=format_sender(s.from_name, s.from_email),
                      to=address_for_header(to), text=shown.text, html=shown.html,
                      reply_to=s.reply_to or None,
                      headers={"X-Digest-Test": "yes", "Auto-Submitted": "auto-generated"})
    with transport or make_transport(ctx.settings) as sender:
        sender.send_message(message)
    audit(ctx.db, editor, "send test", f"issue {shown.draft.number} to {to}",
          shown.draft.list_id)
    return to


def apply_change(ctx: Context, list_name: str, editor: str, change: Mapping[str, Any],
                 version: int) -> tuple[int, list[str]]:
    """One change from the editor's workbench, saved only if the issue's edits are still at
    ``version``; return (the new version, what changed). Raises :class:`StaleEdit`.

    Changes: ``order`` (sections top to bottom, each with its entry ids: moves between
    sections, section order and entry order in one), ``text`` (an entry's title and
    lead), ``revert`` (an entry back to the feed's text), ``pin`` (``entry`` or None),
    ``image`` (``entry``, ``hidden``), ``drop`` (``entry``, ``dropped``), ``undo``.
    """
    op = str(change.get("op", ""))
    if op == "undo":
        undo_last(ctx, list_name, editor, expected_version=version)
        return edit_version(ctx, list_name)[0], ["last change undone"]
    draft = draft_issue(ctx, list_name)
    if draft is None:
        raise DigestError(f"{list_name} has nothing new: there is no issue to edit")
    edit = draft.edit
    entry = change.get("entry")
    entry_id = int(entry) if isinstance(entry, int | str) and str(entry).isdigit() else None
    known = {i.id for i in draft.items} | set(edit.dropped if edit else ())
    needs_entry = op in ("text", "revert", "image", "drop") or (op == "pin" and entry is not None)
    if needs_entry and entry_id not in known:
        raise DigestError(f"entry {entry!r} is not in the next issue of {list_name}")
    target = entry_id or 0
    kwargs: dict[str, Any] = {}
    overrides = {k: dict(v) for k, v in (edit.overrides if edit else {}).items()}
    if op == "order":
        original = _feed_sections(draft)
        sections = [(str(s.get("key", "")), [int(i) for i in s.get("entries", [])])
                    for s in change.get("sections", []) if isinstance(s, Mapping)]
        kwargs["section_order"] = [key for key, _ in sections]
        kwargs["entry_order"] = {key: ids for key, ids in sections if ids}
        kwargs["moves"] = {i: key for key, ids in sections for i in ids
                           if i in original and original[i] != key}
    elif op == "text":
        fields = {f: str(change.get(f) or "") for f in _EDITOR_TEXT}
        overrides[target] = {f: t for f, t in fields.items() if t.strip()}
        kwargs["overrides"] = overrides
    elif op == "revert":
        overrides.pop(target, None)
        kwargs["overrides"] = overrides
    elif op == "pin":
        kwargs["pinned"] = entry_id
    elif op == "image":
        hidden = set(edit.hidden_images if edit else ())
        (hidden.add if change.get("hidden") else hidden.discard)(target)
        kwargs["hidden_images"] = sorted(hidden)
    elif op == "drop":
        dropped = set(edit.dropped if edit else ())
        (dropped.add if change.get("dropped") else dropped.discard)(target)
        kwargs["dropped"] = sorted(dropped)
    else:
        raise DigestError(f"unknown change {op!r}")
    changed = save_edit(ctx, list_name, editor, expected_version=version, **kwargs)
    return edit_version(ctx, list_name)[0], changed
