"""Operating the service: `digest status`, JSON logs, metrics, /healthz, backups, shared
rate limits — as an operator meets them, through real processes on loopback."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from digest.services.feeds.collect import add_feed, collect
from digest.services.storage.context import Context
from digest.services.storage.db import HEAD_REVISION, utcnow
from digest.services.storage.models import Delivery, Issue
from digest.services.telemetry.logs import Redact, json_handler, scrub
from schedules.runner import run_slot
from schedules.service import add_schedule
from tests.conftest import free_port, make_settings
from tests.feedserver import FeedServer, rss
from tests.sendgrid_standin import SendGridStandIn
from tests.test_exactly_once import KEY, check_exactly_once, child_env, list_with_news
from tests.test_send import recap

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def digest(env: dict[str, str], *args: str, cwd: Path = ROOT,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "digest", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def standin() -> Iterator[SendGridStandIn]:
    server = SendGridStandIn(KEY, seed=3)
    server.keep_bodies = False
    yield server
    server.close()


def metric(text_format: str, name: str, **labels: str) -> float:
    """The sum of one metric's samples whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text_format.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"no {name} {labels} in:\n{text_format[:3000]}"
    return total


# --- digest status -------------------------------------------------------------------------

def test_status_names_a_failing_feed_an_uncertain_send_and_a_held_issue(
        tmp_path: Path, feed_server: FeedServer, standin: SendGridStandIn) -> None:
    ctx, active = list_with_news(tmp_path, feed_server, f"sqlite:///{tmp_path}/d.db", 300)
    env = child_env(ctx, standin, COLUMNS="250")
    healthy = digest(env, "status")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "Nothing needs a person." in healthy.stdout
    # A feed that has failed for four days, fetched every day.
    broken = feed_server.add("/broken.xml", status=500)
    add_feed(ctx.db, broken, "Broken desk")
    for days_ago in (4, 3, 2, 1, 0):
        collect(ctx.db, ctx.settings, now=utcnow() - timedelta(days=days_ago))
    # A send whose every request is accepted and its answer lost: all uncertain.
    standin.fault_rates = {"drop_after_accept": 1.0}
    sent = digest(env, "send", "--list", "weekly", "--no-collect", "--yes")
    assert sent.returncode == 1, sent.stdout + sent.stderr
    # A schedule that holds next week's issue for an editor's approval.
    feed_server.add("/more.xml", body=rss([recap(7, tags=["Syria"])]))
    add_feed(ctx.db, feed_server.url("/more.xml"), "More")
    view = add_schedule(ctx.db, "weekly-8am", "weekly", "0 8 * * mon", "UTC",
                        hold_for_approval=True, approval_wait=timedelta(hours=2))
    stop = threading.Event()
    waiting = threading.Thread(target=run_slot, args=(ctx, view.id, utcnow()),
                               kwargs={"trigger": "manual", "should_stop": stop.is_set,
                                       "poll_seconds": 0.2})
    waiting.start()
    try:
        deadline = time.monotonic() + 30
        while "waiting" not in digest(env, "status", "--json").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        shown = digest(env, "status")
        as_json = digest(env, "status", "--json")
    finally:
        stop.set()
        waiting.join(timeout=30)
    assert shown.returncode == 1 and as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["schema_at_head"] is True and report["healthy"] is False
    feed = next(f for f in report["feeds"] if f["url"] == broken)
    assert feed["failures"] == 6 and "500" in feed["last_error"]  # the held run collected too
    assert report["lists"][0]["uncertain"] == len(active)
    assert report["schedules"][0]["last_outcome"] == "waiting"
    needs = "\n".join(report["needs_attention"])
    assert f"feed {broken} has failed for 4 days" in needs
    assert f"{len(active)} deliveries are uncertain" in needs
    assert "held for approval" in needs
    assert "Needs a person" in shown.stdout and f"feed {broken} has failed" in shown.stdout
    assert not ADDRESS.search(as_json.stdout), "status shows no subscriber's address"
    ctx.close()


# --- logs ----------------------------------------------------------------------------------

def test_json_logs_carry_fields_and_never_an_address_token_or_key(
        tmp_path: Path, feed_server: FeedServer, standin: SendGridStandIn) -> None:
    ctx, active = list_with_news(tmp_path, feed_server, f"sqlite:///{tmp_path}/d.db", 1200)
    feed_server.add("/gone.xml", status=404)
    add_feed(ctx.db, feed_server.url("/gone.xml"), "Gone")
    standin.fault_rates = {"429": 0.3, "500": 0.2}
    env = child_env(ctx, standin, DIGEST_LOG_FORMAT="json", DIGEST_LOG_LEVEL="INFO",
                    DIGEST_RETRY_ATTEMPTS="20")
    run = digest(env, "send", "--list", "weekly", "--yes")
    assert run.returncode == 0, run.stderr[-3000:]
    # Every line on stderr is JSON, the command's own messages included.
    records = [json.loads(line) for line in run.stderr.splitlines()]
    assert any(r["logger"] == "digest.edges.cli" and f"{len(active)} accepted" in r["message"]
               for r in records), run.stderr[-2000:]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    handed = [r for r in records if "handed over" in r["message"]]
    assert handed and handed[0]["list"] == "weekly" and handed[0]["count"] == len(active)
    assert handed[0]["counts"]["accepted"] == len(active) and handed[0]["duration"] > 0
    assert any(r.get("feed") == feed_server.url("/gone.xml") and r["level"] == "WARNING"
               for r in records)
    assert any("rate limit" in r["message"] and r.get("status") == 429 for r in records)
    everything = run.stderr
    assert not ADDRESS.search(everything), ADDRESS.search(everything)
    for secret in (KEY, "test-secret"):
        assert secret not in everything
    ctx.close()


def test_every_log_line_is_scrubbed_whatever_a_caller_passes() -> None:
    import io
    stream = io.StringIO()
    handler = json_handler(stream)
    handler.addFilter(Redact())
    logger = logging.getLogger("test.scrub")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("SMTP 550 <Reader.One@example.org> unknown; see %s",
                       "https://desk.example/u/eyJzIjoxMjN9.ZzAbCdEfGh.k3yS1gnatureXYZ123",
                       extra={"error": "to reader.two@example.net "
                                       "key SG.abcdefghijkl.mnopqrstuvwx"})
        try:
            raise ValueError("bearer abc.def.ghi for x@y.org, password=hunter22")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    for leak in ("example.org", "example.net", "eyJzIjoxMjN9", "SG.abcdefghijkl", "abc.def.ghi",
                 "hunter22", "x@y.org"):
        assert leak not in written, leak
    assert "[address]" in written and "/u/[token]" in written and "[key]" in written
    assert scrub("plain text stays") == "plain text stays"


# --- metrics -------------------------------------------------------------------------------

def test_metrics_file_adds_up_the_helpers_of_a_send(
        tmp_path: Path, feed_server: FeedServer, standin: SendGridStandIn) -> None:
    ctx, active = list_with_news(tmp_path, feed_server, f"sqlite:///{tmp_path}/d.db", 3000)
    standin.fault_rates = {"429": 0.2}
    standin.delay = 0.25  # slow enough that the helper, starting up, still finds batches
    env = child_env(ctx, standin, DIGEST_BATCH_SIZE="125", DIGEST_RETRY_ATTEMPTS="20")
    textfile = tmp_path / "digest.prom"
    run = digest(env, "send", "--list", "weekly", "--yes", "--jobs", "2",
                 "--metrics-file", str(textfile))
    assert run.returncode == 0, run.stderr[-3000:]
    written = textfile.read_text()
    assert metric(written, "digest_recipients_total", list="weekly",
                  outcome="accepted") == len(active)
    # Both processes sent: two send runs (the helper's counted too), 24 batches between
    # them, and the issue finished.
    assert metric(written, "digest_sends_total", list="weekly") == 2
    assert metric(written, "digest_sends_total", list="weekly", outcome="ok") >= 1
    assert metric(written, "digest_batch_duration_seconds_count", transport="sendgrid") == 24
    assert metric(written, "digest_rate_limit_waits_total", transport="sendgrid") >= 1
    assert metric(written, "digest_transport_errors_total", transport="sendgrid",
                  code="429") >= 1
    assert metric(written, "digest_feed_fetches_total", outcome="ok") == 1
    assert metric(written, "digest_last_success_timestamp_seconds", job="send") > 1e9
    # A failing collect writes its file too.
    feed_server.routes["/f.xml"].status = 500
    failed = digest(env, "collect", "--metrics-file", str(tmp_path / "collect.prom"))
    assert failed.returncode == 0
    assert metric((tmp_path / "collect.prom").read_text(), "digest_feed_fetches_total",
                  outcome="error") == 1
    ctx.close()


class Serve:
    """`digest serve` as a child process."""

    def __init__(self, env: dict[str, str], log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        # /healthz tells its details only to the monitor (and signed-in editors).
        token = env.get("DIGEST_METRICS_TOKEN")
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "digest", "serve", "--port", str(self.port), *extra],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert self.proc.poll() is None and time.monotonic() < deadline, \
                    log.read_text()
                time.sleep(0.2)

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/healthz", headers=self.auth, timeout=5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def serve_env(ctx: Context, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DIGEST_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"DIGEST_DATABASE_URL": ctx.settings.database_url,
                "DIGEST_SECRET_KEY": "test-secret", "DIGEST_TRANSPORT": "outbox",
                "DIGEST_OUTBOX_DIR": ctx.settings.outbox_dir, **extra})
    return env


def test_healthz_and_metrics_on_serve(tmp_path: Path, sqlite_url: str,
                                      servers: list[Serve]) -> None:
    ctx = Context.open(make_settings(tmp_path, sqlite_url))
    server = Serve(serve_env(ctx, DIGEST_METRICS_TOKEN="scrape-me"), tmp_path / "serve.log")
    servers.append(server)
    deadline = time.monotonic() + 20
    while server.health().json()["scheduler"] != "leader":
        assert time.monotonic() < deadline, server.health().text
        time.sleep(0.3)
    health = server.health()
    assert health.status_code == 200 and health.headers["content-type"] == "application/json"
    assert health.json() == {"status": "ok", "database": "reachable", "schema": HEAD_REVISION,
                             "schema_at_head": True, "scheduler": "leader"}
    # Without the token (even from this machine, once a token is set): only ok or not.
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    httpx.get(f"{server.url}/subscribe")
    httpx.get(f"{server.url}/u/not-a-token")
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics",
                     headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith(
        "text/plain; version=")
    body = scraped.text
    assert metric(body, "digest_web_requests_total", route="/healthz", status="200") >= 2
    assert metric(body, "digest_web_requests_total", route="/subscribe", method="GET") == 1
    # Routes are counted by template: no token ever becomes a label.
    assert metric(body, "digest_web_requests_total", route="/u/{token}") == 1
    assert "not-a-token" not in body
    # The schema is behind (an older version's database): 503, saying what to do.
    with ctx.db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    behind = server.health()
    assert behind.status_code == 503
    assert behind.json()["status"] == "unhealthy" and "digest db upgrade" in \
        behind.json()["problem"]
    assert "test-secret" not in behind.text and sqlite_url not in behind.text
    server.stop()
    with ctx.db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :head"),
                     {"head": HEAD_REVISION})
    # Without a token, /metrics answers this machine only, and never through a proxy.
    local = Serve(serve_env(ctx), tmp_path / "local.log", "--no-scheduler")
    servers.append(local)
    assert local.health().json()["scheduler"] == "off"
    assert httpx.get(f"{local.url}/metrics").status_code == 200
    assert httpx.get(f"{local.url}/metrics",
                     headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    local.stop()
    ctx.close()


# --- rate limits across instances ----------------------------------------------------------

def sign_in(base: str, name: str, password: str, client_ip: str) -> int:
    headers = {"X-Forwarded-For": client_ip}
    with httpx.Client(base_url=base, headers=headers) as client:
        page = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf, page.text
        return client.post("/login", data={"csrf": csrf[1], "name": name,
                                           "password": password, "next": "/editor"}).status_code


def test_two_instances_share_one_allowance_and_see_the_real_client(
        tmp_path: Path, sqlite_url: str, servers: list[Serve]) -> None:
    from digest.services.building.editors import add_editor, audit_log
    ctx = Context.open(make_settings(tmp_path, sqlite_url))
    add_editor(ctx.db, "amal", "a long enough password")
    env = serve_env(ctx, DIGEST_FORWARDED_ALLOW_IPS="127.0.0.1",
                    DIGEST_LOGIN_ATTEMPTS_PER_15_MINUTES="4", DIGEST_LOGIN_DELAY_SECONDS="0")
    one = Serve(env, tmp_path / "one.log", "--no-scheduler")
    two = Serve(env, tmp_path / "two.log", "--no-scheduler")
    servers.extend([one, two])
    attacker = "203.0.113.9"
    # Four wrong passwords from one address, alternating between the instances (no wait
    # between tries here, to reach the lock-out at once)…
    for i in range(4):
        assert sign_in((one, two)[i % 2].url, f"guess{i}", "wrong", attacker) == 401
    # …use it up on both: the fifth is refused wherever it lands, even with the right one.
    assert sign_in(one.url, "amal", "a long enough password", attacker) == 429
    assert sign_in(two.url, "amal", "a long enough password", attacker) == 429
    # Someone else, behind the same proxy, is not affected; the audit log names them.
    assert sign_in(two.url, "amal", "a long enough password", "198.51.100.7") == 303
    assert any("from 198.51.100.7" in entry.detail for entry in audit_log(ctx.db))
    metrics_text = httpx.get(f"{one.url}/metrics").text  # loopback, not proxied
    assert metric(metrics_text, "digest_sign_in_failures_total", reason="password") == 2
    ctx.close()


# --- backups -------------------------------------------------------------------------------

def test_a_backup_taken_during_a_send_restores_and_the_send_resumes_once(
        tmp_path: Path, feed_server: FeedServer, standin: SendGridStandIn) -> None:
    database = tmp_path / "d.db"
    ctx, active = list_with_news(tmp_path, feed_server, f"sqlite:///{database}", 6000)
    standin.delay = 0.1
    env = child_env(ctx, standin, DIGEST_BATCH_SIZE="200")
    sender = subprocess.Popen([sys.executable, "-m", "digest", "send", "--list", "weekly",
                               "--no-collect", "--yes"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while sum(standin.accepted.values()) < 1000:
            assert time.monotonic() < deadline and sender.poll() is None
            time.sleep(0.05)
        # A copy while the send writes: consistent, and it passes its check.
        live = digest(env, "db", "backup", str(tmp_path / "live.db"))
        assert live.returncode == 0, live.stderr
        assert sender.poll() is None, "the send ended before the copy; make it slower"
        check_env = {**env, "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path}/live.db"}
        checked = digest(check_env, "db", "check")
        assert checked.returncode == 0 and "integrity ok" in checked.stdout, checked.stderr
        # The machine is lost mid-send: the sender is frozen, copied, then gone.
        sender.send_signal(signal.SIGSTOP)
        frozen = digest(env, "db", "backup", str(tmp_path / "frozen.db"))
        assert frozen.returncode == 0, frozen.stderr
    finally:
        sender.kill()
        sender.wait()
    ctx.close()
    for leftover in tmp_path.glob("d.db*"):
        leftover.unlink()
    shutil.copy(tmp_path / "frozen.db", database)
    before = sum(standin.accepted.values())
    resumed = digest(env, "send", "--list", "weekly", "--no-collect", "--yes")
    assert resumed.returncode in (0, 1), resumed.stderr[-2000:]
    assert "Resumed issue 1" in resumed.stderr
    assert sum(standin.accepted.values()) > before
    ctx = Context.open(make_settings(tmp_path, f"sqlite:///{database}"))
    with ctx.db.session() as s:
        assert s.scalar(select(Issue.status)) == "sent"
        assert s.scalar(select(Delivery.id).where(Delivery.status == "pending")) is None
    check_exactly_once(ctx, standin, active)
    ctx.close()


def test_backup_refuses_what_it_cannot_do_well(tmp_path: Path, sqlite_url: str,
                                                postgres_url: str) -> None:
    ctx = Context.open(make_settings(tmp_path, sqlite_url))
    env = serve_env(ctx)
    (tmp_path / "taken.db").write_text("keep me")
    taken = digest(env, "db", "backup", str(tmp_path / "taken.db"))
    assert taken.returncode == 1 and "exists" in taken.stderr
    assert (tmp_path / "taken.db").read_text() == "keep me"
    pg = digest({**env, "DIGEST_DATABASE_URL": postgres_url}, "db", "backup",
                str(tmp_path / "x.dump"))
    assert pg.returncode == 1 and "pg_dump --format=custom --file" in pg.stderr
    assert not (tmp_path / "x.dump").exists()
    ctx.close()


# --- the multi-instance topology -----------------------------------------------------------

def test_two_instances_and_two_workers_send_a_scheduled_issue_once_and_survive_the_leader(
        tmp_path: Path, postgres_url: str, feed_server: FeedServer,
        standin: SendGridStandIn, servers: list[Serve]) -> None:
    """deploy/compose.yaml's shape on this machine: PostgreSQL, two `digest serve` (each
    with a scheduler), two `digest send --worker`."""
    from digest.services.storage.schedule_models import ScheduleRun
    from tests.test_scheduler_daemon import next_slot, wait_until
    ctx, active = list_with_news(tmp_path, feed_server, postgres_url, 6000)
    standin.delay = 0.1
    slot = next_slot(lead=35)
    add_schedule(ctx.db, "weekly-soon", "weekly", f"{slot.minute} {slot.hour} * * *", "UTC")
    env = child_env(ctx, standin, DIGEST_BATCH_SIZE="100", DIGEST_LOG_LEVEL="INFO")
    one = Serve(env, tmp_path / "one.log")
    two = Serve(env, tmp_path / "two.log")
    servers.extend([one, two])

    def roles() -> list[str]:
        return [one.health().json()["scheduler"], two.health().json()["scheduler"]]

    deadline = time.monotonic() + 30
    while "leader" not in roles():
        assert time.monotonic() < deadline, roles()
        time.sleep(0.5)
    time.sleep(6)  # both have tried to lead by now: exactly one does
    assert sorted(roles()) == ["leader", "standby"]
    workers = [subprocess.Popen(
        [sys.executable, "-m", "digest", "send", "--list", "weekly", "--worker", "--yes",
         "--wait-for-issue", "150", "--metrics-file", str(tmp_path / f"worker{n}.prom")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for n in (1, 2)]
    try:
        wait_until(slot)
        for worker in workers:
            _, problem = worker.communicate(timeout=150)
            assert worker.returncode == 0, problem.decode()[-2000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    deadline = time.monotonic() + 60
    while True:
        with ctx.db.session() as s:
            runs = [(r.status, r.trigger) for r in s.scalars(select(ScheduleRun))]
        if runs and runs[0][0] != "running":
            break
        assert time.monotonic() < deadline, runs
        time.sleep(0.5)
    assert runs == [("sent", "timer")]
    check_exactly_once(ctx, standin, active)
    # Both workers took part in the one send.
    for n in (1, 2):
        written = (tmp_path / f"worker{n}.prom").read_text()
        assert metric(written, "digest_recipients_total", outcome="accepted") > 0, n
    assert all(server.health().status_code == 200 for server in (one, two))
    # The leader dies: the standby takes over, and /healthz says so.
    leader, standby = (one, two) if roles()[0] == "leader" else (two, one)
    leader.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while standby.health().json()["scheduler"] != "leader":
        assert time.monotonic() < deadline, standby.log.read_text()[-2000:]
        time.sleep(0.5)
    assert standby.health().status_code == 200
    ctx.close()
