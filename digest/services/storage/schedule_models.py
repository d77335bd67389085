"""Tables of the scheduled job: schedules, one run record per slot, the leader lease."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from digest.services.storage.db import Base, UTCDateTime, utcnow

DEFAULT_GRACE_SECONDS = 6 * 3600


class Schedule(Base):
    """When a list's issue goes out: a cron expression in a time zone, and options."""

    __tablename__ = "schedules"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    expression: Mapped[str] = mapped_column(String(200))  # five-field cron, day names
    timezone: Mapped[str] = mapped_column(String(100))
    skip_empty: Mapped[bool] = mapped_column(Boolean, default=True)
    hold_for_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    approval_wait_seconds: Mapped[int] = mapped_column(Integer, default=7200)
    misfire_grace_seconds: Mapped[int] = mapped_column(Integer, default=DEFAULT_GRACE_SECONDS)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunStatus(StrEnum):
    """What a slot's run is doing or did (``ScheduleRun.status``, ``SlotResult.status``)."""

    RUNNING = "running"
    WAITING = "waiting"            # for an editor to approve the issue
    SENT = "sent"
    PARTIAL = "partial"            # sent, with failed or uncertain deliveries
    NOTHING_NEW = "nothing_new"    # no email: nothing new since the last issue
    NOT_APPROVED = "not_approved"  # no email: not approved in time, or edited since
    INTERRUPTED = "interrupted"    # stopped at a batch boundary; the next start resumes it
    FAILED = "failed"
    MISSED = "missed"              # its grace time passed before a scheduler ran it
    TAKEN = "taken"                # another run had the slot (a result only, never stored)
    REQUESTED = "requested"        # a requested run ("Send now") nobody has claimed yet


class ScheduleRun(Base):
    """One slot of a schedule, claimed before any work: the unique key makes it once."""

    __tablename__ = "schedule_runs"
    __table_args__ = (UniqueConstraint("schedule_id", "slot_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    slot_key: Mapped[str] = mapped_column(String(40))   # local wall-clock minute
    slot_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(20))  # a RunStatus
    trigger: Mapped[str] = mapped_column(String(20), default="timer")  # timer, manual, retry
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    issue_id: Mapped[int | None] = mapped_column(
        ForeignKey("issues.id", ondelete="SET NULL"))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")


class SchedulerLease(Base):
    """Which process runs the scheduler (SQLite; PostgreSQL uses an advisory lock)."""

    __tablename__ = "scheduler_lease"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime)


class RequestedRun(Base):
    """A run of a list an editor asked for ("Send now"): claimed, like a slot, by the
    scheduler or the web app's worker, whichever comes first, and carried out once."""

    __tablename__ = "requested_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20))  # a RunStatus
    # The list's id while the run is not over (requested, running, interrupted), NULL
    # after: unique, so a list has one open run and two clicks on "Send now" are one.
    open_for: Mapped[int | None] = mapped_column(Integer, unique=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    issue_id: Mapped[int | None] = mapped_column(
        ForeignKey("issues.id", ondelete="SET NULL"))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")
