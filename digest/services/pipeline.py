"""The whole job for one list: collect, build the issue, deliver it.

`digest send`, the scheduled job and a web "Send now" (which the scheduler's runner
carries out) all call :func:`run_list`; nothing else collects, builds and delivers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime

from digest.errors import DigestError
from digest.services.building.drafts import Draft, draft_issue
from digest.services.delivery.recording import (
    IssueTaken,
    audience_size,
    discard_sandbox_issues,
    record_issue,
    unfinished_issue,
)
from digest.services.delivery.sending import SendReport, deliver
from digest.services.feeds.collect import CollectReport, collect
from digest.services.feeds.fetch import FetchResult
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.models import IssueStatus
from digest.services.telemetry.logs import fields
from digest.services.transports import Transport, make_transport, transport_class
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


@dataclass(frozen=True)
class RunRequest:
    """What one run for a list is asked to do.

    ``allow_empty`` (a schedule that sends even when nothing is new): an issue with no
    entries is sent rather than nothing. ``join_only`` (``digest send --worker``): only
    help send the list's issue that is being sent, waiting up to ``wait_for_issue``
    seconds for one to start; never collect or build an issue. ``hold_for_approval`` (a
    schedule that holds): once collected, wait for an editor (``RunEvents.approved``)
    before the issue is built as it goes out. ``finish_issue`` (a run taken over from one
    that died after recording its issue): send that issue's remaining deliveries and
    build none.
    """

    list_name: str
    collect_first: bool = True
    resend_uncertain: bool = False
    sandbox: bool = False
    join_only: bool = False
    allow_empty: bool = False
    wait_for_issue: float = 0.0
    hold_for_approval: bool = False
    finish_issue: int | None = None


class RunEvents:
    """What a run tells the one who started it, and asks them. Every method does nothing
    (or says go on) unless a subclass says otherwise: the CLI draws a progress bar and
    asks before sending, the scheduler waits for and checks approvals and has a stop
    flag, a web "Send now" (carried out by the scheduler's runner) has the same."""

    def collect_started(self, feeds: int) -> None:
        """Collecting begins, with this many feeds."""

    def feed_fetched(self, result: FetchResult) -> None:
        """One feed's fetch ended (whatever its outcome)."""

    def approved(self, number: int) -> bool:
        """With ``hold_for_approval``: wait until issue ``number`` is approved (True: go
        on and build it as approved) or waiting ends (False: not sent)."""
        return True

    def confirm(self, draft: Draft, audience: int) -> bool:
        """Whether to send this new issue to ``audience`` people (True: go on)."""
        return True

    def issue_started(self, issue_id: int) -> None:
        """The issue is recorded and about to go out (the CLI starts its helpers here)."""

    def progress(self, done: int, total: int) -> None:
        """Deliveries settled so far, of all of the issue's."""

    def should_stop(self) -> bool:
        """Asked between batches: True stops the send there (the next run resumes it)."""
        return False


NO_EVENTS = RunEvents()


def warm_up(ctx: Context) -> None:
    """Load now what a run will need: the fetching and parsing libraries, the transport's
    client library, the templates compiled and premailer made. The scheduler calls it
    while it waits for a slot, so a scheduled send pays none of a command's start-up."""
    import feedparser  # noqa: F401  (parse_feed imports it at the first feed that changed)

    from digest.services.feeds import fetch, tls  # noqa: F401  (fetch: httpx)
    tls.prepare()
    transport_class(ctx.settings.transport)
    ctx.renderer.warm_up()


def run_list(ctx: Context, request: RunRequest, events: RunEvents = NO_EVENTS, *,
             transport: Transport | None = None, now: datetime | None = None) -> RunResult:
    """Collect (unless asked not to), then finish an interrupted issue or send a new one."""
    now = now or utcnow()
    list_name = request.list_name
    with ctx.db.session() as session:
        list_id = get_list(session, list_name).id
    if not request.join_only:
        discard_sandbox_issues(ctx, list_id)
        expire_pending(ctx, now=now)  # unconfirmed sign-ups past their time
    pending_id = _issue_to_finish(ctx, request, list_id, events)
    transport = transport or make_transport(ctx.settings)
    if pending_id is not None:
        # An issue whose send was interrupted goes out first, as it was built.
        events.issue_started(pending_id)
        report = deliver(ctx, pending_id, transport,
                         resend_uncertain=request.resend_uncertain, sandbox=request.sandbox,
                         on_progress=events.progress, should_stop=events.should_stop)
        return RunResult(list_name, None, report, resumed=True)
    if request.join_only:
        return RunResult(list_name, None, None)
    collected = None
    if request.collect_first:
        collected = collect(ctx.db, ctx.settings, now=now, on_start=events.collect_started,
                            on_fetched=events.feed_fetched)
    draft, declined = _issue_to_send(ctx, request, events, now)
    if draft is None:
        return RunResult(list_name, collected, None, declined=declined)
    # A sandbox run validates the send and then forgets the issue: it must not count as
    # sent, or the real subscribers would never get these entries.
    started = time.perf_counter()
    try:
        issue_id = record_issue(ctx, draft, now=now,
                                status=IssueStatus.SANDBOX if request.sandbox
                                else IssueStatus.SENDING)
    except IssueTaken:
        if request.sandbox:
            raise
        # Another `digest send` built this issue first: help send it instead.
        return run_list(ctx, replace(request, collect_first=False, join_only=True,
                                     wait_for_issue=0.0), events, transport=transport,
                        now=now)
    took = time.perf_counter() - started
    log.info("issue %d of %s recorded with its deliveries in %.1f s", draft.number,
             list_name, took, extra=fields(list=list_name, issue=issue_id,
                                           duration=round(took, 3)))
    if not request.sandbox:
        events.issue_started(issue_id)
    started = time.perf_counter()
    report = deliver(ctx, issue_id, transport, sandbox=request.sandbox,
                     on_progress=events.progress, should_stop=events.should_stop)
    took = time.perf_counter() - started
    log.info("issue %d of %s: this run handed over %d messages in %.1f s", draft.number,
             list_name, report.sent_now, took,
             extra=fields(list=list_name, issue=issue_id, count=report.sent_now,
                          counts=dict(report.counts), duration=round(took, 3)))
    if request.sandbox:
        discard_sandbox_issues(ctx, list_id)
    return RunResult(list_name, collected, report, warnings=draft.rendered.warnings)


def _issue_to_finish(ctx: Context, request: RunRequest, list_id: int,
                     events: RunEvents) -> int | None:
    """The list's issue to finish before building any: the one asked for, or one whose
    send was interrupted (joining, wait up to ``wait_for_issue`` for one to start)."""
    if request.finish_issue is not None:
        return request.finish_issue
    deadline = time.monotonic() + (request.wait_for_issue if request.join_only else 0.0)
    while True:
        with ctx.db.session() as session:
            pending = unfinished_issue(session, list_id,
                                       with_uncertain=request.resend_uncertain)
            pending_id = pending.id if pending else None
        if pending_id is not None or time.monotonic() >= deadline or events.should_stop():
            break
        time.sleep(0.2)
    if pending_id is not None and request.sandbox:
        raise DigestError(f"an issue of {request.list_name} is still being sent; a sandbox "
                          "run would mark it delivered without delivering it",
                          hint=f"finish it first: digest send --list {request.list_name}")
    return pending_id


def _issue_to_send(ctx: Context, request: RunRequest, events: RunEvents,
                   now: datetime) -> tuple[Draft | None, bool]:
    """The new issue as it goes out, approved (when held) and confirmed; or None, and
    whether it was declined rather than there being nothing new."""
    draft = draft_issue(ctx, request.list_name, now=now, allow_empty=request.allow_empty)
    if draft is not None and request.hold_for_approval:
        # Editors approve what they saw; whatever they changed while we waited is in the
        # issue built again here, and confirm checks the approval still stands.
        if not events.approved(draft.number):
            return None, True
        draft = draft_issue(ctx, request.list_name, now=now, allow_empty=request.allow_empty)
    if draft is None:
        return None, False
    if not events.confirm(draft, audience_size(ctx, draft.list_id)):
        return None, True
    return draft, False
