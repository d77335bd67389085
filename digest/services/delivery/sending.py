"""Deliver a recorded issue: one delivery record per subscriber, exactly once.

Every delivery goes from pending to accepted, failed, uncertain or skipped (someone who
left after the issue was built). Deliveries go out in send batches that move pending →
claimed → sending → done; each step is committed before the next network call, so a
process stopped at any moment resumes without sending twice: recipients of the batch in
flight at the stop are checked with the transport where it can tell, and otherwise
reported uncertain — never silently resent. docs/architecture.md has the whole design.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache, cached_property
from types import TracebackType
from typing import NamedTuple, Self

from prometheus_client import Histogram
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Update,
    and_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.elements import BindParameter

from digest.core.messages import domain_of, format_sender
from digest.core.rendering import Recipient, RenderedIssue
from digest.errors import DeliveryError
from digest.services.delivery.recording import add_batches
from digest.services.delivery.reports import counts, failures
from digest.services.storage.claims import claimer_gone, hold, let_go, worker_identity
from digest.services.storage.context import Context
from digest.services.storage.db import among, utcnow
from digest.services.storage.models import (
    ACCEPTED,
    FAILED,
    HELD,
    UNCERTAIN,
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    IssueVariant,
    SendBatch,
    deliveries_by_status,
    get_issue,
    held_batches,
)
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import MailingList, Subscriber, Subscription
from digest.services.telemetry import metrics
from digest.services.transports import batch_size
from digest.services.transports.base import (
    NO_HEADERS,
    HandOver,
    Outcome,
    OutgoingIssue,
    OutgoingRecipient,
    Transport,
)

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
        sender_name=s.from_name,
        reply_to=s.reply_to or None,
        headers={"List-Id": f"{mailing_list.title} <{mailing_list.name}.{domain}>",
                 "Precedence": "bulk", "Auto-Submitted": "auto-generated"},
        sandbox=sandbox)


class RecipientMaker:
    """Makes an issue's recipients: their signed links (from which their RFC 8058
    headers are made) and Message-ID.

    What every recipient shares (base URLs, the Message-ID's form) is worked out once;
    a send makes one recipient per reader.
    """

    def __init__(self, ctx: Context, issue: OutgoingIssue) -> None:
        self._unsubscribe_token = ctx.tokens.maker("unsubscribe")
        self._preferences_token = ctx.tokens.maker("preferences")
        self._unsubscribe = ctx.url("u/")
        self._preferences = ctx.url("p/")
        self._message_id = (f"<digest.{issue.list_name}.{issue.number}.%d@"
                            f"{domain_of(issue.sender_email)}>")

    def __call__(self, delivery_id: int, subscriber_id: int, subscription_id: int,
                 email: str, name: str) -> OutgoingRecipient:
        values = Recipient(self._unsubscribe + self._unsubscribe_token(subscription_id),
                           self._preferences + self._preferences_token(subscription_id),
                           name)
        return OutgoingRecipient(delivery_id, subscriber_id, email, name, values,
                                 NO_HEADERS, self._message_id % delivery_id)


def _ids(postgres: bool, ids: Sequence[int] | None = None) -> ColumnElement[bool]:
    """``deliveries.id`` among ``ids`` (given now, or as the parameter "ids" when the
    statement runs)."""
    return among(Delivery.id, postgres, ids, "ids")


Row = tuple[int, int, int, str, str, str, int | None]


def _of_issue(issue_id: int | BindParameter[int]) -> ColumnElement[bool]:
    """Deliveries of an issue, for queries that also give an id range.

    Written so that no index can serve it: otherwise SQLite walks every delivery of the
    issue through the (issue_id, subscriber_id) index to find a thousand of them by id.
    """
    return Delivery.issue_id + 0 == issue_id


def _pending_between(issue_id: int | BindParameter[int], first_id: int | BindParameter[int],
                     last_id: int | BindParameter[int]) -> ColumnElement[bool]:
    """Pending deliveries of an issue among the ids ``first_id``…``last_id``."""
    return and_(Delivery.id.between(first_id, last_id), _of_issue(issue_id),
                Delivery.status == DeliveryStatus.PENDING)


# The statements a batch runs are built once (on first use), with bound parameters:
# building a statement anew costs SQLAlchemy far more than running a built one, and a send
# runs them again for every batch.

@cache
def _pending_rows_query() -> Select[int, int, int, str, str, str, int | None]:
    return (select(Delivery.id, Delivery.subscriber_id, Delivery.subscription_id,
                   Subscriber.email, Subscriber.name, Subscription.status,
                   Delivery.variant_id)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .join(Subscription, Subscription.id == Delivery.subscription_id)
            .where(_pending_between(bindparam("issue_id"), bindparam("first_id"),
                                    bindparam("last_id")))
            .order_by(Delivery.id))


def _pending_rows(conn: Connection, issue_id: int, first_id: int, last_id: int) -> list[Row]:
    """Pending deliveries of a batch: (delivery, subscriber, subscription, email, name,
    subscription status, variant)."""
    return conn.execute(_pending_rows_query(), {  # type: ignore[return-value]  # tuples
        "issue_id": issue_id, "first_id": first_id, "last_id": last_id}).all()


@cache
def _outcome_update(postgres: bool) -> Update:
    """UPDATE of the deliveries ``ids`` with one outcome (see :func:`_ids`)."""
    return update(Delivery).where(_ids(postgres)).values(
        status=bindparam("new_status"), message_id=bindparam("new_message_id"),
        error=bindparam("new_error"), updated_at=bindparam("at"),
        attempts=Delivery.attempts + 1)


def _set_status(ctx: Context, conn: Connection, ids: Sequence[int], status: str, *,  # noqa: PLR0913 - keyword-only: what a status move may also set
                now: datetime, error: str | None = None, only_from: str | None = None,
                count_attempt: bool = False) -> None:
    """Move deliveries to ``status``; ``only_from`` makes it conditional on the current one."""
    values: dict[str, object] = {"status": status, "updated_at": now}
    if error is not None:
        values["error"] = error[:2000]
    if count_attempt:
        values["attempts"] = Delivery.attempts + 1
    _update_deliveries(ctx, conn, ids, values, only_from=only_from)


def _thousands(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    """``ids`` a thousand at a time, as one statement's list of ids takes them."""
    for start in range(0, len(ids), 1000):
        yield ids[start:start + 1000]


def _update_deliveries(ctx: Context, conn: Connection, ids: Sequence[int],
                       values: dict[str, object], *, only_from: str | None = None) -> None:
    """Write ``values`` onto the deliveries ``ids``, a thousand a statement; ``only_from``
    keeps to those still in that status."""
    for chunk in _thousands(ids):
        query = update(Delivery).where(_ids(ctx.db.is_postgres, chunk)).values(**values)
        if only_from is not None:
            query = query.where(Delivery.status == only_from)
        conn.execute(query)


@dataclass(frozen=True)
class Claim:
    """A batch this process claimed: its id and the delivery ids it covers."""

    batch_id: int
    first_id: int
    last_id: int


@cache
def _batch_move(holder: bool) -> ReturningUpdate[int]:
    query = (update(SendBatch)
             .where(SendBatch.id == bindparam("batch_id"),
                    SendBatch.status == bindparam("from_status"))
             .values(status=bindparam("to_status"), updated_at=bindparam("at"),
                     claimed_by=bindparam("claimer"), lease_until=bindparam("lease")))
    if holder:
        query = query.where(SendBatch.claimed_by == bindparam("holder"))
    return query.returning(SendBatch.id)


def _move_batch(conn: Connection, batch_id: int, status: str, now: datetime, *,  # noqa: PLR0913 - keyword-only: what a batch move may also set
                only_from: str, holder: str | None = None, lease: datetime | None = None,
                claimer: str | None = None) -> bool:
    """Move one batch between states; False if it was not in the expected state (taken)."""
    return conn.execute(_batch_move(holder is not None), {
        "batch_id": batch_id, "from_status": only_from, "to_status": status, "at": now,
        "claimer": claimer, "lease": lease, "holder": holder}).first() is not None


def settle_abandoned(ctx: Context, issue: OutgoingIssue, transport: Transport,
                     now: datetime, me: str) -> tuple[int, int]:
    """Settle batches held by a sender that died: (confirmed, uncertain) deliveries.

    Claimed but never handed over: the batch goes back to pending. Being handed over: its
    deliveries are accepted where the transport can prove they went out, otherwise
    uncertain — never silently resent.
    """
    with ctx.db.session() as session:
        held = session.execute(
            select(SendBatch.id, SendBatch.status, SendBatch.claimed_by,
                   SendBatch.lease_until, SendBatch.first_id, SendBatch.last_id)
            .where(SendBatch.issue_id == issue.issue_id,
                   SendBatch.status.in_(HELD))).all()
    confirmed_total = uncertain_total = 0
    make = RecipientMaker(ctx, issue)
    for batch_id, status, by, lease, first_id, last_id in held:
        if by == me or not claimer_gone(by, lease, now):
            continue
        if status == BatchStatus.CLAIMED:
            with ctx.db.engine.begin() as conn:
                _move_batch(conn, batch_id, BatchStatus.PENDING, now,
                            only_from=BatchStatus.CLAIMED, holder=by)
            continue
        with ctx.db.engine.begin() as conn:
            rows = _pending_rows(conn, issue.issue_id, first_id, last_id)
        recipients = [make(d, sub, subn, email, name) for d, sub, subn, email, name, _, _
                      in rows]
        confirmed = transport.already_sent(issue, recipients)
        unsure = [r.delivery_id for r in recipients if r.delivery_id not in confirmed]
        with ctx.db.engine.begin() as conn:
            _set_status(ctx, conn, sorted(confirmed), ACCEPTED, now=now,
                        only_from=DeliveryStatus.PENDING,
                        count_attempt=True)
            _set_status(ctx, conn, unsure, UNCERTAIN, now=now,
                        only_from=DeliveryStatus.PENDING,
                        count_attempt=True,
                        error="the send stopped while this message was being handed over")
            _move_batch(conn, batch_id, BatchStatus.DONE, now, only_from=BatchStatus.SENDING,
                        holder=by)
        confirmed_total += len(confirmed)
        uncertain_total += len(unsure)
    if uncertain_total:
        log.warning("issue %s: %d deliveries were in flight when a send stopped; marked "
                    "uncertain (resend with --resend-uncertain)", issue.issue_id,
                    uncertain_total)
    return confirmed_total, uncertain_total


def claim_batch(ctx: Context, conn: Connection, issue_id: int, me: str,
                now: datetime) -> Claim | None:
    """Claim the next pending batch of an issue for this process, under a lease.

    On PostgreSQL the candidate is locked with FOR UPDATE SKIP LOCKED, so workers on
    several machines take different batches; SQLite runs one writer at a time anyway.
    """
    lease = now + timedelta(seconds=ctx.settings.send_lease_seconds)
    row = conn.execute(_claim(ctx.db.is_postgres), {
        "of_issue": issue_id, "me": me, "lease": lease, "at": now}).first()
    return Claim(*row) if row else None


@cache
def _claim(postgres: bool) -> ReturningUpdate[int, int, int]:
    candidate = (select(SendBatch.id)
                 .where(SendBatch.issue_id == bindparam("of_issue"),
                        SendBatch.status == BatchStatus.PENDING)
                 .order_by(SendBatch.id).limit(1))
    claim = update(SendBatch).values(status=BatchStatus.CLAIMED, claimed_by=bindparam("me"),
                                     lease_until=bindparam("lease"),
                                     updated_at=bindparam("at"))
    if postgres:
        # A CTE is evaluated once; an IN (subquery … LIMIT) may be re-scanned.
        picked = candidate.with_for_update(skip_locked=True).cte("picked")
        claim = claim.where(SendBatch.id == picked.c.id)
    else:
        claim = claim.where(SendBatch.id.in_(candidate.scalar_subquery()))
    return claim.where(SendBatch.status == BatchStatus.PENDING).returning(
        SendBatch.id, SendBatch.first_id, SendBatch.last_id)


def batches_held(ctx: Context, issue_id: int) -> int:
    """Batches of an issue that some sender holds (claimed or being handed over)."""
    with ctx.db.session() as session:
        return session.scalar(held_batches(issue_id)) or 0


def pending_in_held_batches(ctx: Context, issue_id: int) -> int:
    """Pending deliveries of an issue's batches that are not done.

    Every pending delivery lies in such a batch, so this is the issue's pending count,
    read from the few batches still out rather than from every delivery of the issue.
    """
    with ctx.db.session() as session:
        ranges = session.execute(select(SendBatch.first_id, SendBatch.last_id).where(
            SendBatch.issue_id == issue_id, SendBatch.status != BatchStatus.DONE)).all()
        return sum(session.scalar(
            select(func.count()).select_from(Delivery)
            .where(_pending_between(issue_id, first, last))) or 0 for first, last in ranges)


def deliver(ctx: Context, issue_id: int, transport: Transport, *,  # noqa: PLR0913 - keyword-only: the clock, the sleep and the callbacks a test replaces
            resend_uncertain: bool = False, sandbox: bool = False,
            on_progress: ProgressCallback | None = None,
            should_stop: Callable[[], bool] | None = None,
            now: Callable[[], datetime] = utcnow,
            sleep: Callable[[float], None] = time.sleep) -> SendReport:
    """Send an issue's pending deliveries in claimed batches; resumable at any point.

    Several processes may run this for the same issue at once (``digest send --worker``):
    each claims its own batches and waits at the end for the others' to settle.
    """
    with ctx.db.session() as session:
        issue_row, mailing_list = get_issue(session, issue_id)
        issue = outgoing_issue(mailing_list, issue_row, ctx, sandbox=sandbox)
    report = SendReport(issue_id, issue.list_name, issue.number, issue.rendered.subject)
    me = worker_identity()
    hold(me)  # its claims are alive to this process's other senders until it ends
    started, outcome = time.perf_counter(), metrics.SendOutcome.FAILED
    try:
        _deliver(ctx, issue, report, transport, me, resend_uncertain=resend_uncertain,
                 on_progress=on_progress, should_stop=should_stop, now=now, sleep=sleep)
        # Told to stop only once the issue was done (a helper let go at the end): not a
        # stopped send.
        stopped = report.stopped and not report.finished
        outcome = (metrics.SendOutcome.STOPPED if stopped else metrics.SendOutcome.OK
                   if report.ok else metrics.SendOutcome.FAILED)
        return report
    finally:
        let_go(me)
        metrics.SEND_SECONDS.labels(issue.list_name).observe(time.perf_counter() - started)
        metrics.SENDS.labels(issue.list_name, outcome).inc()
        if outcome == "ok":
            metrics.LAST_SUCCESS.labels("send").set(time.time())


@dataclass
class _Run:
    """This process's part in sending one issue."""

    ctx: Context
    issue: OutgoingIssue
    transport: Transport
    me: str
    now: Callable[[], datetime]
    make: RecipientMaker
    # One connection for the whole send, a transaction per step: checking one out of the
    # pool for each step would ping it each time, and a send is many short steps.
    conn: Connection
    variants: dict[int, RenderedIssue] = field(default_factory=dict)  # segments' renderings

    @cached_property
    def batch_seconds(self) -> Histogram:
        return metrics.BATCH_SECONDS.labels(self.transport.name)

    @contextmanager
    def step(self) -> Iterator[Connection]:
        """One committed step of the send."""
        with self.conn.begin():
            yield self.conn


def _deliver(ctx: Context, issue: OutgoingIssue, report: SendReport, transport: Transport,  # noqa: PLR0913 - deliver's own options, passed on
             me: str, *, resend_uncertain: bool, on_progress: ProgressCallback | None,
             should_stop: Callable[[], bool] | None, now: Callable[[], datetime],
             sleep: Callable[[float], None]) -> SendReport:
    issue_id = issue.issue_id
    with transport, ctx.db.engine.connect() as conn:
        run = _Run(ctx, issue, transport, me, now, RecipientMaker(ctx, issue), conn)
        settle_abandoned(ctx, issue, transport, now(), me)
        if resend_uncertain:
            with ctx.db.session() as session:
                moved = session.scalars(update(Delivery).where(
                    Delivery.issue_id == issue_id, Delivery.status == UNCERTAIN)
                    .values(status=DeliveryStatus.PENDING, error=None, updated_at=now())
                    .execution_options(synchronize_session=False)
                    .returning(Delivery.id)).first()
                if moved is not None:
                    add_batches(session, issue_id, batch_size(ctx.settings), now())
        tally = counts(ctx, issue_id)
        total = sum(tally.values())
        done = total - tally[DeliveryStatus.PENDING]
        waiting = 0.02  # seconds before looking again at batches other senders hold
        with _HandOvers(run) as hand_overs:
            while True:
                if should_stop is not None and should_stop():
                    report.stopped = True
                    break
                if on_progress:
                    on_progress(done, total)
                with run.step():
                    claim = claim_batch(ctx, conn, issue_id, me, now())
                    rows = (_pending_rows(conn, issue_id, claim.first_id, claim.last_id)
                            if claim else [])
                if claim is None:
                    # Ours in flight first: the batches others hold are waited for below.
                    report.sent_now += hand_overs.settle()
                    if not batches_held(ctx, issue_id):
                        break
                    # Other senders hold the rest: wait for them, or for their leases to
                    # end. A batch is quick for them: look again soon, then less and less
                    # often (a fixed long wait would leave this sender idle well after the
                    # batches it waits for are done, and `--jobs 2` slower than one).
                    sleep(waiting)
                    waiting = min(waiting * 2, 1.0)
                    settle_abandoned(ctx, issue, transport, now(), me)
                    done = total - pending_in_held_batches(ctx, issue_id)
                    continue
                waiting = 0.02
                report.sent_now += _send_claimed(run, claim, rows, hand_overs)
                done += len(rows)
            report.sent_now += hand_overs.settle()

    report.counts, report.finished = _close_run(ctx, issue_id, now())
    report.failures = failures(ctx, issue_id, tally=report.counts)
    if on_progress:
        on_progress(total - report.counts[DeliveryStatus.PENDING], total)
    return report


def _close_run(ctx: Context, issue_id: int, now: datetime) -> tuple[Counter[str], bool]:
    """Count the issue's deliveries onto its record, and mark it sent if nothing is left.

    Return (counts, finished).
    """
    with ctx.db.session() as session:
        # The issue row's write lock comes first, so senders that end together write in
        # turn, each counting everything the others committed before it.
        session.execute(update(Issue).where(Issue.id == issue_id)
                        .values(counts=Issue.counts)
                        .execution_options(synchronize_session=False))
        tally = deliveries_by_status(session, issue_id)
        held = session.scalar(held_batches(issue_id))
        finished = not tally[DeliveryStatus.PENDING] and not held
        session.execute(update(Issue).where(Issue.id == issue_id).values(counts=dict(tally))
                        .execution_options(synchronize_session=False))
        if finished:
            session.execute(update(Issue).where(Issue.id == issue_id,
                                                Issue.status == IssueStatus.SENDING)
                            .values(status=IssueStatus.SENT, sent_at=now)
                            .execution_options(synchronize_session=False))
    return tally, finished


class _InFlight(NamedTuple):
    """A group of a claimed batch being handed over."""

    claim: Claim
    outcomes: Future[list[Outcome]]
    last: bool  # the batch's last group: once it is recorded the batch is done
    handed: float  # perf_counter() when it was handed over


class _HandOvers:
    """A send's hand-overs, one at a time, in order.

    With a transport whose hand-over is mostly waiting on the network (``overlaps``),
    it runs on a thread of its own while the caller claims, reads and prepares the next
    batch; its outcomes are recorded in the transaction that hands the next one over.
    Otherwise each runs on the caller's thread and is recorded at once. Either way at
    most one hand-over is in flight, and every batch moves claimed → sending (committed)
    before its hand-over starts, as docs/architecture.md describes.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.pool = (ThreadPoolExecutor(1, thread_name_prefix="digest-hand-over")
                     if run.transport.overlaps else None)
        self.current: _InFlight | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None and self.current is not None:
                # Stopped by something else: what is in flight still gets its outcomes
                # written, so it is not left "maybe sent".
                with suppress(Exception):
                    self.settle()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)

    def start(self, claim: Claim, hand_over: HandOver, *, last: bool) -> int:
        """Hand a prepared group over; return how many of it were accepted if it was
        handed over (and recorded) on this thread."""
        assert self.current is None, "one hand-over at a time"
        handed = time.perf_counter()
        if self.pool is not None:
            self.current = _InFlight(claim, self.pool.submit(hand_over), last, handed)
            return 0
        future: Future[list[Outcome]] = Future()
        try:
            future.set_result(hand_over())
        except DeliveryError as e:
            future.set_exception(e)
        self.current = _InFlight(claim, future, last, handed)
        return self.settle()

    def outcomes(self) -> tuple[_InFlight, list[Outcome]] | None:
        """Wait for the hand-over in flight. When the transport gave up on it (nothing of
        it went out), its batch goes back to pending and the error is raised."""
        current, self.current = self.current, None
        if current is None:
            return None
        try:
            return current, current.outcomes.result()
        except DeliveryError:
            with self.run.step() as conn:
                _move_batch(conn, current.claim.batch_id, BatchStatus.PENDING, self.run.now(),
                            only_from=BatchStatus.SENDING, holder=self.run.me)
            raise

    def record(self, conn: Connection, finished: tuple[_InFlight, list[Outcome]] | None
               ) -> int:
        """Write the outcomes of a finished hand-over (inside the caller's transaction);
        return how many were accepted."""
        if finished is None:
            return 0
        current, outcomes = finished
        run = self.run
        _record(run.ctx, conn, outcomes, run.now())
        if current.last:  # the outcomes and the batch's end in one transaction
            _move_batch(conn, current.claim.batch_id, BatchStatus.DONE, run.now(),
                        only_from=BatchStatus.SENDING, holder=run.me)
        run.batch_seconds.observe(time.perf_counter() - current.handed)
        by_outcome = Counter(o.status for o in outcomes)
        for status, n in by_outcome.items():
            metrics.RECIPIENTS.labels(run.issue.list_name, status).inc(n)
        return by_outcome[ACCEPTED]

    def settle(self) -> int:
        """Wait for the hand-over in flight and record it; return how many it accepted."""
        finished = self.outcomes()
        if finished is None:
            return 0
        with self.run.step() as conn:
            return self.record(conn, finished)


def _send_claimed(run: _Run, claim: Claim, rows: list[Row], hand_overs: _HandOvers) -> int:
    """Prepare one claimed batch (its pending ``rows``) and hand it to the transport
    after the one in flight, recording that one's outcomes. Return how many were
    accepted of what was recorded."""
    ctx, now = run.ctx, run.now
    left = [r[0] for r in rows if r[5] != SubscriptionStatus.ACTIVE]
    # Keyword segments get their own rendering; a batch rarely spans more than one.
    groups: dict[int | None, list[OutgoingRecipient]] = {}
    for d, sub, subn, email, name, status, variant in rows:
        if status == SubscriptionStatus.ACTIVE:
            groups.setdefault(variant, []).append(run.make(d, sub, subn, email, name))
    prepared = [run.transport.prepare_batch(variant_issue(ctx, run.issue, variant,
                                                          run.variants), recipients)
                for variant, recipients in groups.items()]
    try:
        finished = hand_overs.outcomes()
    except DeliveryError:
        with run.step() as conn:  # never handed over: for another run
            _move_batch(conn, claim.batch_id, BatchStatus.PENDING, now(),
                        only_from=BatchStatus.CLAIMED,
                        holder=run.me)
        raise
    # Committed before the hand-over: after a crash this batch reads "maybe sent". If the
    # claim was taken over meanwhile (our lease ran out), someone else sends it.
    lease = now() + timedelta(seconds=ctx.settings.send_lease_seconds)
    with run.step() as conn:
        accepted = hand_overs.record(conn, finished)
        _set_status(ctx, conn, left, DeliveryStatus.SKIPPED, now=now(),
                    only_from=DeliveryStatus.PENDING,
                    error="no longer subscribed when the batch was sent")
        if not _move_batch(conn, claim.batch_id, BatchStatus.SENDING, now(),
                           only_from=BatchStatus.CLAIMED,
                           holder=run.me, claimer=run.me, lease=lease):
            return accepted
        if not prepared:
            _move_batch(conn, claim.batch_id, BatchStatus.DONE, now(),
                        only_from=BatchStatus.SENDING,
                        holder=run.me)
    if left:
        metrics.RECIPIENTS.labels(run.issue.list_name, DeliveryStatus.SKIPPED).inc(len(left))
    last = len(prepared) - 1
    for i, hand_over in enumerate(prepared):
        if i:  # a batch's later segments go after its earlier ones are recorded
            accepted += hand_overs.settle()
        accepted += hand_overs.start(claim, hand_over, last=i == last)
    return accepted


def variant_issue(ctx: Context, issue: OutgoingIssue, variant_id: int | None,
                  cache: dict[int, RenderedIssue]) -> OutgoingIssue:
    """The issue as one keyword segment gets it (the full issue for None)."""
    if variant_id is None:
        return issue
    rendered = cache.get(variant_id)
    if rendered is None:
        with ctx.db.session() as session:
            row = session.get(IssueVariant, variant_id)
            if row is None:
                raise DeliveryError(f"issue {issue.issue_id} lost its segment {variant_id}")
            rendered = RenderedIssue(row.subject, row.html, row.text, "")
        cache[variant_id] = rendered
    return replace(issue, rendered=rendered)


def _record(ctx: Context, conn: Connection, outcomes: Sequence[Outcome],
            now: datetime) -> None:
    """Write each outcome onto its delivery record.

    Outcomes that say the same (a SendGrid batch shares one status and X-Message-Id) go
    in one UPDATE each.
    """
    groups: dict[tuple[str, str | None, str | None], list[int]] = {}
    for o in outcomes:
        key = (o.status, o.message_id, o.error[:2000] if o.error else None)
        groups.setdefault(key, []).append(o.delivery_id)
    statement = _outcome_update(ctx.db.is_postgres)
    for (status, message_id, error), ids in groups.items():
        for chunk in _thousands(ids):
            conn.execute(statement, {"ids": chunk, "new_status": status,
                                     "new_message_id": message_id, "new_error": error,
                                     "at": now})
