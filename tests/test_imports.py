"""CSV import and export: broken input is reported by line and never loses the rest."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.edges.cli import cli
from digest.services.storage.context import Context
from subscribers.imports import export_csv, import_csv
from subscribers.lists import create_list
from subscribers.subscriptions import (
    add_subscriber,
    forget_subscriber,
    list_subscriptions,
    remove_subscriber,
)

MESSY = (
    "\ufeffEmail,Name,Keywords\r\n"
    "alice@example.org,Alice,Iran;Syria\r\n"
    "BOB@Example.NET,Bob,\r\n"
    "not-an-address,Nobody,\r\n"
    "\"carol@example.org,Carol\r\n"          # an unclosed quote swallows what follows
    "dave@example.org,Dave,Iran\r\n"
    "\r\n"
    "alice@EXAMPLE.org,Alice Again,Ukraine\r\n"  # a duplicate, in another case
    "left@example.org,Left,\r\n"
    "forgotten@example.org,Forgotten,\r\n"
    "erin@example.org\r\n"                   # fewer columns is fine
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding, "surrogateescape"))
    return path


def test_import_reports_every_reject_and_keeps_everyone_else(ctx: Context,
                                                             tmp_path: Path) -> None:
    create_list(ctx.db, "weekly")
    add_subscriber(ctx.db, "weekly", "left@example.org")
    remove_subscriber(ctx.db, "weekly", "left@example.org")
    forget_subscriber(ctx.db, "forgotten@example.org")
    source = write(tmp_path / "people.csv", MESSY)
    report = import_csv(ctx.db, "weekly", source)
    emails = {s.email: s for s in list_subscriptions(ctx.db, "weekly")}
    assert {e for e, s in emails.items() if s.status == "active"} == {
        "alice@example.org", "BOB@example.net", "dave@example.org", "erin@example.org"}
    assert emails["alice@example.org"].keywords == ["Ukraine"]  # the later row wins
    assert emails["alice@example.org"].name == "Alice Again"
    assert emails["left@example.org"].status == "unsubscribed"  # never revived
    assert "forgotten@example.org" not in emails
    assert report.added == 4 and report.suppressed == 2
    lines = dict(report.rejected)
    assert "not a valid address" in lines[4]
    # The unclosed quote spoils its own line only; Dave on the next line is imported.
    assert lines[5] == "broken quoting (a quote is never closed)"
    assert set(lines) == {4, 5}
    assert report.rejects_path == tmp_path / "people.rejects.csv"
    with open(report.rejects_path, encoding="utf-8") as handle:
        rejected_rows = list(csv.reader(handle))
    assert rejected_rows[0] == ["line", "reason", "fields"]
    assert len(rejected_rows) == 1 + len(report.rejected)
    # The same file again changes nothing.
    again = import_csv(ctx.db, "weekly", source)
    assert (again.added, again.updated) == (0, 0)
    assert again.unchanged == 4 and again.suppressed == 2


def test_not_utf8_rows_are_refused_alone(ctx: Context, tmp_path: Path) -> None:
    create_list(ctx.db, "weekly")
    path = tmp_path / "latin1.csv"
    path.write_bytes("email,name\nok@example.org,Zoë\nbad@example.org,".encode()
                     + "Zoë".encode("latin-1") + b"\n")
    report = import_csv(ctx.db, "weekly", path)
    assert report.added == 1
    assert report.rejected == [(3, "not UTF-8 text")]


def test_missing_email_column_names_the_file(ctx: Context, tmp_path: Path) -> None:
    create_list(ctx.db, "weekly")
    path = write(tmp_path / "bad.csv", "mail,name\na@example.org,A\n")
    from digest.errors import InvalidInputError
    with pytest.raises(InvalidInputError, match=r"bad.csv line 1: no 'email' column"):
        import_csv(ctx.db, "weekly", path)


def test_export_round_trips(ctx: Context, tmp_path: Path) -> None:
    create_list(ctx.db, "weekly")
    import_csv(ctx.db, "weekly", write(tmp_path / "in.csv", MESSY))
    with open(tmp_path / "out.csv", "w", encoding="utf-8", newline="") as handle:
        assert export_csv(ctx.db, "weekly", handle) == 6
    create_list(ctx.db, "copy")
    report = import_csv(ctx.db, "copy", tmp_path / "out.csv")
    assert report.added == 6 and not report.rejected
    original = {(s.email, s.name, tuple(s.keywords))
                for s in list_subscriptions(ctx.db, "weekly", "active")}
    copied = {(s.email, s.name, tuple(s.keywords))
              for s in list_subscriptions(ctx.db, "copy", "active")}
    assert original == copied


def test_cli_import_and_export(runner: CliRunner, tmp_path: Path) -> None:
    assert runner.invoke(cli, ["lists", "create", "--list", "weekly"]).exit_code == 0
    write(tmp_path / "people.csv", MESSY)
    result = runner.invoke(cli, ["subscribers", "import", "people.csv", "--list", "weekly"])
    assert result.exit_code == 0, result.output
    assert "6 added" in result.output and "line 4:" in result.output
    assert "line 5: broken quoting" in result.output
    assert "people.rejects.csv" in result.output
    result = runner.invoke(cli, ["subscribers", "export", "--list", "weekly"])
    assert result.output.splitlines()[0] == "email,name,keywords"
    assert "alice@example.org,Alice Again,Ukraine" in result.output


def test_a_quoted_newline_is_one_record(ctx: Context, tmp_path: Path) -> None:
    create_list(ctx.db, "weekly")
    path = write(tmp_path / "multi.csv",
                 'email,name\n"a@example.org","Ann\nMarie"\nb@example.org,Bea\n')
    report = import_csv(ctx.db, "weekly", path)
    assert report.added == 2 and not report.rejected
    names = {s.email: s.name for s in list_subscriptions(ctx.db, "weekly")}
    # One record, its name one line (a name goes in a header: no line break in it).
    assert names == {"a@example.org": "Ann Marie", "b@example.org": "Bea"}


def test_imported_people_carry_the_time_of_the_import(any_ctx: Context, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from digest.services.storage.subscriber_models import Subscriber, Subscription
    create_list(any_ctx.db, "weekly")
    path = tmp_path / "people.csv"
    path.write_text("email,keywords\nA@Example.org,Iran;Syria\n", encoding="utf-8")
    before = datetime.now(UTC) - timedelta(seconds=1)
    import_csv(any_ctx.db, "weekly", path)
    with any_ctx.db.session() as s:
        person = s.scalars(select(Subscriber)).one()
        sub = s.scalars(select(Subscription)).one()
    assert before <= person.created_at <= datetime.now(UTC)
    assert sub.created_at == sub.confirmed_at == sub.updated_at == person.created_at
    assert sub.created_at.tzinfo is UTC and sub.segment == "iran;syria"


def test_awkward_text_arrives_exactly_on_each_database(any_ctx: Context,
                                                       tmp_path: Path) -> None:
    # PostgreSQL takes new rows through COPY's text format: backslashes and quotes in
    # names and keywords must arrive as written; tabs and line breaks, which end COPY's
    # fields and rows, arrive as the one space a one-line field makes of them. A NUL,
    # which no database text column holds, is refused with its row alone.
    create_list(any_ctx.db, "weekly")
    path = write(tmp_path / "awkward.csv",
                 'email,name,keywords\n'
                 'tab@example.org,"Tab\there",Iran\n'
                 'slash@example.org,Back\\slash \\N,"Syria;\\t"\n'
                 '"quote@example.org","Ann ""Q"" \nMarie",\n'
                 'arabic@example.org,ليلى,سوريا\n'
                 'nul@example.org,Bad\x00Name,\n'
                 'after@example.org,After,\n')
    report = import_csv(any_ctx.db, "weekly", path)
    assert report.added == 5
    assert [(line, reason) for line, reason in report.rejected] == [
        (7, "a NUL character in the row")]
    rows = {s.email: (s.name, s.keywords) for s in list_subscriptions(any_ctx.db, "weekly")}
    assert rows == {
        "tab@example.org": ("Tab here", ["Iran"]),
        "slash@example.org": ("Back\\slash \\N", ["Syria", "\\t"]),
        "quote@example.org": ('Ann "Q" Marie', []),
        "arabic@example.org": ("ليلى", ["سوريا"]),
        "after@example.org": ("After", []),
    }
    again = import_csv(any_ctx.db, "weekly", path)  # idempotent
    assert again.added == 0 and again.unchanged == 5


def test_keywords_chosen_on_the_preferences_page_compare_as_the_import_reads_them(
        any_ctx: Context, tmp_path: Path) -> None:
    # The import compares stored keyword lists however they were written (here by the
    # preferences page, through the ORM): the same choice is unchanged, another updates.
    from subscribers.preferences import save_preferences
    create_list(any_ctx.db, "weekly")
    added = add_subscriber(any_ctx.db, "weekly", "ayla@example.org", name="Ayla")
    assert added.subscription_id is not None
    save_preferences(any_ctx.db, added.subscription_id, keywords=["Türkiye", "سوريا"],
                     paused=False)
    same = write(tmp_path / "same.csv", "email,name,keywords\nayla@example.org,Ayla,"
                 "Türkiye;سوريا\n")
    assert import_csv(any_ctx.db, "weekly", same).unchanged == 1
    other = write(tmp_path / "other.csv", "email,keywords\nAYLA@example.org,Iran\n")
    assert import_csv(any_ctx.db, "weekly", other).updated == 1
    [sub] = list_subscriptions(any_ctx.db, "weekly")
    assert sub.keywords == ["Iran"]


def test_a_long_file_in_many_chunks_keeps_file_order_per_person(
        any_ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 3 addresses: on PostgreSQL two connections store them side by side,
    # sharing the people out by address. A person's later row still wins, wherever it
    # falls, and someone who left is never re-added.
    import zlib
    from collections import Counter

    from subscribers import imports
    monkeypatch.setattr(imports, "CHUNK", 3)
    create_list(any_ctx.db, "weekly")
    add_subscriber(any_ctx.db, "weekly", "left@example.org")
    remove_subscriber(any_ctx.db, "weekly", "left@example.org")
    people = [f"Reader{i}@example.org" for i in range(12)]
    # Each part meets at least a chunk's worth of these people in turn, so no chunk holds
    # a person twice (which would merge rows and change the counts below).
    per_part = Counter(zlib.crc32(p.casefold().encode()) % 2
                       for p in [*people, "left@example.org"])
    assert min(per_part[0], per_part[1]) >= 3
    lines = ["email,name,keywords"]
    for round_ in range(50):  # thirteen people in turn: each chunk meets a person again
        lines += [f"{person},Reader {i} v{round_},K{round_}"
                  for i, person in enumerate(people)]
        lines.append(f"left@example.org,Left v{round_},")
    path = write(tmp_path / "long.csv", "\n".join(lines) + "\nnot-an-address,x,\n")
    seen: list[tuple[int, int]] = []
    report = import_csv(any_ctx.db, "weekly", path,
                        on_progress=lambda rows, expected: seen.append((rows, expected)))
    assert (report.added, report.suppressed) == (12, 50)
    # Rows met again in later chunks update what the earlier ones stored.
    assert (report.updated, report.unchanged) == (12 * 49, 0)
    assert [line for line, _ in report.rejected] == [652]
    rows = {s.email: (s.name, s.keywords, s.status)
            for s in list_subscriptions(any_ctx.db, "weekly")}
    assert rows == {**{person: (f"Reader {i} v49", ["K49"], "active")
                       for i, person in enumerate(people)},
                    "left@example.org": ("", [], "unsubscribed")}
    # Rows read so far, in order, each with an estimate of the whole; exact at the end.
    assert [rows for rows, _ in seen] == sorted(rows for rows, _ in seen)
    assert all(expected >= rows for rows, expected in seen) and seen[-1] == (651, 651)
    # Again: each row in turn is stored over the one before, and the last still wins.
    again = import_csv(any_ctx.db, "weekly", path)
    assert (again.added, again.updated, again.unchanged, again.suppressed) == (
        0, 12 * 50, 0, 50)
    assert {s.email: (s.name, s.keywords, s.status)
            for s in list_subscriptions(any_ctx.db, "weekly")} == rows


def test_each_address_goes_to_one_part_in_file_order() -> None:
    # What keeps a person's rows in file order when two connections store side by side.
    from subscribers.imports import ImportReport, _chunks, _Row
    rows = [_Row(line, f"Reader{line % 7}@Example.org" if line % 2 else
                 f"reader{line % 7}@example.ORG", f"v{line}", ()) for line in range(2, 400)]
    parts_of: dict[str, set[int]] = {}
    lines_of: dict[tuple[str, int], list[int]] = {}
    for part, chunk, _ in _chunks(iter(rows), ImportReport(), 2):
        for key, row in chunk.items():
            parts_of.setdefault(key, set()).add(part)
            lines_of.setdefault((key, part), []).append(row.line)
    assert len(parts_of) == 7 and all(len(p) == 1 for p in parts_of.values())
    assert {p for ps in parts_of.values() for p in ps} == {0, 1}
    assert all(lines == sorted(lines) for lines in lines_of.values())


def test_a_failing_chunk_stops_the_import_and_names_the_error() -> None:
    from subscribers.imports import _fan_out

    produced: list[int] = []

    def items() -> Iterator[tuple[int, int, int]]:
        for n in range(10_000):
            produced.append(n)
            yield n % 2, n, n

    def handle(part: int, item: int, n: int) -> None:
        if item == 7:
            raise RuntimeError("chunk 7: the database refused it")

    with pytest.raises(RuntimeError, match="chunk 7"):
        _fan_out(items(), 2, handle)
    assert len(produced) < 100  # the reader stopped too: it does not read on
