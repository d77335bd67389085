"""The whole job for one list: collect, build the issue, deliver it.

`digest send` and the scheduled job both call :func:`run_list`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from digest.collect import CollectReport, collect
from digest.context import Context
from digest.db import utcnow
from digest.delivery import ProgressCallback, SendReport, deliver
from digest.errors import DigestError
from digest.issues import (
    Draft,
    IssueTaken,
    audience_size,
    discard_sandbox_issues,
    draft_issue,
    record_issue,
    unfinished_issue,
)
from digest.logs import fields
from digest.transports import Transport, make_transport
from subscribers.lists import get_list
from subscribers.optin import expire_pending

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What one run for a list did."""

    list_name: str
    collected: CollectReport | None
    send: SendReport | None
    resumed: bool = False
    declined: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def nothing_new(self) -> bool:
        """True when there was no issue to send."""
        return self.send is None and not self.declined


def run_list(ctx: Context, list_name: str, *, collect_first: bool = True,
             transport: Transport | None = None, now: datetime | None = None,
             resend_uncertain: bool = False, sandbox: bool = False,
             on_collect_start: Callable[[int], None] | None = None,
             on_fetched: Callable[..., None] | None = None,
             on_progress: ProgressCallback | None = None,
             should_stop: Callable[[], bool] | None = None,
             confirm: Callable[[Draft, int], bool] | None = None,
             join_only: bool = False,
             on_issue: Callable[[int], None] | None = None,
             allow_empty: bool = False, wait_for_issue: float = 0.0) -> RunResult:
    """Collect (unless told not to), then finish an interrupted issue or send a new one.

    ``on_issue`` is called with the issue's id just before delivery starts (the CLI starts
    helper workers there).

    With ``allow_empty`` (a schedule that sends even when nothing is new) an issue with no
    entries is sent rather than nothing.

    With ``join_only`` (``digest send --worker``) it only helps send the list's issue that
    is being sent, if there is one (waiting up to ``wait_for_issue`` seconds for one to
    start), and never collects or builds an issue.
    """
    now = now or utcnow()
    with ctx.db.session() as session:
        list_id = get_list(session, list_name).id
    if not join_only:
        discard_sandbox_issues(ctx, list_id)
        expire_pending(ctx, now=now)  # unconfirmed sign-ups past their time
    deadline = time.monotonic() + (wait_for_issue if join_only else 0.0)
    while True:
        with ctx.db.session() as session:
            pending = unfinished_issue(session, list_id, with_uncertain=resend_uncertain)
            pending_id = pending.id if pending else None
        if (pending_id is not None or time.monotonic() >= deadline
                or (should_stop is not None and should_stop())):
            break
        time.sleep(0.2)
    if pending_id is not None and sandbox:
        raise DigestError(f"an issue of {list_name} is still being sent; a sandbox run "
                          "would mark it delivered without delivering it",
                          hint=f"finish it first: digest send --list {list_name}")
    transport = transport or make_transport(ctx.settings)
    if pending_id is not None:
        # An issue whose send was interrupted goes out first, as it was built.
        if on_issue is not None:
            on_issue(pending_id)
        report = deliver(ctx, pending_id, transport, resend_uncertain=resend_uncertain,
                         sandbox=sandbox, on_progress=on_progress, should_stop=should_stop)
        return RunResult(list_name, None, report, resumed=True)
    if join_only:
        return RunResult(list_name, None, None)
    collected = None
    if collect_first:
        collected = collect(ctx.db, ctx.settings, now=now, on_start=on_collect_start,
                            on_fetched=on_fetched)
    draft = draft_issue(ctx, list_name, now=now, allow_empty=allow_empty)
    if draft is None:
        return RunResult(list_name, collected, None)
    if confirm is not None and not confirm(draft, audience_size(ctx, draft.list_id)):
        return RunResult(list_name, collected, None, declined=True)
    # A sandbox run validates the send and then forgets the issue: it must not count as
    # sent, or the real subscribers would never get these entries.
    started = time.perf_counter()
    try:
        issue_id = record_issue(ctx, draft, now=now,
                                status="sandbox" if sandbox else "sending")
    except IssueTaken:
        if sandbox:
            raise
        # Another `digest send` built this issue first: help send it instead.
        return run_list(ctx, list_name, collect_first=False, transport=transport, now=now,
                        on_progress=on_progress, should_stop=should_stop, join_only=True,
                        on_issue=on_issue)
    took = time.perf_counter() - started
    log.info("issue %d of %s recorded with its deliveries in %.1f s", draft.number,
             list_name, took, extra=fields(list=list_name, issue=issue_id,
                                           duration=round(took, 3)))
    if on_issue is not None and not sandbox:
        on_issue(issue_id)
    started = time.perf_counter()
    report = deliver(ctx, issue_id, transport, sandbox=sandbox, on_progress=on_progress,
                     should_stop=should_stop)
    took = time.perf_counter() - started
    log.info("issue %d of %s: this run handed over %d messages in %.1f s", draft.number,
             list_name, report.sent_now, took,
             extra=fields(list=list_name, issue=issue_id, count=report.sent_now,
                          counts=dict(report.counts), duration=round(took, 3)))
    if sandbox:
        discard_sandbox_issues(ctx, list_id)
    return RunResult(list_name, collected, report, warnings=draft.rendered.warnings)
