"""Run one slot of a schedule, exactly once: claim it in the database, then do the job.

The claim is a row unique on (schedule, slot) inserted before any work. A restart, a
misfire replay, `digest schedules run` racing the timer or a second instance all try the
same insert; one wins, the others log that the slot was taken. A claim whose holder died
(its process is gone, or its lease ran out) is taken over, and the takeover resumes the
issue the dead run had started instead of building another.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from digest.services import metrics
from digest.services.building import Draft, draft_issue, next_number
from digest.services.collect import collect
from digest.services.context import Context
from digest.services.db import utcnow
from digest.services.delivery import SendReport, claimer_gone, deliver, worker_identity
from digest.services.editing import approval
from digest.services.logs import fields
from digest.services.pipeline import RunEvents, RunRequest, run_list
from digest.services.transports import Transport, make_transport
from schedules.expressions import next_slots, parse_expression, slot_key, time_zone
from schedules.models import RunStatus, Schedule, ScheduleRun
from subscribers.models import MailingList

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=90)
RENEW_EVERY = 20.0
# States a run can be taken over from once its holder is gone.
TAKEABLE = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.INTERRUPTED)


@dataclass
class SlotResult:
    """What running a slot did."""

    status: RunStatus
    message: str = ""
    issue_id: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    run_id: int | None = None

    @property
    def failed(self) -> bool:
        """Whether the run failed (and may be retried)."""
        return self.status == RunStatus.FAILED


def slots_between(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """The schedule's slots in (start, end]."""
    spec, zone = parse_expression(schedule.expression), time_zone(schedule.timezone)
    return [s for s in next_slots(spec, zone, start, 500) if s <= end]


def due_slot(schedule: Schedule, now: datetime) -> datetime | None:
    """The latest slot at or before ``now`` that is still within the misfire grace time."""
    found = slots_between(schedule, now - timedelta(seconds=schedule.misfire_grace_seconds),
                          now)
    return found[-1] if found else None


def manual_slot(ctx: Context, schedule: Schedule, now: datetime) -> datetime:
    """The slot `digest schedules run` stands for.

    A due slot nobody ran yet; otherwise the next one (running early sends that slot's
    issue, and the timer then finds it taken).
    """
    due = due_slot(schedule, now)
    if due is not None:
        key = slot_key(due, time_zone(schedule.timezone))
        with ctx.db.session() as session:
            if session.scalar(select(ScheduleRun.id).where(
                    ScheduleRun.schedule_id == schedule.id, ScheduleRun.slot_key == key)) \
                    is None:
                return due
    spec, zone = parse_expression(schedule.expression), time_zone(schedule.timezone)
    upcoming = next_slots(spec, zone, now, 1)
    return upcoming[0] if upcoming else now


def _gone(claimed_by: str | None, lease_until: datetime | None, now: datetime,
          me: str) -> bool:
    """Whether a run's holder is gone: its lease ran out, or its process on this host died.

    A claim by this very process is alive while its lease is (one process never runs a
    slot twice at once: APScheduler's max_instances is 1).
    """
    if claimed_by == me:
        return False
    if lease_until is None or lease_until < now:
        return True
    pid = (claimed_by or "").split(":")[1:2]
    if pid == [str(os.getpid())]:
        return False
    return claimer_gone(claimed_by, lease_until, now)


def claim(ctx: Context, schedule: Schedule, slot_at: datetime, trigger: str, me: str,
          now: datetime, *, max_attempts: int = 1) -> int | None:
    """Claim a slot for this process; the run's id, or None if someone else has it."""
    key = slot_key(slot_at, time_zone(schedule.timezone))
    try:
        with ctx.db.session() as session:
            run = ScheduleRun(schedule_id=schedule.id, slot_key=key, slot_at=slot_at,
                              status=RunStatus.RUNNING, trigger=trigger, claimed_by=me,
                              lease_until=now + LEASE, attempts=1, started_at=now,
                              counts={}, message="")
            session.add(run)
            session.flush()
            return run.id
    except IntegrityError:
        pass
    with ctx.db.session() as session:
        run = session.scalars(select(ScheduleRun).where(
            ScheduleRun.schedule_id == schedule.id, ScheduleRun.slot_key == key)).one()
        takeable = (run.status in TAKEABLE and _gone(run.claimed_by, run.lease_until, now, me))
        retry = (trigger == "retry" and run.status == RunStatus.FAILED
                 and run.attempts < max_attempts)
        if not (takeable or retry):
            return None
        # Conditional on what we read: of two processes taking over, one wins.
        taken = session.scalars(
            update(ScheduleRun).where(ScheduleRun.id == run.id,
                                      ScheduleRun.status == run.status,
                                      or_(ScheduleRun.claimed_by == run.claimed_by,
                                          ScheduleRun.claimed_by.is_(None)))
            .values(status=RunStatus.RUNNING, claimed_by=me, lease_until=now + LEASE,
                    attempts=ScheduleRun.attempts + 1, trigger=trigger, finished_at=None)
            .execution_options(synchronize_session=False)
            .returning(ScheduleRun.id)).first()
        if taken is not None:
            log.info("slot %s of schedule %s: taking over from %s (%s)", key, schedule.name,
                     run.claimed_by, run.status)
        return taken


class _LeaseKeeper:
    """Renews a run's lease in the background while the run works."""

    def __init__(self, ctx: Context, run_id: int, me: str) -> None:
        self.ctx, self.run_id, self.me = ctx, run_id, me
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"lease-run-{run_id}")

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY):
            try:
                _update(self.ctx, self.run_id, self.me, lease_until=utcnow() + LEASE)
            except Exception:  # a database hiccup: try again at the next tick
                log.warning("could not renew the lease of run %s", self.run_id, exc_info=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _update(ctx: Context, run_id: int, me: str, **values: object) -> None:
    with ctx.db.session() as session:
        session.execute(update(ScheduleRun).where(ScheduleRun.id == run_id,
                                                  ScheduleRun.claimed_by == me)
                        .values(**values).execution_options(synchronize_session=False))


def _counts(report: SendReport | None) -> dict[str, int]:
    return dict(report.counts) if report is not None else {}


def run_slot(ctx: Context, schedule_id: int, slot_at: datetime | None = None, *,
             trigger: str = "timer", transport: Transport | None = None,
             should_stop: Callable[[], bool] | None = None,
             now: datetime | None = None, poll_seconds: float = 15.0,
             max_attempts: int = 1) -> SlotResult:
    """Claim and run one slot of a schedule (the due one when ``slot_at`` is None)."""
    now = now or utcnow()
    with ctx.db.session() as session:
        schedule = session.get(Schedule, schedule_id)
        if schedule is None:
            return SlotResult(RunStatus.FAILED, f"schedule {schedule_id} no longer exists")
        mailing_list = session.get(MailingList, schedule.list_id)
        assert mailing_list is not None
        session.expunge(schedule)
        list_name, list_id = mailing_list.name, mailing_list.id
    if slot_at is None:
        slot_at = due_slot(schedule, now)
        if slot_at is None:
            return SlotResult(RunStatus.FAILED, "no slot is due")
    key = slot_key(slot_at, time_zone(schedule.timezone))
    me = worker_identity()
    run_id = claim(ctx, schedule, slot_at, trigger, me, now, max_attempts=max_attempts)
    if run_id is None:
        log.info("slot %s of schedule %s was taken by another run; not running it again",
                 key, schedule.name)
        return SlotResult(RunStatus.TAKEN, f"slot {key} was already taken")
    log.info("schedule %s: running slot %s for list %s", schedule.name, key, list_name)
    with _LeaseKeeper(ctx, run_id, me):
        try:
            result = _work(ctx, schedule, list_name, list_id, run_id, me, slot_at,
                           transport or make_transport(ctx.settings), should_stop,
                           poll_seconds)
        except Exception as e:  # recorded and logged with the reason, never dropped
            log.exception("schedule %s slot %s failed", schedule.name, key)
            result = SlotResult(RunStatus.FAILED, f"{type(e).__name__}: {e}")
    result.run_id = run_id
    finished = None if result.status == RunStatus.INTERRUPTED else utcnow()
    _update(ctx, run_id, me, status=result.status, message=result.message[:2000],
            counts=result.counts, finished_at=finished,
            # An interrupted run lets go at once: the next start takes it over.
            lease_until=utcnow() if result.status == RunStatus.INTERRUPTED else utcnow() + LEASE,
            **({"issue_id": result.issue_id} if result.issue_id else {}))
    log.info("schedule %s slot %s: %s %s", schedule.name, key, result.status, result.message,
             extra=fields(schedule=schedule.name, slot=key, list=list_name,
                          status=result.status, issue=result.issue_id,
                          counts=result.counts or None))
    metrics.SCHEDULE_RUNS.labels(schedule.name, result.status).inc()
    return result


def _work(ctx: Context, schedule: Schedule, list_name: str, list_id: int, run_id: int,
          me: str, slot_at: datetime, transport: Transport,
          should_stop: Callable[[], bool] | None, poll_seconds: float) -> SlotResult:
    with ctx.db.session() as session:
        started_issue = session.scalar(select(ScheduleRun.issue_id)
                                       .where(ScheduleRun.id == run_id))
    if started_issue is not None:
        # Taken over from a run that died after building its issue: finish that issue.
        report = deliver(ctx, started_issue, transport, should_stop=should_stop)
        return _sent(report)
    collect_first = True
    if schedule.hold_for_approval:
        # Collect now, so editors approve the issue that will go out.
        collect(ctx.db, ctx.settings)
        collect_first = False
        held = _wait_for_approval(ctx, schedule, list_name, list_id, run_id, me, slot_at,
                                  should_stop, poll_seconds)
        if held is not None:
            return held

    class SlotEvents(RunEvents):
        """The scheduled job's part: nobody to ask, but an approval to check, the issue to
        remember on the run record, and a stop flag."""

        def confirm(self, draft: Draft, audience: int) -> bool:
            # A held issue goes out only as approved; an edit since withdrew the approval.
            return (not schedule.hold_for_approval
                    or approval(ctx, list_id, draft.number) is not None)

        def issue_started(self, issue_id: int) -> None:
            _update(ctx, run_id, me, issue_id=issue_id)

        def should_stop(self) -> bool:
            return should_stop is not None and should_stop()

    request = RunRequest(list_name, collect_first=collect_first,
                         allow_empty=not schedule.skip_empty)
    result = run_list(ctx, request, SlotEvents(), transport=transport)
    if result.declined:
        return SlotResult(RunStatus.NOT_APPROVED, "the issue changed after it was approved; "
                                          "not sent")
    if result.send is None:
        return SlotResult(RunStatus.NOTHING_NEW, "nothing new since the last issue; no email sent")
    return _sent(result.send)


def _sent(report: SendReport) -> SlotResult:
    counts = _counts(report)
    if report.stopped and not report.finished:
        return SlotResult(RunStatus.INTERRUPTED, "stopped at a batch boundary; resumes on the next "
                          "start", report.issue_id, counts)
    status = RunStatus.SENT if report.ok else RunStatus.PARTIAL
    return SlotResult(status, f"issue {report.number} of {report.list_name}: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                      report.issue_id, counts)


def _wait_for_approval(ctx: Context, schedule: Schedule, list_name: str, list_id: int,
                       run_id: int, me: str, slot_at: datetime,
                       should_stop: Callable[[], bool] | None,
                       poll_seconds: float) -> SlotResult | None:
    """Wait until an editor approves the next issue or the deadline passes.

    None when approved (go on and send); otherwise the result to record.
    """
    draft = draft_issue(ctx, list_name)
    if draft is None and schedule.skip_empty:
        return SlotResult(RunStatus.NOTHING_NEW, "nothing new since the last issue; no email sent")
    if draft is not None:
        number = draft.number
    else:
        with ctx.db.session() as session:
            number = next_number(session, list_id)
    deadline = slot_at + timedelta(seconds=schedule.approval_wait_seconds)
    while approval(ctx, list_id, number) is None:
        if utcnow() >= deadline:
            return SlotResult(RunStatus.NOT_APPROVED, f"issue {number} of {list_name} was not "
                              f"approved by {deadline:%Y-%m-%d %H:%M} UTC; not sent")
        if should_stop is not None and should_stop():
            return SlotResult(RunStatus.INTERRUPTED, "stopped while waiting for approval")
        _update(ctx, run_id, me, status=RunStatus.WAITING,
                message=f"waiting for an editor to approve issue {number} until "
                        f"{deadline:%Y-%m-%d %H:%M} UTC")
        time.sleep(min(poll_seconds, max(0.05, (deadline - utcnow()).total_seconds())))
    _update(ctx, run_id, me, status=RunStatus.RUNNING)
    return None
