"""One run path: the web app's "Send now" is a requested run, claimed once and carried
out through run_list by the scheduler (when one leads) or the web app's own tracked
worker, and shown on the dashboard from requested to done."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from digest.services.building.editors import add_editor
from digest.services.storage.context import Context
from digest.services.storage.models import Issue
from digest.services.storage.schedule_models import RequestedRun
from schedules.runner import request_run
from schedules.service import requested_runs
from schedules.worker import THREAD_NAME, RunWorker
from tests.conftest import make_settings
from tests.feedserver import FeedServer
from tests.test_scheduler_daemon import Scheduler, newsroom
from tests.test_send import read_outbox

PASSWORD = "a long enough password"
READERS = ["reader0@example.org", "reader1@example.org", "reader2@example.org"]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def workers_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def signed_in(client: TestClient) -> TestClient:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert csrf
    client.post("/login", data={"csrf": csrf[1], "name": "layla", "password": PASSWORD})
    return client


def send_now(client: TestClient) -> str:
    """Press "Send now" on the issue page as an editor would; the notice it leads to."""
    page = client.get("/editor/lists/weekly").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    audience = re.search(r'name="audience" value="(\d+)"', page)
    assert csrf and audience
    answer = client.post("/editor/lists/weekly/send", follow_redirects=False,
                         data={"csrf": csrf[1], "confirm_list": "weekly",
                               "audience": audience[1]})
    assert answer.status_code == 303
    return client.get(answer.headers["location"]).text


def sent_to(ctx: Context) -> list[str]:
    return sorted(str(m["To"]) for m in read_outbox(Path(ctx.settings.outbox_dir)))


def issues(ctx: Context) -> int:
    with ctx.db.session() as session:
        return session.scalar(select(func.count()).select_from(Issue)) or 0


@pytest.fixture
def procs() -> Iterator[list[Scheduler]]:
    started: list[Scheduler] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture
def desk(tmp_path: Path, database_url: str, feed_server: FeedServer) -> Context:
    ctx = Context.open(make_settings(tmp_path, database_url))
    newsroom(ctx, feed_server)
    from digest.services.feeds.collect import collect
    collect(ctx.db, ctx.settings)
    add_editor(ctx.db, "layla", PASSWORD)
    return ctx


def test_send_now_is_a_run_the_dashboard_shows_and_the_web_app_carries_out(
        desk: Context) -> None:
    from digest.edges.web.app import create_app
    with TestClient(create_app(desk), base_url="https://digest.example") as client:
        dashboard = send_now(signed_in(client))
        assert "Sending to 3 subscribers of weekly" in dashboard
        # No scheduler leads: the web app's own worker carries the run out.
        wait_for(lambda: "sent: issue 1 of weekly" in client.get("/editor").text)
        assert sent_to(desk) == READERS
        [run] = requested_runs(desk.db)
        assert (run.list_name, run.status, run.requested_by, run.issue_id) == (
            "weekly", "sent", "layla", 1)
        page = client.get("/editor").text
        assert "requested by layla" in page
        assert '<td class="ok">sent: issue 1 of weekly' in page  # not marked as gone wrong
    # The app's lifespan ended: its worker was shut down and joined.
    assert workers_alive() == []
    desk.close()


def test_with_a_scheduler_leading_send_now_is_carried_out_by_it_exactly_once(
        desk: Context, tmp_path: Path, procs: list[Scheduler]) -> None:
    from digest.edges.web.app import create_app
    scheduler = Scheduler(desk, tmp_path / "scheduler.log")
    procs.append(scheduler)
    wait_for(scheduler.leading)
    with TestClient(create_app(desk), base_url="https://digest.example") as client:
        signed_in(client)
        send_now(client)
        # A second click while the first is waiting or running is that same run.
        again = send_now(client)
        assert "already" in again
        wait_for(lambda: "sent: issue 1 of weekly" in client.get("/editor").text)
    time.sleep(6)  # another tick of the scheduler: nothing more
    assert scheduler.stop() == 0
    assert sent_to(desk) == READERS and issues(desk) == 1
    with desk.db.session() as session:
        [run] = session.scalars(select(RequestedRun)).all()
    assert run.status == "sent"
    assert run.claimed_by is not None and run.claimed_by.split(":")[1] == str(
        scheduler.proc.pid)
    desk.close()


def test_a_requested_run_is_one_until_it_ends_and_its_worker_is_joined(
        desk: Context) -> None:
    first, created = request_run(desk, "weekly", "layla")
    assert created
    assert request_run(desk, "weekly", "amal") == (first, False)
    assert [r.status for r in requested_runs(desk.db)] == ["requested"]
    worker = RunWorker(desk)
    for _ in range(5):  # however often it is nudged, the run is carried out once
        worker.nudge()
    wait_for(lambda: requested_runs(desk.db)[0].status == "sent")
    assert workers_alive() != []
    worker.close()
    assert workers_alive() == []
    assert sent_to(desk) == READERS and issues(desk) == 1
    # Over: the next request is a new run (nothing new since, so no email).
    second, created = request_run(desk, "weekly", "layla")
    assert created and second != first
    worker = RunWorker(desk)
    worker.nudge()
    wait_for(lambda: requested_runs(desk.db)[0].status == "nothing_new")
    worker.close()
    assert sent_to(desk) == READERS
    desk.close()


def test_a_requested_run_whose_holder_died_is_taken_over_once(desk: Context) -> None:
    # The web app that had claimed it was killed: its lease ran out, nobody renews it.
    run_id, _ = request_run(desk, "weekly", "layla")
    with desk.db.session() as session:
        run = session.get(RequestedRun, run_id)
        assert run is not None
        run.status, run.claimed_by = "running", "elsewhere.example:4242:dead00"
        run.lease_until = datetime.now(UTC) - timedelta(seconds=1)
    worker = RunWorker(desk)
    worker.nudge()
    wait_for(lambda: requested_runs(desk.db)[0].status == "sent")
    worker.close()
    assert sent_to(desk) == READERS and issues(desk) == 1
    desk.close()
