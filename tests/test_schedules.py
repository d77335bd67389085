"""Schedules: run claims make every slot run once, approval holds, retries, history."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from digest.edges.cli import cli
from digest.errors import DeliveryError
from digest.services.building.editing import approve, save_edit
from digest.services.feeds.collect import add_feed
from digest.services.storage.context import Context
from digest.services.storage.schedule_models import Schedule, ScheduleRun
from digest.services.transports.locmem import LocmemTransport
from schedules.expressions import slot_key, time_zone
from schedules.runner import due_slot, manual_slot, run_slot
from schedules.service import add_schedule, history, list_schedules, set_paused
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.feedserver import FeedServer, Route, rss
from tests.test_send import recap

LONDON = time_zone("Europe/London")


@pytest.fixture
def newsroom(any_ctx: Context, feed_server: FeedServer,
             locmem: type[LocmemTransport]) -> Context:
    url = feed_server.add("/feed.xml", body=rss([recap(1), recap(2, tags=["Syria"])]))
    add_feed(any_ctx.db, url, "Desk")
    create_list(any_ctx.db, "weekly", "The Weekly Recap")
    for address in ("a@example.org", "b@example.org", "c@example.org"):
        add_subscriber(any_ctx.db, "weekly", address)
    return any_ctx


def schedule_id(ctx: Context, name: str) -> int:
    with ctx.db.session() as s:
        found = s.scalar(select(Schedule.id).where(Schedule.name == name))
        assert found is not None
        return found


def runs(ctx: Context) -> list[tuple[str, str]]:
    with ctx.db.session() as s:
        return [(r.slot_key, r.status) for r in
                s.scalars(select(ScheduleRun).order_by(ScheduleRun.id))]


def test_a_slot_runs_once_however_often_it_is_fired(newsroom: Context) -> None:
    add_schedule(newsroom.db, "monday", "weekly", "0 8 * * mon", "Europe/London")
    sid = schedule_id(newsroom, "monday")
    slot = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday, 08:00 London (GMT)
    first = run_slot(newsroom, sid, slot, transport=LocmemTransport())
    assert first.status == "sent" and first.counts == {"accepted": 3}
    # A restart's replay, `schedules run`, a second instance: the slot is taken.
    for trigger in ("timer", "manual", "timer"):
        again = run_slot(newsroom, sid, slot, trigger=trigger, transport=LocmemTransport())
        assert again.status == "taken"
    assert len(LocmemTransport.outbox) == 3
    assert runs(newsroom) == [("2026-11-23T08:00", "sent")]


def test_run_racing_the_timer_sends_once(newsroom: Context) -> None:
    add_schedule(newsroom.db, "monday", "weekly", "0 8 * * mon", "Europe/London")
    sid = schedule_id(newsroom, "monday")
    slot = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    results: list[str] = []
    start = threading.Barrier(4)

    def fire(trigger: str) -> None:
        start.wait()
        results.append(run_slot(newsroom, sid, slot, trigger=trigger,
                                transport=LocmemTransport()).status)

    threads = [threading.Thread(target=fire, args=(t,))
               for t in ("timer", "manual", "timer", "manual")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["sent", "taken", "taken", "taken"]
    assert sorted(str(m["To"]) for m in LocmemTransport.outbox) == [
        "a@example.org", "b@example.org", "c@example.org"]


def test_the_fall_back_slot_is_one_slot(newsroom: Context) -> None:
    add_schedule(newsroom.db, "night", "weekly", "30 1 * * *", "Europe/London")
    sid = schedule_id(newsroom, "night")
    # 2026-10-25: 01:30 happens at 00:30 UTC (BST) and again at 01:30 UTC (GMT).
    first, second = (datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
                     datetime(2026, 10, 25, 1, 30, tzinfo=UTC))
    assert slot_key(first, LONDON) == slot_key(second, LONDON) == "2026-10-25T01:30"
    assert run_slot(newsroom, sid, first, transport=LocmemTransport()).status == "sent"
    assert run_slot(newsroom, sid, second, transport=LocmemTransport()).status == "taken"
    with newsroom.db.session() as s:
        schedule = s.get(Schedule, sid)
        assert schedule is not None
        # At 02:10 GMT the due slot is the (one) 01:30 of that night.
        due = due_slot(schedule, datetime(2026, 10, 25, 2, 10, tzinfo=UTC))
    assert due is not None and slot_key(due, LONDON) == "2026-10-25T01:30"


def test_nothing_new_is_skipped_or_sent_as_the_schedule_says(
        newsroom: Context, feed_server: FeedServer) -> None:
    feed_server.routes["/feed.xml"] = Route(body=rss([]))
    add_schedule(newsroom.db, "skip", "weekly", "0 8 * * *", "UTC")
    add_schedule(newsroom.db, "always", "weekly", "0 9 * * *", "UTC", skip_empty=False)
    day = datetime(2026, 11, 23, tzinfo=UTC)
    skipped = run_slot(newsroom, schedule_id(newsroom, "skip"), day.replace(hour=8),
                       transport=LocmemTransport())
    assert skipped.status == "nothing_new" and LocmemTransport.outbox == []
    sent = run_slot(newsroom, schedule_id(newsroom, "always"), day.replace(hour=9),
                    transport=LocmemTransport())
    assert sent.status == "sent" and len(LocmemTransport.outbox) == 3
    body = LocmemTransport.outbox[0].get_body(("plain",))
    assert body is not None and "no new recaps this week" in str(body.get_content())


def test_an_issue_held_for_approval_waits_and_then_goes_or_not(newsroom: Context) -> None:
    add_schedule(newsroom.db, "held", "weekly", "0 8 * * *", "UTC", hold_for_approval=True,
                 approval_wait=timedelta(seconds=1))
    sid = schedule_id(newsroom, "held")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    unapproved = run_slot(newsroom, sid, now, transport=LocmemTransport(),
                          poll_seconds=0.1)
    assert unapproved.status == "not_approved" and "not approved" in unapproved.message
    assert LocmemTransport.outbox == []
    # Approved in time: it goes out, with the approved edit.
    add_schedule(newsroom.db, "held2", "weekly", "0 9 * * *", "UTC", hold_for_approval=True,
                 approval_wait=timedelta(minutes=5))
    save_edit(newsroom, "weekly", "editor", subject="This week, approved")
    timer = threading.Timer(0.5, approve, args=(newsroom, "weekly", "editor"))
    timer.start()
    sent = run_slot(newsroom, schedule_id(newsroom, "held2"), now + timedelta(hours=1),
                    transport=LocmemTransport(), poll_seconds=0.1)
    timer.join()
    assert sent.status == "sent"
    assert {str(m["Subject"]) for m in LocmemTransport.outbox} == {"This week, approved"}


class Broken(LocmemTransport):
    def send_batch(self, issue, recipients):  # type: ignore[no-untyped-def]
        raise DeliveryError("the mail server is down")


def test_a_failed_run_is_recorded_and_retried(newsroom: Context) -> None:
    add_schedule(newsroom.db, "monday", "weekly", "0 8 * * mon", "Europe/London")
    sid = schedule_id(newsroom, "monday")
    slot = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    failed = run_slot(newsroom, sid, slot, transport=Broken())
    assert failed.status == "failed" and "mail server is down" in failed.message
    # The timer does not run it again; a retry (policy: once) does, and resumes the issue.
    assert run_slot(newsroom, sid, slot, transport=LocmemTransport()).status == "taken"
    retried = run_slot(newsroom, sid, slot, trigger="retry", transport=LocmemTransport(),
                       max_attempts=2)
    assert retried.status == "sent" and len(LocmemTransport.outbox) == 3
    # No retries left after that.
    assert run_slot(newsroom, sid, slot, trigger="retry", transport=LocmemTransport(),
                    max_attempts=2).status == "taken"
    [run] = history(newsroom.db, "monday")
    assert (run.status, run.attempts, run.trigger) == ("sent", 2, "retry")


def test_manual_run_takes_the_missed_slot_or_the_next(newsroom: Context) -> None:
    add_schedule(newsroom.db, "daily", "weekly", "0 8 * * *", "UTC")
    with newsroom.db.session() as s:
        schedule = s.get(Schedule, schedule_id(newsroom, "daily"))
        assert schedule is not None
        s.expunge(schedule)
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert manual_slot(newsroom, schedule, now) == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    run_slot(newsroom, schedule.id, datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
             transport=LocmemTransport())
    assert manual_slot(newsroom, schedule, now) == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    # Past the grace time (6 h) a missed slot is not due any more.
    assert due_slot(schedule, datetime(2026, 11, 23, 14, 1, tzinfo=UTC)) is None


def test_schedules_cli(tmp_path: Path, runner: CliRunner) -> None:
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
           "DIGEST_TRANSPORT": "outbox", "DIGEST_OUTBOX_DIR": str(tmp_path / "out")}
    assert runner.invoke(cli, ["lists", "create", "--list", "weekly"], env=env).exit_code == 0
    added = runner.invoke(cli, ["schedules", "add", "monday", "--list", "weekly", "--cron",
                                "0 8 * * 1", "--timezone", "America/New_York"], env=env)
    assert added.exit_code == 0, added.output
    # Cron's 1 is Monday (APScheduler's numeric 1 would be Tuesday).
    assert "0 8 * * mon" in added.output and added.output.count("next: Mon") == 3
    assert "13:00 UTC" in added.output  # 08:00 EST
    listed = runner.invoke(cli, ["schedules", "list"], env=env)
    assert "monday" in listed.output and "UTC" in listed.output
    bad = runner.invoke(cli, ["schedules", "add", "x", "--list", "weekly", "--cron",
                              "0 25 * * *", "--timezone", "UTC"], env=env)
    assert bad.exit_code == 1 and "not a valid schedule" in bad.output
    bad_zone = runner.invoke(cli, ["schedules", "add", "x", "--list", "weekly", "--every",
                                   "weekly on monday at 08:00", "--timezone", "Mars/Base"],
                             env=env)
    assert bad_zone.exit_code == 1 and "IANA time zone" in bad_zone.output
    assert "Paused" in runner.invoke(cli, ["schedules", "pause", "monday"], env=env).output
    assert "paused" in runner.invoke(cli, ["schedules", "list"], env=env).output
    assert "Resumed" in runner.invoke(cli, ["schedules", "resume", "monday"], env=env).output
    ran = runner.invoke(cli, ["--set", "transport=locmem", "schedules", "run", "monday"],
                        env=env)
    assert ran.exit_code == 0 and "nothing_new" in ran.output
    shown = runner.invoke(cli, ["schedules", "history", "monday"], env=env)
    assert shown.exit_code == 0 and "manual" in shown.output
    assert runner.invoke(cli, ["schedules", "remove", "monday"], env=env).exit_code == 0
    assert "monday" not in runner.invoke(cli, ["schedules", "list"], env=env).output


def test_paused_schedules_have_no_next_fire(newsroom: Context) -> None:
    add_schedule(newsroom.db, "monday", "weekly", "weekly on monday at 08:00",
                 "Europe/London")
    [view] = list_schedules(newsroom.db, now=datetime(2026, 3, 20, tzinfo=UTC))
    # Across the spring change: 08:00 GMT, then 08:00 BST (07:00 UTC).
    assert [f.astimezone(UTC).hour for f in view.next_fires] == [8, 7, 7]
    set_paused(newsroom.db, "monday", True)
    assert list_schedules(newsroom.db)[0].next_fires == []
