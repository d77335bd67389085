"""Run one slot of a schedule, or a requested run of a list, exactly once: claim it in
the database, then do the job through :func:`digest.services.pipeline.run_list`.

The claim is a row unique on (schedule, slot) inserted before any work. A restart, a
misfire replay, `digest schedules run` racing the timer or a second instance all try the
same insert; one wins, the others log that the slot was taken. A claim whose holder died
(its process is gone, or its lease ran out) is taken over, and the takeover resumes the
issue the dead run had started instead of building another.

A requested run ("Send now" in the web app) is a row of its own, claimed the same way by
whichever comes first of the scheduler's next tick and the web app's worker
(:mod:`schedules.worker`); a list has at most one requested run waiting or running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from digest.services.building.editing import approval
from digest.services.pipeline import RunEvents, RunRequest, RunResult, run_list
from digest.services.storage.claims import claimer_gone, hold, let_go, worker_identity
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.schedule_models import RequestedRun, RunStatus, Schedule, ScheduleRun
from digest.services.storage.subscriber_models import MailingList
from digest.services.telemetry import metrics
from digest.services.telemetry.logs import fields
from schedules.expressions import next_slots, parse_expression, slot_key, time_zone
from subscribers.lists import get_list

if TYPE_CHECKING:
    from digest.services.building.drafts import Draft
    from digest.services.transports import Transport

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=90)
RENEW_EVERY = 20.0
# States a run can be taken over from once its holder is gone.
TAKEABLE = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.INTERRUPTED)


@dataclass
class SlotResult:
    """What running a slot, or a requested run, did."""

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


def claim(ctx: Context, schedule: Schedule, slot_at: datetime, trigger: str, me: str,  # noqa: PLR0913 - the slot, then who claims it, how and when
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
        takeable = (run.status in TAKEABLE and claimer_gone(run.claimed_by, run.lease_until, now,
                                                                me=me))
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

    def __init__(self, ctx: Context, table: type[ScheduleRun | RequestedRun], run_id: int,
                 me: str) -> None:
        self.ctx, self.table, self.run_id, self.me = ctx, table, run_id, me
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"lease-run-{run_id}")

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY):
            try:
                _update(self.ctx, self.table, self.run_id, self.me,
                        lease_until=utcnow() + LEASE)
            except Exception:  # a database hiccup: try again at the next tick
                log.warning("could not renew the lease of run %s", self.run_id, exc_info=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _update(ctx: Context, table: type[ScheduleRun | RequestedRun], run_id: int, me: str,
            **values: object) -> None:
    """Write onto a run record this process still holds."""
    with ctx.db.session() as session:
        session.execute(update(table).where(table.id == run_id, table.claimed_by == me)
                        .values(**values).execution_options(synchronize_session=False))


def run_slot(ctx: Context, schedule_id: int, slot_at: datetime | None = None, *,  # noqa: PLR0913 - the slot, then keyword-only options the daemon and tests set
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
    # At work from before its claim until its outcome is written: to this process's other
    # claimers its run is alive meanwhile (and, should writing the outcome fail, until
    # its lease ends).
    hold(me)
    run_id = claim(ctx, schedule, slot_at, trigger, me, now, max_attempts=max_attempts)
    if run_id is None:
        let_go(me)
        log.info("slot %s of schedule %s was taken by another run; not running it again",
                 key, schedule.name)
        return SlotResult(RunStatus.TAKEN, f"slot {key} was already taken")
    log.info("schedule %s: running slot %s for list %s", schedule.name, key, list_name)
    slot = _Slot(ctx, schedule, list_name, list_id, run_id, me, slot_at)
    with _LeaseKeeper(ctx, ScheduleRun, run_id, me):
        try:
            result = _work(slot, transport, should_stop, poll_seconds)
        except Exception as e:  # recorded and logged with the reason, never dropped
            log.exception("schedule %s slot %s failed", schedule.name, key)
            result = SlotResult(RunStatus.FAILED, f"{type(e).__name__}: {e}")
    result.run_id = run_id
    finished = None if result.status == RunStatus.INTERRUPTED else utcnow()
    _update(ctx, ScheduleRun, run_id, me, status=result.status,
            message=result.message[:2000],
            counts=result.counts, finished_at=finished,
            # An interrupted run lets go at once: the next start takes it over.
            lease_until=utcnow() if result.status == RunStatus.INTERRUPTED else utcnow() + LEASE,
            **({"issue_id": result.issue_id} if result.issue_id else {}))
    let_go(me)
    log.info("schedule %s slot %s: %s %s", schedule.name, key, result.status, result.message,
             extra=fields(schedule=schedule.name, slot=key, list=list_name,
                          status=result.status, issue=result.issue_id,
                          counts=result.counts or None))
    metrics.SCHEDULE_RUNS.labels(schedule.name, result.status).inc()
    return result


@dataclass(frozen=True)
class _Slot:
    """A slot this process claimed: its schedule and list, and its run record."""

    ctx: Context
    schedule: Schedule
    list_name: str
    list_id: int
    run_id: int
    me: str
    slot_at: datetime


class _SlotEvents(RunEvents):
    """The scheduled job's part of a run: nobody to ask, but an approval to wait for and
    check, the issue to remember on the run record, and a stop flag."""

    def __init__(self, slot: _Slot, should_stop: Callable[[], bool] | None,
                 poll_seconds: float) -> None:
        self.slot, self.ctx, self.schedule = slot, slot.ctx, slot.schedule
        self.list_id, self.run_id, self.me = slot.list_id, slot.run_id, slot.me
        self.stop_flag, self.poll_seconds = should_stop, poll_seconds
        self.held: SlotResult | None = None  # why waiting for approval ended unsent

    def approved(self, number: int) -> bool:
        ctx, schedule = self.ctx, self.schedule
        deadline = self.slot.slot_at + timedelta(seconds=schedule.approval_wait_seconds)
        list_name = self.slot.list_name
        while approval(ctx, self.list_id, number) is None:
            if utcnow() >= deadline:
                self.held = SlotResult(RunStatus.NOT_APPROVED,
                                       f"issue {number} of {list_name} was not approved by "
                                       f"{deadline:%Y-%m-%d %H:%M} UTC; not sent")
                return False
            if self.should_stop():
                self.held = SlotResult(RunStatus.INTERRUPTED,
                                       "stopped while waiting for approval")
                return False
            _update(ctx, ScheduleRun, self.run_id, self.me, status=RunStatus.WAITING,
                    message=f"waiting for an editor to approve issue {number} until "
                            f"{deadline:%Y-%m-%d %H:%M} UTC")
            time.sleep(min(self.poll_seconds,
                           max(0.05, (deadline - utcnow()).total_seconds())))
        _update(ctx, ScheduleRun, self.run_id, self.me, status=RunStatus.RUNNING)
        return True

    def confirm(self, draft: Draft, audience: int) -> bool:
        # A held issue goes out only as approved; an edit since withdrew the approval.
        return (not self.schedule.hold_for_approval
                or approval(self.ctx, self.list_id, draft.number) is not None)

    def issue_started(self, issue_id: int) -> None:
        _update(self.ctx, ScheduleRun, self.run_id, self.me, issue_id=issue_id)

    def should_stop(self) -> bool:
        return self.stop_flag is not None and self.stop_flag()


def _work(slot: _Slot, transport: Transport | None, should_stop: Callable[[], bool] | None,
          poll_seconds: float) -> SlotResult:
    with slot.ctx.db.session() as session:
        started_issue = session.scalar(select(ScheduleRun.issue_id)
                                       .where(ScheduleRun.id == slot.run_id))
    # Taken over from a run that died after recording its issue: finish that issue.
    request = RunRequest(slot.list_name, allow_empty=not slot.schedule.skip_empty,
                         hold_for_approval=slot.schedule.hold_for_approval,
                         finish_issue=started_issue)
    events = _SlotEvents(slot, should_stop, poll_seconds)
    return _outcome(run_list(slot.ctx, request, events, transport=transport), events.held)


def _outcome(result: RunResult, held: SlotResult | None = None) -> SlotResult:
    """A run's result as a run record says it."""
    if held is not None:
        return held
    if result.declined:
        return SlotResult(RunStatus.NOT_APPROVED, "the issue changed after it was approved; "
                                                  "not sent")
    if result.send is None:
        return SlotResult(RunStatus.NOTHING_NEW,
                          "nothing new since the last issue; no email sent")
    report = result.send
    counts = dict(report.counts)
    if report.stopped and not report.finished:
        return SlotResult(RunStatus.INTERRUPTED, "stopped at a batch boundary; resumes on "
                          "the next start", report.issue_id, counts)
    status = RunStatus.SENT if report.ok else RunStatus.PARTIAL
    return SlotResult(status, f"issue {report.number} of {report.list_name}: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                      report.issue_id, counts)


# -- requested runs ("Send now") ---------------------------------------------------------


def request_run(ctx: Context, list_name: str, requested_by: str, *,
                now: datetime | None = None) -> tuple[int, bool]:
    """Ask for a run of a list now (the web app's "Send now"): (its id, whether this call
    asked for it). While one of the list's requested runs is waiting or running, asking
    again is that same run. The scheduler, or the web app's worker, carries it out."""
    now = now or utcnow()
    with ctx.db.session() as session:
        list_id = get_list(session, list_name).id
    try:
        with ctx.db.session() as session:
            run = RequestedRun(list_id=list_id, status=RunStatus.REQUESTED, open_for=list_id,
                               requested_by=requested_by, requested_at=now, counts={},
                               message="")
            session.add(run)
            session.flush()
            return run.id, True
    except IntegrityError:
        pass  # one is open already (open_for is unique)
    with ctx.db.session() as session:
        open_id = session.scalar(select(RequestedRun.id).where(
            RequestedRun.open_for == list_id))
    if open_id is None:  # it ended between the two statements: ask again
        return request_run(ctx, list_name, requested_by, now=now)
    return open_id, False


def claim_requested(ctx: Context, me: str, now: datetime | None = None) -> int | None:
    """Claim the oldest requested run nobody carries out (asked for, or its holder gone);
    its id, or None. Of several claimers one wins; the others see it taken."""
    now = now or utcnow()
    with ctx.db.session() as session:
        candidates = session.execute(
            select(RequestedRun.id, RequestedRun.status, RequestedRun.claimed_by,
                   RequestedRun.lease_until)
            .where(RequestedRun.open_for.is_not(None)).order_by(RequestedRun.id)).all()
    for run_id, status, claimed_by, lease_until in candidates:
        if status != RunStatus.REQUESTED and not claimer_gone(claimed_by, lease_until, now,
                                                                     me=me):
            continue
        with ctx.db.session() as session:
            # Conditional on what we read: of two processes claiming, one wins.
            taken = session.scalars(
                update(RequestedRun).where(RequestedRun.id == run_id,
                                           RequestedRun.status == status,
                                           or_(RequestedRun.claimed_by == claimed_by,
                                               RequestedRun.claimed_by.is_(None)))
                .values(status=RunStatus.RUNNING, claimed_by=me, lease_until=now + LEASE,
                        started_at=now, finished_at=None)
                .execution_options(synchronize_session=False)
                .returning(RequestedRun.id)).first()
        if taken is not None:
            return taken
    return None


class _RequestEvents(RunEvents):
    """A requested run's part: the issue remembered on its record, and a stop flag."""

    def __init__(self, ctx: Context, run_id: int, me: str,
                 should_stop: Callable[[], bool] | None) -> None:
        self.ctx, self.run_id, self.me, self.stop_flag = ctx, run_id, me, should_stop

    def issue_started(self, issue_id: int) -> None:
        _update(self.ctx, RequestedRun, self.run_id, self.me, issue_id=issue_id)

    def should_stop(self) -> bool:
        return self.stop_flag is not None and self.stop_flag()


def run_requested(ctx: Context, run_id: int, me: str, *, transport: Transport | None = None,
                  should_stop: Callable[[], bool] | None = None) -> SlotResult:
    """Carry out a requested run this process claimed (:func:`claim_requested`).

    What was previewed is what goes out: no collecting first. An issue of the list whose
    send was interrupted is finished first, as with `digest send`.
    """
    with ctx.db.session() as session:
        run = session.get(RequestedRun, run_id)
        mailing_list = session.get(MailingList, run.list_id) if run is not None else None
        if run is None or mailing_list is None:
            return SlotResult(RunStatus.FAILED, f"requested run {run_id} no longer exists")
        list_name, requested_by, run_list_id = mailing_list.name, run.requested_by, run.list_id
    log.info("send now of %s (asked for by %s): running", list_name, requested_by)
    with _LeaseKeeper(ctx, RequestedRun, run_id, me):
        try:
            result = _outcome(run_list(ctx, RunRequest(list_name, collect_first=False),
                                       _RequestEvents(ctx, run_id, me, should_stop),
                                       transport=transport))
        except Exception as e:  # recorded and logged with the reason, never dropped
            log.exception("send now of %s failed", list_name)
            result = SlotResult(RunStatus.FAILED, f"{type(e).__name__}: {e}")
    result.run_id = run_id
    interrupted = result.status == RunStatus.INTERRUPTED
    _update(ctx, RequestedRun, run_id, me, status=result.status,
            message=result.message[:2000], counts=result.counts,
            finished_at=None if interrupted else utcnow(),
            open_for=run_list_id if interrupted else None,
            # An interrupted run lets go at once: the next claimer takes it over.
            lease_until=utcnow() if interrupted else None,
            **({"issue_id": result.issue_id} if result.issue_id else {}))
    log.info("send now of %s: %s %s", list_name, result.status, result.message,
             extra=fields(list=list_name, status=result.status, issue=result.issue_id,
                          counts=result.counts or None))
    return result


def carry_out_requested(ctx: Context, *, transport_factory: Callable[[], Transport] | None
                        = None, should_stop: Callable[[], bool] | None = None) -> int:
    """Claim and carry out requested runs one after another until none is left (or told
    to stop); how many this call carried out."""
    me = worker_identity()
    hold(me)  # as run_slot: alive to this process's other claimers while it works
    done = 0
    while not (should_stop is not None and should_stop()):
        run_id = claim_requested(ctx, me)
        if run_id is None:
            break
        run_requested(ctx, run_id, me, should_stop=should_stop,
                      transport=transport_factory() if transport_factory else None)
        done += 1
    let_go(me)
    return done
