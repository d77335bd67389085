"""The scheduler as real processes: a slot fires once across SIGKILL, restarts and a
second instance; SIGTERM stops cleanly and an interrupted send resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from digest.services.delivery.reports import counts
from digest.services.feeds.collect import add_feed, collect
from digest.services.storage.context import Context
from digest.services.storage.models import ACCEPTED
from digest.services.storage.schedule_models import RequestedRun, ScheduleRun
from digest.services.transports.base import Outcome, OutgoingIssue, OutgoingRecipient
from digest.services.transports.locmem import LocmemTransport
from schedules.daemon import Daemon
from schedules.service import add_schedule
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.conftest import make_settings
from tests.feedserver import FeedServer, rss
from tests.test_send import read_outbox, recap

ROOT = Path(__file__).resolve().parent.parent


def newsroom(ctx: Context, feed_server: FeedServer, readers: int = 3) -> None:
    url = feed_server.add("/feed.xml", body=rss([recap(1), recap(2, tags=["Syria"])]))
    add_feed(ctx.db, url, "Desk")
    create_list(ctx.db, "weekly", "The Weekly Recap")
    for i in range(readers):
        add_subscriber(ctx.db, "weekly", f"reader{i}@example.org")


def next_slot(lead: float = 25.0) -> datetime:
    """The next whole minute at least ``lead`` seconds away."""
    now = datetime.now(UTC)
    slot = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    return slot if (slot - now).total_seconds() >= lead else slot + timedelta(minutes=1)


def wait_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


class Scheduler:
    """`python -m digest scheduler` as a child process, its log in a file."""

    def __init__(self, ctx: Context, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        env.update({"DIGEST_DATABASE_URL": ctx.settings.database_url,
                    "DIGEST_TRANSPORT": "outbox", "DIGEST_OUTBOX_DIR": ctx.settings.outbox_dir,
                    "DIGEST_SECRET_KEY": "test-secret", "DIGEST_LOG_LEVEL": "INFO",
                    "COLUMNS": "200"})
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "digest", "scheduler"], cwd=ROOT,
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=log.open("w"))

    def leading(self) -> bool:
        return f"pid {self.proc.pid}) now runs the scheduler" in self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def job_stored(ctx: Context) -> bool:
    with ctx.db.engine.connect() as conn:
        try:
            return bool(conn.execute(text(
                "SELECT count(*) FROM apscheduler_jobs WHERE id = 'schedule-1'")).scalar())
        except Exception:
            return False


def sent_runs(ctx: Context) -> list[tuple[str, str]]:
    with ctx.db.session() as s:
        return [(r.status, r.trigger) for r in s.scalars(select(ScheduleRun))]


@pytest.fixture
def procs() -> Iterator[list[Scheduler]]:
    started: list[Scheduler] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def test_killed_before_the_slot_and_restarted_after_sends_once(
        tmp_path: Path, sqlite_url: str, feed_server: FeedServer,
        procs: list[Scheduler]) -> None:
    ctx = Context.open(make_settings(tmp_path, sqlite_url))
    newsroom(ctx, feed_server)
    slot = next_slot()
    add_schedule(ctx.db, "soon", "weekly", f"{slot.minute} {slot.hour} * * *", "UTC")
    first = Scheduler(ctx, tmp_path / "first.log")
    procs.append(first)
    wait_for(lambda: first.leading() and job_stored(ctx))
    first.stop(signal.SIGKILL)
    wait_until(slot + timedelta(seconds=3))
    assert read_outbox(Path(ctx.settings.outbox_dir)) == []
    # Restarted after the slot, within the grace time: the missed slot fires once.
    second = Scheduler(ctx, tmp_path / "second.log")
    procs.append(second)
    wait_for(lambda: len(read_outbox(Path(ctx.settings.outbox_dir))) == 3
             and sent_runs(ctx) == [("sent", "timer")], timeout=45)
    assert second.stop() == 0
    # Started again: nothing more.
    third = Scheduler(ctx, tmp_path / "third.log")
    procs.append(third)
    wait_for(third.leading)
    time.sleep(6)
    assert third.stop() == 0
    assert len(read_outbox(Path(ctx.settings.outbox_dir))) == 3
    assert sent_runs(ctx) == [("sent", "timer")]
    ctx.close()


def test_two_daemons_on_postgres_send_once_and_the_standby_takes_over(
        tmp_path: Path, postgres_url: str, feed_server: FeedServer,
        procs: list[Scheduler]) -> None:
    ctx = Context.open(make_settings(tmp_path, postgres_url))
    newsroom(ctx, feed_server)
    slot = next_slot(lead=30)
    add_schedule(ctx.db, "soon", "weekly", f"{slot.minute} {slot.hour} * * *", "UTC")
    one, two = Scheduler(ctx, tmp_path / "one.log"), Scheduler(ctx, tmp_path / "two.log")
    procs.extend([one, two])
    wait_for(lambda: one.leading() or two.leading())
    time.sleep(6)  # both have tried: exactly one leads
    assert one.leading() != two.leading()
    leader, standby = (one, two) if one.leading() else (two, one)
    wait_for(lambda: job_stored(ctx))
    # The leader dies before the slot; its advisory lock goes with its connection.
    leader.stop(signal.SIGKILL)
    wait_for(standby.leading, timeout=20)
    wait_until(slot + timedelta(seconds=2))
    wait_for(lambda: sent_runs(ctx) == [("sent", "timer")], timeout=45)
    assert standby.stop() == 0
    assert sorted(str(m["To"]) for m in read_outbox(Path(ctx.settings.outbox_dir))) == [
        "reader0@example.org", "reader1@example.org", "reader2@example.org"]
    ctx.close()


class StopsAfterFirstBatch(LocmemTransport):
    """Delivers, and after the first batch asks the daemon to shut down."""

    daemon: Daemon | None = None

    def send_batch(self, issue: OutgoingIssue,
                   recipients: list[OutgoingRecipient]) -> list[Outcome]:  # type: ignore[override]
        out = super().send_batch(issue, recipients)
        if self.daemon is not None:
            self.daemon.stopping.set()
        return [Outcome(o.delivery_id, ACCEPTED, o.message_id) for o in out]


def test_shutdown_stops_a_send_at_a_batch_boundary_and_the_next_start_resumes(
        tmp_path: Path, database_url: str, feed_server: FeedServer,
        locmem: type[LocmemTransport]) -> None:
    ctx = Context.open(make_settings(tmp_path, database_url, batch_size=2))
    newsroom(ctx, feed_server, readers=7)
    add_schedule(ctx.db, "daily", "weekly", "0 8 * * *", "UTC")
    slot = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    if slot > datetime.now(UTC):
        slot -= timedelta(days=1)
    daemon = Daemon(ctx, transport_factory=StopsAfterFirstBatch)
    StopsAfterFirstBatch.daemon = daemon
    stopped = daemon.run(1, trigger="timer", slot_at=slot)
    assert stopped.status == "interrupted"
    assert len(locmem.outbox) == 2  # one batch of two, then a clean stop
    # The next start takes the interrupted run over and finishes that same issue.
    StopsAfterFirstBatch.daemon = None
    again = Daemon(ctx, transport_factory=StopsAfterFirstBatch)
    resumed = again.run(1, trigger="timer", slot_at=slot)
    assert resumed.status == "sent" and resumed.issue_id == stopped.issue_id
    assert sorted(str(m["To"]) for m in locmem.outbox) == [
        f"reader{i}@example.org" for i in range(7)]
    assert stopped.issue_id is not None
    assert counts(ctx, stopped.issue_id) == {"accepted": 7}
    ctx.close()


def test_a_leading_scheduler_loads_what_a_slot_needs_before_the_slot(
        ctx: Context, locmem: type[LocmemTransport]) -> None:
    # A scheduled send pays no start-up: the templates are compiled and premailer made
    # as soon as the scheduler leads, long before its first slot.
    daemon = Daemon(ctx, check_every=0.2)
    assert not ctx.renderer.inliner_loaded
    daemon.start()
    try:
        deadline = time.monotonic() + 20
        while not (daemon.leading and ctx.renderer.inliner_loaded) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.leading and ctx.renderer.inliner_loaded
        assert {"email/issue.html", "email/issue.txt"} <= {
            name for _, name in ctx.renderer.env.cache or {}}
    finally:
        daemon.stop()


def test_a_requested_run_is_carried_out_once_by_the_leading_scheduler(
        tmp_path: Path, database_url: str, feed_server: FeedServer,
        procs: list[Scheduler]) -> None:
    from schedules.daemon import scheduler_leads
    from schedules.runner import request_run
    from schedules.worker import RunWorker
    ctx = Context.open(make_settings(tmp_path, database_url))
    newsroom(ctx, feed_server)
    collect(ctx.db, ctx.settings)  # "Send now" sends what was previewed: no collecting
    leader = Scheduler(ctx, tmp_path / "leader.log")
    procs.append(leader)
    wait_for(leader.leading)
    assert scheduler_leads(ctx)
    # A web app beside it leaves the run to the scheduler, however often it looks.
    web = RunWorker(ctx, defer=lambda: scheduler_leads(ctx))
    run_id, _ = request_run(ctx, "weekly", "layla")
    for _ in range(3):
        web.nudge()

    def finished() -> RequestedRun | None:
        with ctx.db.session() as s:
            run = s.get(RequestedRun, run_id)
            assert run is not None
            return run if run.status == "sent" else None

    wait_for(finished, timeout=45)
    time.sleep(6)  # another tick: nothing more
    web.close()
    assert leader.stop() == 0
    assert not scheduler_leads(ctx)
    run = finished()
    assert run is not None and run.claimed_by is not None
    assert run.claimed_by.split(":")[1] == str(leader.proc.pid)
    assert sorted(str(m["To"]) for m in read_outbox(Path(ctx.settings.outbox_dir))) == [
        "reader0@example.org", "reader1@example.org", "reader2@example.org"]
    ctx.close()
