"""The web archive's reading of sent issues: each issue as it was sent (its sections in
order, the editor's titles, leads and top story), for its page, the list's index and
its Atom feed.

An issue is read back from the entries it holds (``issue_entries``, by section and
position) and the editor's saved changes for its number, never from the email's HTML:
the archive is a web page, not a copy of anyone's email. Issues recorded before the
archive read them so show the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.core.feeds import Image
from digest.core.grouping import Placed, Section, keyword_key
from digest.core.rendering import sentence_cut
from digest.core.sanitize import html_to_text
from digest.errors import NotFoundError
from digest.services.building.drafts import EditView, apply_edit, item_of, list_look
from digest.services.storage.context import Context
from digest.services.storage.models import Entry, Feed, Issue, IssueEdit, IssueEntry, IssueStatus
from digest.services.storage.subscriber_models import MailingList
from subscribers.lists import get_list

PAGE_SIZE = 20  # issues on one page of a list's index, and in its feed


@dataclass(frozen=True)
class ArchivedRecap:
    """One recap as the archive shows it: plain text, its lead cut as the list cuts it."""

    id: int
    title: str
    link: str | None
    lead: str
    dated_at: datetime
    source: str
    image: Image | None


@dataclass(frozen=True)
class ArchivedSection:
    """A section of a sent issue; ``key`` is "" for the untagged one."""

    key: str
    title: str
    recaps: tuple[ArchivedRecap, ...]

    @property
    def keyword_path(self) -> str:
        """The path, below the list's archive, of this keyword's page ("" for none)."""
        return f"k/{quote(self.key, safe='')}" if self.key else ""


@dataclass(frozen=True)
class ArchivedIssue:
    """A sent issue: what its page, its place in the index and its feed entry show."""

    number: int
    subject: str
    sent_at: datetime
    intro: str
    sections: tuple[ArchivedSection, ...]
    top: ArchivedRecap | None  # the editor's top story, shown above the sections

    def shown(self, section: ArchivedSection) -> tuple[ArchivedRecap, ...]:
        """A section's recaps as listed under it (the top story is shown above)."""
        if self.top is None:
            return section.recaps
        return tuple(r for r in section.recaps if r.id != self.top.id)

    @property
    def lead(self) -> ArchivedRecap | None:
        """The recap the issue leads with: its top story, else its first."""
        return self.top or next((r for s in self.sections for r in s.recaps), None)

    @property
    def contents(self) -> str:
        """The sections and their counts in a line: "Iran (3) · Syria (2)"."""
        return " · ".join(f"{s.title} ({len(s.recaps)})" for s in self.sections)

    @property
    def recap_count(self) -> int:
        """Recaps in the issue."""
        return sum(len(s.recaps) for s in self.sections)


@dataclass(frozen=True)
class ArchivePage:
    """Some of a list's sent issues, newest first, and whether older ones exist."""

    list_name: str
    list_title: str
    language: str
    created_at: datetime  # the list's: the date of a feed with no issue yet
    issues: tuple[ArchivedIssue, ...]
    older: int | None = None  # the number to ask for the next page "before", if any


def archive_page(ctx: Context, list_name: str, *, before: int | None = None,
                 size: int = PAGE_SIZE) -> ArchivePage | None:
    """A list's sent issues numbered below ``before`` (all, without it), newest first,
    ``size`` of them; None when there is no such list."""
    with ctx.db.session() as session:
        mailing_list = _list(session, list_name)
        if mailing_list is None:
            return None
        query = select(Issue).where(Issue.list_id == mailing_list.id,
                                    Issue.status == IssueStatus.SENT)
        if before is not None:
            query = query.where(Issue.number < before)
        rows = list(session.scalars(query.order_by(Issue.number.desc()).limit(size + 1)))
        issues = _read(session, mailing_list, rows[:size])
        older = issues[-1].number if len(rows) > size else None
        return _page(mailing_list, issues, older)


def archived_issue(ctx: Context, list_name: str, number: int
                   ) -> tuple[ArchivePage, int | None, int | None] | None:
    """Sent issue ``number`` of a list (as a page of one), with the numbers of the sent
    issues before and after it; None when there is no such list or sent issue."""
    with ctx.db.session() as session:
        mailing_list = _list(session, list_name)
        if mailing_list is None:
            return None
        sent = (Issue.list_id == mailing_list.id, Issue.status == IssueStatus.SENT)
        issue = session.scalars(select(Issue).where(*sent, Issue.number == number)).first()
        if issue is None:
            return None
        earlier = session.scalar(select(Issue.number).where(*sent, Issue.number < number)
                                 .order_by(Issue.number.desc()).limit(1))
        later = session.scalar(select(Issue.number).where(*sent, Issue.number > number)
                               .order_by(Issue.number).limit(1))
        return _page(mailing_list, _read(session, mailing_list, [issue])), earlier, later


def _page(mailing_list: MailingList, issues: Sequence[ArchivedIssue],
          older: int | None = None) -> ArchivePage:
    return ArchivePage(mailing_list.name, mailing_list.title, mailing_list.language or "en",
                       mailing_list.created_at, tuple(issues), older)


def _list(session: Session, list_name: str) -> MailingList | None:
    try:
        return get_list(session, list_name)
    except NotFoundError:
        return None


def _read(session: Session, mailing_list: MailingList,
          issues: Sequence[Issue]) -> list[ArchivedIssue]:
    """The issues with their recaps, in three queries whatever their number."""
    if not issues:
        return []
    placed: dict[int, dict[str, list[Placed]]] = defaultdict(lambda: defaultdict(list))
    for issue_id, section, entry, source in session.execute(
            select(IssueEntry.issue_id, IssueEntry.section, Entry, Feed.name)
            .join(Entry, Entry.id == IssueEntry.entry_id)
            .outerjoin(Feed, Feed.id == Entry.feed_id)
            .where(IssueEntry.issue_id.in_([i.id for i in issues]))
            .order_by(IssueEntry.issue_id, IssueEntry.position, IssueEntry.entry_id)):
        placed[issue_id][section].append(Placed(item_of(entry, source)))
    edits = {row.number: EditView.of(row) for row in session.scalars(
        select(IssueEdit).where(IssueEdit.list_id == mailing_list.id,
                                IssueEdit.number.in_([i.number for i in issues])))}
    look = list_look(mailing_list)
    return [_archived(issue, placed[issue.id], edits.get(issue.number), look["parts"],
                      look["lead_max_chars"]) for issue in issues]


def _archived(issue: Issue, by_title: dict[str, list[Placed]], edit: EditView | None,
              parts: Sequence[str], lead_max_chars: int) -> ArchivedIssue:
    # The sections in the order the issue stored them (title, key); a title it did not
    # store (none should be) comes after, with the key its title makes.
    stored = [(s.get("title", ""), s.get("key")) for s in issue.sections or []]
    known = {title for title, _ in stored}
    order = stored + [(title, None) for title in by_title if title not in known]
    sections = [Section(keyword_key(title) if key is None else key, title,
                        tuple(by_title[title]))
                for title, key in order if by_title.get(title)]
    # The entries are stored as sent, so the editor's moves and orders are in effect
    # already (applying them again changes nothing); the titles, leads and hidden
    # images the editor chose are not, and come from the same step as the email's.
    sections = apply_edit(sections, edit)
    images = "image" in parts

    def recap(p: Placed) -> ArchivedRecap:
        item = p.item
        lead = sentence_cut(item.lead or html_to_text(item.summary_html), lead_max_chars)
        return ArchivedRecap(item.id, item.title, item.link, lead, item.dated_at,
                             item.source, item.image if images else None)

    shown = tuple(ArchivedSection(s.key, s.title, tuple(recap(p) for p in s.entries))
                  for s in sections)
    pinned = edit.pinned if edit is not None else None
    top = next((r for s in shown for r in s.recaps if r.id == pinned), None)
    return ArchivedIssue(issue.number, issue.subject, issue.sent_at or issue.created_at,
                         issue.intro or "", shown, top)
