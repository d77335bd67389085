"""What editors do to the next issue of a list: preview, edit, approve, send a test.

Edits are stored per (list, issue number) and applied by
:func:`digest.services.building.draft_issue`, so the preview, the test email and the real
send all come from the same code path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from digest.core.grouping import Section, canonical_keys
from digest.core.messages import address_for_header, compose, format_sender
from digest.core.rendering import GMAIL_CLIP_BYTES, Recipient, RenderedIssue
from digest.errors import DigestError
from digest.services.building import Draft, draft_issue, keyword_config, render_variant
from digest.services.context import Context
from digest.services.db import utcnow
from digest.services.editors import audit
from digest.services.models import Issue, IssueEdit
from digest.services.transports import Transport, make_transport
from subscribers.addresses import normalize_address
from subscribers.lists import get_list
from subscribers.models import Subscription


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


_HREF = re.compile(r'href="([^"]+)"')


def sample_recipient(ctx: Context) -> Recipient:
    """The values a preview or test shows where each reader's own links go."""
    return Recipient(ctx.url("u/preview"), ctx.url("p/preview"), "reader")


def preview(ctx: Context, list_name: str, segment: str = "", *,
            now: datetime | None = None) -> Preview | None:
    """The next issue (edits applied), for everyone or for a keyword segment."""
    draft = draft_issue(ctx, list_name, now=now)
    if draft is None:
        return None
    sections, rendered = draft.sections, draft.rendered
    keys = canonical_keys([k for k in re.split(r"[;,]", segment) if k.strip()],
                          keyword_config(ctx))
    if keys:
        variant = render_variant(ctx, draft, keys)
        if variant is None:
            sections = []  # readers of this segment get no email (or the full issue)
        else:
            sections, rendered = variant.sections, variant.rendered
    html, text = rendered.personalize(sample_recipient(ctx))
    links = list(dict.fromkeys(_HREF.findall(html)))
    return Preview(draft, sections, rendered, html, text, links, ";".join(sorted(keys)))


def segments(ctx: Context, list_name: str) -> list[tuple[str, int]]:
    """The keyword segments of a list's active readers, largest first ("" = everything)."""
    with ctx.db.session() as session:
        list_id = get_list(session, list_name).id
        return [(segment, n) for segment, n in session.execute(
            select(Subscription.segment, func.count())
            .where(Subscription.list_id == list_id, Subscription.status == "active")
            .group_by(Subscription.segment).order_by(func.count().desc()).limit(50))]


def next_number(ctx: Context, list_id: int) -> int:
    """The number the list's next issue will have."""
    with ctx.db.session() as session:
        return (session.scalar(select(func.max(Issue.number))
                               .where(Issue.list_id == list_id)) or 0) + 1


def _edit_row(ctx: Context, list_name: str) -> tuple[int, int]:
    with ctx.db.session() as session:
        list_id = get_list(session, list_name).id
    number = next_number(ctx, list_id)
    with ctx.db.session() as session:
        row = session.scalars(select(IssueEdit).where(IssueEdit.list_id == list_id,
                                                      IssueEdit.number == number)).first()
        if row is None:
            session.add(IssueEdit(list_id=list_id, number=number, dropped=[], moves={},
                                  section_order=[], updated_at=utcnow()))
    return list_id, number


def save_edit(ctx: Context, list_name: str, editor: str, *, subject: str | None = None,
              intro: str | None = None, dropped: Sequence[int] | None = None,
              moves: Mapping[int, str] | None = None,
              section_order: Sequence[str] | None = None) -> list[str]:
    """Store changes to the next issue; return what changed (for the audit log).

    A change withdraws an earlier approval: what is sent is what was approved.
    """
    list_id, number = _edit_row(ctx, list_name)
    changed: list[str] = []
    with ctx.db.session() as session:
        row = session.scalars(select(IssueEdit).where(IssueEdit.list_id == list_id,
                                                      IssueEdit.number == number)).one()
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
        if changed:
            if row.approved_at is not None:
                changed.append("approval withdrawn")
            row.approved_by, row.approved_at = None, None
            row.updated_by, row.updated_at = editor, utcnow()
    if changed:
        audit(ctx.db, editor, "edit", f"issue {number}: " + "; ".join(changed), list_id)
    return changed


def approve(ctx: Context, list_name: str, editor: str) -> int:
    """Approve the next issue as it now stands; return its number."""
    list_id, number = _edit_row(ctx, list_name)
    with ctx.db.session() as session:
        row = session.scalars(select(IssueEdit).where(IssueEdit.list_id == list_id,
                                                      IssueEdit.number == number)).one()
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


def send_test(ctx: Context, list_name: str, address: str, editor: str, *,
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
