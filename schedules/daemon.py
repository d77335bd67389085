"""The scheduler daemon: APScheduler 3 with its job store in the project's database.

Only one scheduler may use a job store, so instances elect a leader: on PostgreSQL with
an advisory lock held by a dedicated connection (released by the server when the holder
dies), on SQLite with a lease row. The others wait and take over when the leader goes.
Whatever the scheduler does, a slot runs once: :mod:`schedules.runner` claims it in the
database first. The leader also carries out the runs editors asked for ("Send now"),
looking at every tick (:class:`schedules.worker.RunWorker`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from digest.services.pipeline import warm_up
from digest.services.storage.claims import claimer_gone, hold, let_go, worker_identity
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.schedule_models import RunStatus, Schedule, SchedulerLease, ScheduleRun
from digest.services.telemetry import metrics
from digest.services.transports import Transport
from schedules.expressions import WallClockTrigger, parse_expression, slot_key, time_zone
from schedules.runner import SlotResult, run_slot
from schedules.worker import RunWorker

log = logging.getLogger(__name__)

LOCK_NAME = "scheduler"
LEASE_SECONDS = 30


class LeaderLock:
    """At most one process holds it; it passes on when the holder dies."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.me = worker_identity()
        hold(self.me)  # alive to this process's other claimers until released
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or renew it if held); True while held."""
        if self.ctx.db.is_postgres:
            return self._pg()
        return self._lease()

    def _pg(self) -> bool:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                self._conn.commit()  # never sit idle in a transaction (it pins a snapshot)
                return True
            except SQLAlchemyError:
                self._conn = None  # the connection died: so did the lock
        conn = self.ctx.db.engine.connect()
        # One lock per schema, so separate databases in one server do not contend.
        got = conn.execute(text(
            "SELECT pg_try_advisory_lock(hashtext('recap-digest-scheduler:' || "
            "current_schema()))")).scalar()
        conn.commit()
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def _lease(self) -> bool:
        now = utcnow()
        until = now + timedelta(seconds=LEASE_SECONDS)
        with self.ctx.db.session() as session:
            row = session.get(SchedulerLease, LOCK_NAME)
            if row is None:
                try:
                    with session.begin_nested():
                        session.add(SchedulerLease(name=LOCK_NAME, holder=self.me,
                                                   lease_until=until))
                    return True
                except IntegrityError:
                    return False
            if row.holder == self.me or claimer_gone(row.holder, row.lease_until, now):
                taken = session.execute(
                    update(SchedulerLease).where(SchedulerLease.name == LOCK_NAME,
                                                 SchedulerLease.holder == row.holder)
                    .values(holder=self.me, lease_until=until)
                    .execution_options(synchronize_session=False))
                return bool(taken.rowcount)  # type: ignore[attr-defined]
            return False

    def held_elsewhere(self) -> bool:
        """Whether another scheduler (in this process or any other) leads now."""
        if self.ctx.db.is_postgres:
            if self._conn is not None:
                return False
            with self.ctx.db.engine.connect() as conn:
                got = conn.execute(text(
                    "SELECT pg_try_advisory_lock(hashtext('recap-digest-scheduler:' || "
                    "current_schema()))")).scalar()
                if got:  # nobody held it: give it straight back
                    conn.execute(text(
                        "SELECT pg_advisory_unlock(hashtext('recap-digest-scheduler:' || "
                        "current_schema()))"))
                conn.commit()
                return not got
        now = utcnow()
        with self.ctx.db.session() as session:
            row = session.get(SchedulerLease, LOCK_NAME)
            if row is None or row.holder == self.me:
                return False
            return not claimer_gone(row.holder, row.lease_until, now)

    def release(self) -> None:
        """Let go (on shutdown)."""
        let_go(self.me)
        if self._conn is not None:
            try:
                self._conn.execute(text(
                    "SELECT pg_advisory_unlock(hashtext('recap-digest-scheduler:' || "
                    "current_schema()))"))
                self._conn.close()
            except SQLAlchemyError:
                pass
            self._conn = None
        elif not self.ctx.db.is_postgres:
            with self.ctx.db.session() as session:
                session.execute(update(SchedulerLease).where(
                    SchedulerLease.name == LOCK_NAME, SchedulerLease.holder == self.me)
                    .values(lease_until=utcnow()))


# The daemon whose jobs run in this process; job functions are module-level (the job
# store keeps a reference by name) and find their context here.
_ACTIVE: Daemon | None = None


def fire(schedule_id: int, version: str = "") -> None:
    """The job APScheduler runs at each slot of a schedule."""
    if _ACTIVE is not None:
        _ACTIVE.run(schedule_id, trigger="timer")


def fire_retry(schedule_id: int, slot_iso: str) -> None:
    """A one-off job retrying a failed slot."""
    if _ACTIVE is not None:
        _ACTIVE.run(schedule_id, trigger="retry", slot_at=datetime.fromisoformat(slot_iso))


def job_id(schedule_id: int) -> str:
    """The stable job id of a schedule."""
    return f"schedule-{schedule_id}"


def scheduler_leads(ctx: Context) -> bool:
    """Whether a scheduler leads now, here or in another process (the web app then leaves
    requested runs to it)."""
    return LeaderLock(ctx).held_elsewhere()


class Daemon:
    """Elects a leader, runs APScheduler and requested runs while leading, and stops
    cleanly."""

    def __init__(self, ctx: Context, *, check_every: float = 5.0,
                 transport_factory: Callable[[], Transport] | None = None) -> None:
        self.ctx = ctx
        self.check_every = check_every
        self.transport_factory = transport_factory
        self.lock = LeaderLock(ctx)
        self.scheduler: BackgroundScheduler | None = None
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._synced: dict[int, str] = {}
        # Requested runs ("Send now") are carried out on a thread of their own, so that
        # a long send never holds up the election (nor the lease it renews).
        self.requests = RunWorker(ctx, transport_factory=transport_factory,
                                  should_stop=self.stopping.is_set)

    # -- lifecycle
    def start(self) -> None:
        """Start electing (returns at once; the work happens on a thread)."""
        global _ACTIVE
        _ACTIVE = self
        self._thread = threading.Thread(target=self._loop, name="digest-scheduler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Start no new runs; let a running send stop at a batch boundary; let go."""
        global _ACTIVE
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.requests.close()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        self.lock.release()
        if _ACTIVE is self:
            _ACTIVE = None
        log.info("scheduler stopped")

    @property
    def leading(self) -> bool:
        """Whether this process runs the scheduler now."""
        return self.scheduler is not None

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                held = self.lock.try_acquire()
                if held and self.scheduler is None:
                    log.info("this process (%s pid %d) now runs the scheduler",
                             socket.gethostname(), os.getpid())
                    self._start_scheduler()
                    self._warm_up()
                elif not held and self.scheduler is not None:
                    log.warning("lost the scheduler lock; stopping the scheduler here")
                    self.scheduler.shutdown(wait=False)
                    self.scheduler = None
                if self.scheduler is not None:
                    self.sync()
                    self.requests.nudge()  # "Send now" asked for since the last tick
            except Exception:  # the database went away for a moment: try again
                log.exception("scheduler election failed; retrying")
            self.stopping.wait(self.check_every)

    def _warm_up(self) -> None:
        # Whatever a slot would otherwise load at its start (imports, compiled templates)
        # is loaded now, while nothing is due, so a slot starts sending at once.
        try:
            warm_up(self.ctx)
        except Exception as e:  # the slot will load it, and say what is wrong, itself
            log.warning("could not load ahead what a scheduled send needs: %s", e)

    def _start_scheduler(self) -> None:
        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.ctx.db.engine)},
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1}, timezone="UTC")
        scheduler.add_listener(self._missed, EVENT_JOB_MISSED)
        scheduler.start(paused=True)
        self.scheduler = scheduler
        self._synced = {}
        self.sync()
        # Resuming lets APScheduler replay slots missed within their grace time, once.
        scheduler.resume()

    # -- jobs
    def sync(self) -> None:
        """Make the job store match the schedules table (stable ids, replace_existing)."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        with self.ctx.db.session() as session:
            schedules = list(session.scalars(select(Schedule)))
            session.expunge_all()
        wanted = {s.id: s for s in schedules if not s.paused}
        for job in scheduler.get_jobs():
            if job.id.startswith("schedule-") and int(job.id.split("-")[1]) not in wanted:
                job.remove()
                self._synced.pop(int(job.id.split("-")[1]), None)
        for schedule in wanted.values():
            version = f"{schedule.expression}|{schedule.timezone}|" \
                      f"{schedule.misfire_grace_seconds}"
            if self._synced.get(schedule.id) == version:
                continue
            existing = scheduler.get_job(job_id(schedule.id))
            if existing is None or existing.kwargs.get("version") != version:
                # A changed schedule starts from now; an unchanged one keeps its stored
                # next run time, so a slot missed while we were down is replayed.
                scheduler.add_job(
                    fire, WallClockTrigger(parse_expression(schedule.expression),
                                           time_zone(schedule.timezone)),
                    id=job_id(schedule.id), name=schedule.name, replace_existing=True,
                    kwargs={"schedule_id": schedule.id, "version": version},
                    misfire_grace_time=schedule.misfire_grace_seconds, coalesce=True,
                    max_instances=1)
            self._synced[schedule.id] = version

    def _missed(self, event: JobExecutionEvent) -> None:
        """A slot missed by more than its grace time: skipped, and recorded as missed."""
        if not event.job_id.startswith("schedule-"):
            return
        schedule_id = int(event.job_id.split("-")[1])
        with self.ctx.db.session() as session:
            schedule = session.get(Schedule, schedule_id)
            if schedule is None:
                return
            key = slot_key(event.scheduled_run_time, time_zone(schedule.timezone))
            log.warning("schedule %s: slot %s was missed by more than its grace time "
                        "(%d s); skipped", schedule.name, key, schedule.misfire_grace_seconds)
            try:
                with session.begin_nested():
                    session.add(ScheduleRun(
                        schedule_id=schedule_id, slot_key=key,
                        slot_at=event.scheduled_run_time, status=RunStatus.MISSED,
                        trigger="timer",
                        started_at=utcnow(), finished_at=utcnow(), attempts=0, counts={},
                        message="missed by more than the grace time; skipped"))
                metrics.SCHEDULE_RUNS.labels(schedule.name, RunStatus.MISSED).inc()
            except IntegrityError:
                pass  # the slot did run (or was recorded) after all

    def run(self, schedule_id: int, *, trigger: str,
            slot_at: datetime | None = None) -> SlotResult:
        """Run a slot now (from a job); retry a failure later, as configured."""
        if self.stopping.is_set():
            return SlotResult(RunStatus.INTERRUPTED, "shutting down")
        transport = self.transport_factory() if self.transport_factory else None
        result = run_slot(self.ctx, schedule_id, slot_at, trigger=trigger,
                          transport=transport, should_stop=self.stopping.is_set,
                          max_attempts=1 + self.ctx.settings.schedule_retries)
        if result.failed and result.run_id is not None:
            self._schedule_retry(schedule_id, result)
        return result

    def _schedule_retry(self, schedule_id: int, result: SlotResult) -> None:
        with self.ctx.db.session() as session:
            run = session.get(ScheduleRun, result.run_id)
            if run is None or run.attempts > self.ctx.settings.schedule_retries:
                log.error("schedule %s: slot failed and has no retries left: %s",
                          schedule_id, result.message)
                return
            slot_iso = run.slot_at.isoformat()
            key = run.slot_key
        delay = self.ctx.settings.schedule_retry_delay_seconds
        if self.scheduler is not None:
            self.scheduler.add_job(fire_retry, "date",
                                   run_date=utcnow() + timedelta(seconds=delay),
                                   args=[schedule_id, slot_iso],
                                   id=f"retry-{schedule_id}-{key}", replace_existing=True,
                                   misfire_grace_time=6 * 3600)
            log.warning("schedule %s: slot %s failed; retrying in %d s", schedule_id, key,
                        delay)

