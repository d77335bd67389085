"""Schedules: add, list with their next fire times, pause, resume, remove, history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import InvalidInputError, NotFoundError
from digest.services.storage.db import Database, utcnow
from digest.services.storage.schedule_models import (
    DEFAULT_GRACE_SECONDS,
    RequestedRun,
    RunStatus,
    Schedule,
    ScheduleRun,
)
from digest.services.storage.subscriber_models import MailingList
from schedules.expressions import CronSpec, next_slots, parse_expression, time_zone
from subscribers.lists import check_slug, get_list


@dataclass(frozen=True)
class ScheduleView:
    """A schedule as `digest schedules list` and the dashboard show it."""

    id: int
    name: str
    list_name: str
    expression: str
    timezone: str
    paused: bool
    skip_empty: bool
    hold_for_approval: bool
    approval_wait_seconds: int
    misfire_grace_seconds: int
    next_fires: list[datetime]  # aware, in the schedule's zone

    @property
    def spec(self) -> CronSpec:
        """The parsed expression."""
        return parse_expression(self.expression)


def _view(schedule: Schedule, list_name: str, now: datetime, count: int) -> ScheduleView:
    fires = [] if schedule.paused else next_slots(
        parse_expression(schedule.expression), time_zone(schedule.timezone), now, count)
    return ScheduleView(schedule.id, schedule.name, list_name, schedule.expression,
                        schedule.timezone, schedule.paused, schedule.skip_empty,
                        schedule.hold_for_approval, schedule.approval_wait_seconds,
                        schedule.misfire_grace_seconds, fires)


def add_schedule(db: Database, name: str, list_name: str, expression: str, timezone: str, *,  # noqa: PLR0913 - what a schedule is, then keyword-only options
                 skip_empty: bool = True, hold_for_approval: bool = False,
                 approval_wait: timedelta = timedelta(hours=2),
                 misfire_grace: timedelta = timedelta(seconds=DEFAULT_GRACE_SECONDS)
                 ) -> ScheduleView:
    """Add a schedule; a wrong name, expression or zone is a clear error."""
    check_slug("schedule", name)
    spec = parse_expression(expression)
    time_zone(timezone)
    if misfire_grace.total_seconds() < 1:
        raise InvalidInputError("the misfire grace time must be at least one second")
    with db.session() as session:
        mailing_list = get_list(session, list_name)
        if session.scalar(select(Schedule.id).where(Schedule.name == name)):
            raise InvalidInputError(f"schedule {name!r} already exists")
        now = utcnow()
        schedule = Schedule(name=name, list_id=mailing_list.id, expression=str(spec),
                            timezone=timezone, skip_empty=skip_empty,
                            hold_for_approval=hold_for_approval,
                            approval_wait_seconds=int(approval_wait.total_seconds()),
                            misfire_grace_seconds=int(misfire_grace.total_seconds()),
                            paused=False, created_at=now, updated_at=now)
        session.add(schedule)
        session.flush()
        return _view(schedule, mailing_list.name, now, 3)


def find_schedule(session: Session, name: str) -> Schedule:
    """A schedule by name, or a clear error."""
    found = session.scalars(select(Schedule).where(Schedule.name == name)).first()
    if found is None:
        raise NotFoundError(f"no schedule named {name!r}",
                            hint="`digest schedules list` shows them")
    return found


def list_schedules(db: Database, *, now: datetime | None = None,
                   count: int = 3) -> list[ScheduleView]:
    """Every schedule with its next ``count`` fire times."""
    now = now or utcnow()
    with db.session() as session:
        return [_view(schedule, list_name, now, count) for schedule, list_name in
                session.execute(select(Schedule, MailingList.name)
                                .join(MailingList, MailingList.id == Schedule.list_id)
                                .order_by(Schedule.name))]


def set_paused(db: Database, name: str, paused: bool) -> bool:
    """Pause or resume a schedule; True if that changed it."""
    with db.session() as session:
        schedule = find_schedule(session, name)
        if schedule.paused == paused:
            return False
        schedule.paused, schedule.updated_at = paused, utcnow()
        return True


def remove_schedule(db: Database, name: str) -> None:
    """Delete a schedule and its run history."""
    with db.session() as session:
        session.delete(find_schedule(session, name))


@dataclass(frozen=True)
class RunView:
    """One line of a schedule's history."""

    slot_key: str
    slot_at: datetime
    status: str
    trigger: str
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    issue_id: int | None
    counts: dict[str, int]
    message: str


def history(db: Database, name: str, limit: int = 20) -> list[RunView]:
    """A schedule's latest runs, newest slot first."""
    with db.session() as session:
        schedule = find_schedule(session, name)
        return [RunView(r.slot_key, r.slot_at, r.status, r.trigger, r.attempts, r.started_at,
                        r.finished_at, r.issue_id, dict(r.counts), r.message)
                for r in session.scalars(select(ScheduleRun)
                                         .where(ScheduleRun.schedule_id == schedule.id)
                                         .order_by(ScheduleRun.slot_at.desc(),
                                                   ScheduleRun.id.desc()).limit(limit))]


@dataclass(frozen=True)
class RequestedRunView:
    """A run an editor asked for ("Send now"), as the dashboard shows it."""

    id: int
    list_name: str
    status: str  # a RunStatus
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    issue_id: int | None
    counts: dict[str, int]
    message: str

    @property
    def went_wrong(self) -> bool:
        """Whether it ended without sending to everyone (the dashboard marks it)."""
        return self.status in (RunStatus.FAILED, RunStatus.PARTIAL, RunStatus.INTERRUPTED)

    @property
    def state(self) -> str:
        """What it is doing, in words: requested, running, or how it ended and why."""
        if self.status == RunStatus.REQUESTED:
            return "requested: waiting for the scheduler or the web app to start it"
        if self.status == RunStatus.RUNNING:
            return str(RunStatus.RUNNING)
        if self.status == RunStatus.INTERRUPTED:
            return f"interrupted: {self.message}"
        return f"{self.status}: {self.message}" if self.message else str(self.status)


def requested_runs(db: Database, limit: int = 10) -> list[RequestedRunView]:
    """The latest requested runs, newest first."""
    with db.session() as session:
        return [RequestedRunView(r.id, name, r.status, r.requested_by, r.requested_at,
                                 r.started_at, r.finished_at, r.issue_id, dict(r.counts),
                                 r.message)
                for r, name in session.execute(
                    select(RequestedRun, MailingList.name)
                    .join(MailingList, MailingList.id == RequestedRun.list_id)
                    .order_by(RequestedRun.id.desc()).limit(limit))]
