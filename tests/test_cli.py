"""The `digest` command as an editor uses it, from a shell with no terminal."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.edges.cli import cli
from digest.edges.cli.base import YOUNGEST_ROUND
from tests.feedserver import FeedServer, Route, rss


def ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_whole_job_from_the_command_line(runner: CliRunner, tmp_path: Path,
                                             feed_server: FeedServer) -> None:
    date = format_datetime(datetime.now(UTC) - timedelta(days=1))
    url = feed_server.add("/f.xml", body=rss([
        {"title": "Recap: Iran Moves in Syria", "guid": "1", "link": "https://n.example/1",
         "date": date, "tags": ["Iran", "Syria"]}]))
    broken = feed_server.add("/broken", Route(status=503))
    ok(runner, "feeds", "add", url, "--name", "Desk")
    ok(runner, "feeds", "add", broken)
    ok(runner, "lists", "create", "--list", "weekly", "--title", "The Weekly Recap")
    ok(runner, "subscribers", "add", "Reader@Example.ORG", "--list", "weekly", "--name", "R")
    out = ok(runner, "subscribers", "add", "reader@example.org", "--list", "weekly")
    assert "already subscribed" in out
    assert "Reader@example.org" in ok(runner, "subscribers", "list", "--list", "weekly")

    out = ok(runner, "preview", "--list", "weekly", "--no-collect", "--out", "p.html")
    assert "Nothing new" in out and "--no-collect" in out and not (tmp_path / "p.html").exists()
    # Preview collects first, as send does, naming the feed that failed.
    out = ok(runner, "preview", "--list", "weekly", "--out", "p.html", "--text", "p.txt")
    assert "1 new" in out and "HTTP 503" in out and broken in out
    assert "Recap: Iran Moves in Syria" in (tmp_path / "p.html").read_text(encoding="utf-8")
    out = ok(runner, "collect")
    assert "0 new" in out and broken in out

    out = ok(runner, "send", "--list", "weekly")
    assert "1 accepted, 0 failed" in out
    [eml] = list((tmp_path / "outbox").rglob("*.eml"))
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert str(msg["To"]) == "R <Reader@example.org>"
    assert "Nothing new" in ok(runner, "send", "--list", "weekly", "--no-collect")
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 1

    listing = ok(runner, "feeds", "list")
    assert "Desk" in listing and "503" in listing
    assert "weekly" in ok(runner, "issues", "list")
    shown = ok(runner, "issues", "show", "1")
    assert ("accepted 1" in shown and "Iran (1)" in shown) or "Syria (1)" in shown


def test_errors_are_clear_and_name_the_thing(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["send", "--list", "nope"])
    assert result.exit_code == 1 and "no list named 'nope'" in result.output
    assert "Traceback" not in result.output
    assert "Collected" not in result.output  # said before any feed is fetched
    result = runner.invoke(cli, ["feeds", "add", "ftp://x.example/feed"])
    assert result.exit_code == 1 and "not an http(s) URL" in result.output
    ok(runner, "lists", "create", "--list", "weekly")
    result = runner.invoke(cli, ["subscribers", "add", "not-an-address", "--list", "weekly"])
    assert result.exit_code == 1 and "not a valid address" in result.output
    result = runner.invoke(cli, ["--set", "lookback_days=soon", "config"])
    assert result.exit_code == 1 and "lookback_days" in result.output


def test_removed_subscribers_stay_removed(runner: CliRunner) -> None:
    ok(runner, "lists", "create", "--list", "weekly")
    ok(runner, "subscribers", "add", "a@example.org", "--list", "weekly")
    ok(runner, "subscribers", "remove", "A@EXAMPLE.org", "--list", "weekly")
    result = runner.invoke(cli, ["subscribers", "add", "a@example.org", "--list", "weekly"])
    assert result.exit_code == 1 and "not re-subscribed" in result.output
    assert "unsubscribed" in ok(runner, "subscribers", "list", "--list", "weekly")
    ok(runner, "subscribers", "forget", "a@example.org", "--yes")
    assert "0 subscribers" in ok(runner, "subscribers", "list", "--list", "weekly")
    result = runner.invoke(cli, ["subscribers", "add", "a@example.org", "--list", "weekly"])
    assert result.exit_code == 1


def test_python_dash_m_and_db_upgrade(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{db}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "digest", "db", "upgrade"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout and db.exists()
    done = subprocess.run([sys.executable, "-m", "digest", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert "send" in done.stdout and "collect" in done.stdout


def test_show_a_list_and_a_subscriber(runner: CliRunner) -> None:
    ok(runner, "lists", "create", "--list", "weekly", "--title", "The Weekly Recap")
    ok(runner, "subscribers", "add", "Ann@Example.org", "--list", "weekly", "--name", "Ann",
       "--keywords", "Iran;Syria")
    ok(runner, "subscribers", "add", "bo@example.org", "--list", "weekly")
    ok(runner, "subscribers", "remove", "bo@example.org", "--list", "weekly")
    shown = ok(runner, "lists", "show", "--list", "weekly")
    assert "The Weekly Recap" in shown and "active 1" in shown
    assert "unsubscribed 1" in shown and "No issues yet." in shown
    person = ok(runner, "subscribers", "show", "ann@EXAMPLE.org")
    assert "Ann@example.org (Ann)" in person
    assert "weekly: active, topics: Iran; Syria" in person
    result = runner.invoke(cli, ["subscribers", "show", "nobody@example.org"])
    assert result.exit_code == 1 and "no subscriber nobody@example.org" in result.output
    result = runner.invoke(cli, ["lists", "show", "--list", "nope"])
    assert result.exit_code == 1 and "no list named 'nope'" in result.output


HEAVY = ("feedparser", "httpx", "premailer", "sendgrid", "starlette", "uvicorn", "alembic",
         "jinja2", "sqlalchemy", "email_validator", "prometheus_client", "requests",
         "sqlalchemy.dialects.postgresql")


def _printed_at_exit(expression: str, code: str, cwd: Path | None = None,
                     env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``code`` in a fresh interpreter; return its exit status and what
    ``expression`` was at its end (printed by an exit handler)."""
    done = subprocess.run([sys.executable, "-c", "import atexit, gc, sys\natexit.register("
                           f"lambda: print({expression}))\n" + code],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip(), done.stderr
    return done.returncode, done.stdout.strip().splitlines()[-1]


def _main(command: list[str]) -> str:
    """Code that runs one `digest` command through the console script's entry point."""
    return f"sys.argv = ['digest', *{command!r}]\nfrom digest.edges.cli import main\nmain()"


def _loaded(code: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    status, printed = _printed_at_exit(f"sorted(m for m in {HEAVY!r} if m in sys.modules)",
                                       code, cwd, env)
    assert status in (0, 1), printed
    return eval(printed)  # type: ignore[no-any-return]


def test_the_cli_starts_without_the_heavy_libraries() -> None:
    # `digest --help` loads click and rich only; each command imports what it uses.
    assert _loaded("import digest.edges.cli") == []
    assert _loaded(_main(["--help"])) == []


def test_read_commands_load_no_pipeline_libraries(tmp_path: Path) -> None:
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "digest", "lists", "create", "--list", "weekly"],
                   cwd=tmp_path, env=env, capture_output=True, check=True, timeout=60)
    for command in (["lists", "list"], ["issues", "list"], ["config"],
                    ["subscribers", "show", "a@example.org"]):
        # An existing database at the newest schema costs one query, not Alembic.
        loaded = set(_loaded(_main(command), cwd=tmp_path, env=env))
        assert loaded <= {"sqlalchemy"}, (command, loaded)


def test_a_command_ends_its_process_with_everything_written(tmp_path: Path) -> None:
    # What the command wrote and its exit status survive the end of its process.
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin",
           "DIGEST_LOG_FORMAT": "json"}

    def digest(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "digest", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    for n in range(8):
        created = digest("lists", "create", "--list", f"list{n}", "--title", f"List {n}")
        assert created.returncode == 0, created.stderr
    # SQLite's write-ahead log was folded back in: the database was closed properly.
    assert not (tmp_path / "x.db-wal").exists()
    listed = digest("lists", "list")
    assert listed.returncode == 0 and all(f"list{n}" in listed.stdout for n in range(8))
    missing = digest("lists", "show", "--list", "nope")
    assert missing.returncode == 1 and "no list named 'nope'" in missing.stderr
    # A log line written just before the end (JSON, to standard error) is there whole.
    collected = digest("collect")
    assert collected.returncode == 0, collected.stderr
    assert collected.stderr.strip().endswith("}"), collected.stderr


def test_away_from_a_terminal_log_lines_and_messages_stay_whole(
        tmp_path: Path, feed_server: FeedServer) -> None:
    # Run by cron or with its output in a file: each log line is one line with its time
    # and level, and a long feed URL is whole in the log and in the summary, for grep.
    broken = feed_server.add("/" + "/".join(["a-rather-long-folder"] * 5) + "/feed.xml",
                             Route(status=503))
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin"}

    def digest(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "digest", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    assert digest("feeds", "add", broken).returncode == 0
    collected = digest("collect")
    assert collected.returncode == 0, collected.stderr
    [warning] = [line for line in collected.stderr.splitlines() if "WARNING" in line]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING feed (\S+) failed: HTTP 503.*",
                        warning)[1] == broken, collected.stderr
    assert f"failed {broken}: HTTP 503" in collected.stdout + collected.stderr


def test_an_import_away_from_a_terminal_logs_its_progress_in_tenths(tmp_path: Path) -> None:
    # The file's size gives the estimate: a log line per tenth read, none claiming the
    # end before it, and the exact count last.
    with open(tmp_path / "people.csv", "w", encoding="utf-8") as out:
        out.write("email,name,keywords\n")
        out.writelines(f"reader.{i}@example.org,Reader {i},Iran\n" for i in range(60_000))
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin"}
    for argv in (["lists", "create", "--list", "weekly"],
                 ["subscribers", "import", "people.csv", "--list", "weekly"]):
        done = subprocess.run([sys.executable, "-m", "digest", *argv], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert "60000 rows: 60000 added" in done.stdout
    counts = [tuple(map(int, m.groups())) for m in
              re.finditer(r"INFO +Importing people\.csv: (\d+) of (\d+)", done.stderr)]
    assert len(counts) >= 5, done.stderr
    assert counts[-1] == (60_000, 60_000)
    assert all(rows < 60_000 and 50_000 <= expected <= 70_000 for rows, expected in
               counts[:-1]), counts


def test_an_import_from_a_pipe_keeps_its_rejects_in_the_working_folder(tmp_path: Path) -> None:
    # `digest subscribers import <(…)`: the input is /dev/fd/N, which has no size to
    # estimate from and no folder to write beside.
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin"}
    digest = [sys.executable, "-m", "digest"]
    assert subprocess.run([*digest, "lists", "create", "--list", "weekly"], cwd=tmp_path, env=env,
                          capture_output=True, timeout=60).returncode == 0
    read_end, write_end = os.pipe()
    with subprocess.Popen([*digest, "subscribers", "import", f"/dev/fd/{read_end}", "--list",
                           "weekly"], cwd=tmp_path, env=env, pass_fds=(read_end,),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        os.close(read_end)
        with os.fdopen(write_end, "w") as feed:
            feed.write("email,name\nann@example.org,Ann\nnot-an-address,Bo\n")
        printed, logged = child.communicate(timeout=60)
    assert child.returncode == 0, logged
    assert "2 rows: 1 added" in printed and "line 3: 'not-an-address'" in printed
    rejects = tmp_path / f"{read_end}.rejects.csv"
    assert f"Rejected rows are in {rejects}." in printed
    assert "not-an-address,Bo" in rejects.read_text(encoding="utf-8")


def test_the_cycle_collector_runs_in_every_command(tmp_path: Path) -> None:
    # Collecting less often while modules load, it must still run through long work (a
    # send, an import, `digest serve`), or their cyclic garbage would pile up.
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin"}
    for command in (["lists", "create", "--list", "weekly"], ["lists", "list"], ["--help"]):
        status, printed = _printed_at_exit(
            "'collecting', gc.isenabled(), gc.get_threshold()[0]", _main(command),
            cwd=tmp_path, env=env)
        assert status == 0, printed
        assert printed == f"collecting True {YOUNGEST_ROUND}", (command, printed)


def test_a_table_off_a_terminal_is_printed_whole(tmp_path: Path) -> None:
    # `digest lists list | cat`: no heading or cell cut to fit 80 columns.
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin"}
    title = "The Weekly Recap of the Middle East Desk, in English and in Arabic"
    for argv in (["lists", "create", "--list", "weekly", "--title", title], ["lists", "list"]):
        done = subprocess.run([sys.executable, "-m", "digest", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    [heading] = [line for line in done.stdout.splitlines() if "name" in line]
    assert all(word in heading for word in ("unsubscribed", "complained", "bounced"))
    assert title in done.stdout


def _listings(runner: CliRunner, feed_server: FeedServer) -> dict[str, list[str]]:
    """A desk with one of everything; each listing command with the keys of its rows."""
    date = format_datetime(datetime.now(UTC) - timedelta(days=1))
    url = feed_server.add("/f.xml", body=rss([
        {"title": "Recap: Iran Moves in Syria", "guid": "1", "link": "https://n.example/1",
         "date": date, "tags": ["Iran"]}]))
    ok(runner, "feeds", "add", url, "--name", "=HYPERLINK(\"https://evil.example\")")
    ok(runner, "lists", "create", "--list", "weekly")
    ok(runner, "subscribers", "add", "ann@example.org", "--list", "weekly", "--keywords",
       "Iran;Syria")
    ok(runner, "send", "--list", "weekly")
    ok(runner, "schedules", "add", "monday", "--list", "weekly", "--cron", "0 8 * * mon",
       "--timezone", "UTC")
    ok(runner, "schedules", "run", "monday")
    result = runner.invoke(cli, ["editors", "add", "layla", "--password-stdin"],
                           input="a long enough password\n")
    assert result.exit_code == 0, result.output
    return {
        "feeds list": ["id", "name", "url", "last_fetched_at", "status", "error", "entries",
                       "skipped_by_last_read"],
        "lists list": ["name", "title", "pending", "active", "paused", "unsubscribed",
                       "bounced", "complained"],
        "subscribers list --list weekly": ["email", "name", "status", "keywords", "since"],
        "issues list": ["id", "list", "number", "subject", "status", "created_at",
                        "accepted", "failed", "uncertain"],
        "schedules list": ["name", "list", "expression", "timezone", "paused", "next_fires",
                           "skip_empty", "approval_wait_minutes", "misfire_grace_minutes"],
        "schedules history monday": ["slot", "started_at", "finished_at", "issue", "counts",
                                     "status", "message", "trigger", "attempts"],
        "editors list": ["name", "last_sign_in"],
    }


def test_every_listing_prints_json_and_csv(runner: CliRunner, feed_server: FeedServer) -> None:
    import csv
    import io
    import json
    for command, keys in _listings(runner, feed_server).items():
        rows = json.loads(ok(runner, *command.split(), "--json"))
        assert rows and all(list(row) == keys for row in rows), (command, rows)
        [header, *lines] = list(csv.reader(io.StringIO(ok(runner, *command.split(), "--csv"))))
        assert header == keys and len(lines) == len(rows), command
        both = runner.invoke(cli, [*command.split(), "--json", "--csv"])
        assert both.exit_code == 2 and "--json and --csv are alternatives" in both.output
    [feed] = json.loads(ok(runner, "feeds", "list", "--json"))
    assert feed["entries"] == 1 and feed["status"] == "ok" and feed["error"] is None
    [person] = json.loads(ok(runner, "subscribers", "list", "--list", "weekly", "--json"))
    assert person["keywords"] == ["Iran", "Syria"] and person["status"] == "active"
    [issue] = json.loads(ok(runner, "issues", "list", "--json"))
    assert issue["accepted"] == 1 and issue["list"] == "weekly"
    [schedule] = json.loads(ok(runner, "schedules", "list", "--json"))
    assert len(schedule["next_fires"]) == 3 and schedule["approval_wait_minutes"] is None
    # A feed's name a spreadsheet would run is quoted, as in a subscribers export.
    [_, cells] = list(csv.reader(io.StringIO(ok(runner, "feeds", "list", "--csv"))))
    assert cells[1] == "'=HYPERLINK(\"https://evil.example\")"
    # Where the table shows "-" for nothing skipped, the CSV cell is empty, not "'-".
    assert "'-" not in cells and "-" not in cells
    assert "'Iran; Syria'" not in ok(runner, "subscribers", "list", "--list", "weekly", "--csv")
    # Empty listings are still read by a script.
    ok(runner, "lists", "create", "--list", "empty")
    assert json.loads(ok(runner, "subscribers", "list", "--list", "empty", "--json")) == []
    assert ok(runner, "subscribers", "list", "--list", "empty", "--csv").strip() == \
        "email,name,status,keywords,since"


def test_counts_are_pluralized(runner: CliRunner, feed_server: FeedServer) -> None:
    date = format_datetime(datetime.now(UTC) - timedelta(days=1))
    url = feed_server.add("/f.xml", body=rss([
        {"title": "Recap: Iran Moves in Syria", "guid": "1", "link": "https://n.example/1",
         "date": date, "tags": ["Iran"]}]))
    ok(runner, "feeds", "add", url)
    ok(runner, "lists", "create", "--list", "weekly")
    ok(runner, "subscribers", "add", "ann@example.org", "--list", "weekly")
    assert "Collected 1 feed: 1 new entry (1 read" in ok(runner, "collect")
    previewed = ok(runner, "preview", "--list", "weekly")
    assert "1 entry in 1 section," in previewed
    assert "1 subscriber." in ok(runner, "subscribers", "list", "--list", "weekly")
    assert "lead up to 300 characters" in ok(runner, "lists", "show", "--list", "weekly")
    ok(runner, "subscribers", "add", "bo@example.org", "--list", "weekly")
    assert "2 subscribers." in ok(runner, "subscribers", "list", "--list", "weekly")


def test_db_names_the_database_over_the_environment_and_the_file(
        runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "digest.toml").write_text(f'database_url = "sqlite:///{tmp_path}/file.db"\n',
                                          encoding="utf-8")
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path}/env.db"}
    result = runner.invoke(cli, ["--db", "flag.db", "lists", "create", "--list", "weekly"],
                           env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "flag.db").exists()
    assert not (tmp_path / "env.db").exists() and not (tmp_path / "file.db").exists()
    import json
    settings = json.loads(ok(runner, "--db", "flag.db", "config", "--json"))
    assert {"setting": "database_url", "value": f"sqlite:///{tmp_path}/flag.db",
            "source": "command line"} in settings
    assert "weekly" in runner.invoke(cli, ["--db", "flag.db", "lists", "list"], env=env).output
    # Without --db, the environment wins over the file, as before.
    assert "weekly" not in runner.invoke(cli, ["lists", "list"], env=env).output
    both = runner.invoke(cli, ["--db", "a.db", "--set", "database_url=sqlite:///b.db",
                               "lists", "list"])
    assert both.exit_code == 2 and "give one of them" in both.output
    # A path that looks like a URL's query or escapes names that file and no other.
    odd = "odd?mode=ro%2F.db"
    assert runner.invoke(cli, ["--db", odd, "lists", "create", "--list", "odd"]).exit_code == 0
    assert (tmp_path / odd).exists() and not (tmp_path / "odd").exists()
    assert "odd" in runner.invoke(cli, ["--db", odd, "lists", "list"]).output


def test_a_list_looks_back_as_far_as_it_says(runner: CliRunner,
                                             feed_server: FeedServer) -> None:
    def dated(days: int) -> str:
        return format_datetime(datetime.now(UTC) - timedelta(days=days))

    url = feed_server.add("/f.xml", body=rss([
        {"title": "Recap: This Week", "guid": "1", "link": "https://n.example/1",
         "date": dated(1), "tags": ["Iran"]},
        {"title": "Recap: Three Weeks Ago", "guid": "2", "link": "https://n.example/2",
         "date": dated(20), "tags": ["Iran"]},
        {"title": "Recap: Four Months Ago", "guid": "3", "link": "https://n.example/3",
         "date": dated(120), "tags": ["Iran"]}]))
    ok(runner, "feeds", "add", url)
    ok(runner, "lists", "create", "--list", "weekly")
    ok(runner, "lists", "create", "--list", "monthly", "--lookback-days", "30")
    ok(runner, "lists", "create", "--list", "yearly")
    edited = ok(runner, "lists", "edit", "--list", "yearly", "--lookback-days", "365")
    assert "issues look back 365 days." in edited
    # The longest list's window decides what a collect keeps, past max_entry_age_days.
    assert "3 new entries" in ok(runner, "collect")
    assert "1 entry in" in ok(runner, "preview", "--list", "weekly", "--out", "w.html")
    assert "2 entries in" in ok(runner, "preview", "--list", "monthly", "--out", "m.html")
    assert "3 entries in" in ok(runner, "preview", "--list", "yearly", "--out", "y.html")
    assert "Issues look back 30 days." in ok(runner, "lists", "show", "--list", "monthly")
    assert "Issues look back 7 days (the lookback_days setting)." in ok(
        runner, "lists", "show", "--list", "weekly")
    ok(runner, "lists", "edit", "--list", "monthly", "--lookback-days", "0")
    assert "1 entry in" in ok(runner, "preview", "--list", "monthly", "--out", "m.html")
    wrong = runner.invoke(cli, ["lists", "edit", "--list", "weekly", "--lookback-days", "-1"])
    assert wrong.exit_code == 2 and "0<=x<=3650" in wrong.output


def test_a_table_shows_control_and_invisible_characters_as_escapes(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A cell holding others' text (a keyword in a subject, a feed's error) can't move
    the cursor, clear the screen or reverse the line it is printed on."""
    from digest.edges.cli.output import Column, RowFormat, print_rows
    subject = "The Weekly Recap: Iran\u202e, \x1b[2Jcleared\u200b"
    print_rows([Column("subject")], [{"subject": subject}], RowFormat.TABLE)
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\u202e" not in shown and "\u200b" not in shown
    assert "Iran\\u202e, \\x1b[2Jcleared\\u200b" in shown
