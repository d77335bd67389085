"""The commands of the pipeline and the audience: config, db, feeds, collect, preview,
send, status, issues, lists, subscribers, demo. Each parses its options, calls one
function, prints; each imports what it uses when it runs, so that start-up stays cheap.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click
from rich.markup import escape
from rich.table import Table

from digest.core.words import counted
from digest.edges.cli.base import (
    _interactive,
    boundary,
    err,
    list_option,
    out,
    progress_bar,
    state,
)
from digest.edges.cli.output import Column, RowFormat, print_rows, print_table, row_formats
from digest.errors import InvalidInputError
from digest.services.feeds import tls
from digest.services.storage.states import SubscriptionStatus, WhenNothingMatches
from digest.settings import describe

if TYPE_CHECKING:
    from digest.services.building.drafts import Draft
    from digest.services.delivery.sending import SendReport
    from digest.services.feeds.collect import CollectReport
    from digest.services.storage.context import Context


# --- settings and database ----------------------------------------------------------

@click.command("config")
@click.option("--describe", "with_help", is_flag=True, help="Show each setting's help too.")
@click.option("--markdown", is_flag=True, help="Print every setting as a Markdown table.")
@row_formats
@boundary
def config_cmd(with_help: bool, markdown: bool, row_format: RowFormat) -> None:
    """Print the effective settings (secrets masked) and where each came from."""
    from digest.settings import declared, markdown_table
    if markdown:
        click.echo(markdown_table(), nl=False)
        return
    loaded = state().loaded
    helps = {info.name: info.help for info in declared()}
    columns = [Column("setting"), Column("value"), Column("source", "from"),
               *([Column("help")] if with_help else [])]
    print_rows(columns, ({"setting": name, "value": value, "source": source,
                          "help": helps[name]} for name, value, source in describe(loaded)),
               row_format)
    if loaded.config_path is None and row_format is RowFormat.TABLE:
        out.print("No digest.toml found; using defaults and DIGEST_* variables.")


@click.group()
def db() -> None:
    """The database: upgrade, backup, check."""


@db.command("upgrade")
@boundary
def db_upgrade() -> None:
    """Apply pending migrations (done automatically on first use too)."""
    from digest.services.storage.db import make_engine, upgrade
    engine = make_engine(state().loaded.settings.database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    out.print(f"Database {engine.url.render_as_string()} is up to date.")


@db.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace PATH if it exists.")
@boundary
def db_backup(path: Path, overwrite: bool) -> None:
    """Copy the database to PATH, consistently, while the service runs (SQLite).

    On PostgreSQL, prints the pg_dump command to use instead and exits with status 1.
    """
    from digest.services.operations.backup import backup
    from digest.services.storage.db import make_engine
    engine = make_engine(state().loaded.settings.database_url)
    try:
        size = backup(engine, path, overwrite=overwrite)
    finally:
        engine.dispose()
    out.print(f"Backed up {engine.url.render_as_string()} to {path} ({size / 1e6:,.1f} MB); "
              "the copy passed SQLite's integrity check.")


@db.command("check")
@boundary
def db_check() -> None:
    """Check the database's integrity and schema; exit 1 on any problem."""
    from digest.services.operations.backup import check
    from digest.services.storage.db import make_engine
    engine = make_engine(state().loaded.settings.database_url)
    try:
        report = check(engine)
    finally:
        engine.dispose()
    if report.ok:
        out.print(f"{engine.url.render_as_string()}: schema {report.revision}, every table "
                  "present" + (", integrity ok." if engine.dialect.name == "sqlite" else "."))
        return
    for problem in report.problems:
        err.print(f"[red]problem:[/red] {problem}", markup=True)
    sys.exit(1)


# --- feeds ---------------------------------------------------------------------------

@click.group()
def feeds() -> None:
    """Feeds: add, import, export, list, remove."""


@feeds.command("add")
@click.argument("url")
@click.option("--name", help="A short name shown in emails and lists (default: the host).")
@boundary
def feeds_add(url: str, name: str | None) -> None:
    """Add a feed by URL."""
    from digest.services.feeds.collect import add_feed
    from subscribers.fields import one_line
    feed = add_feed(state().ctx.db, url, one_line(name or "", most=200) or None)
    out.print(f"Added feed {feed.name} ({feed.url}).", markup=False)


@feeds.command("import")
@click.argument("path", metavar="FILE", type=click.File("rb"))
@boundary
def feeds_import(path: BinaryIO) -> None:
    """Add every feed FILE names (OPML, as feed readers export; - reads standard input).

    Outlines nested in categories are read too. Each outline that names no feed or a bad
    address is reported with its line and left out; a feed already added (same URL) is
    not added again, so importing a file twice changes nothing.
    """
    from digest.core.opml import read_opml
    from digest.services.feeds.collect import add_feeds
    from subscribers.fields import one_line
    source = "standard input" if path.name == "<stdin>" else path.name
    found = read_opml(path.read(), source=source)
    for line, problem in found.problems:
        err.print(f"  line {line}: {problem}; left out", markup=False)
    done = add_feeds(state().ctx.db, ((o.url, one_line(o.title, most=200) or None)
                                      for o in found.feeds))
    left_out = (f"; {counted(len(found.problems), 'outline')} left out" if found.problems
                else "")
    out.print(f"Read {counted(len(found.feeds), 'feed')} from {source}: "
              f"{len(done.added)} added, {len(done.already)} already there{left_out}.",
              markup=False)


@feeds.command("export")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")
@boundary
def feeds_export(out_path: Path | None) -> None:
    """Write every feed as an OPML 2.0 file, which `digest feeds import` and feed readers
    read."""
    from digest.core.opml import write_opml
    from digest.services.feeds.collect import list_feeds
    from digest.services.storage.db import utcnow
    rows = list_feeds(state().ctx.db)
    document = write_opml(((f.url, f.name) for f in rows), title="recap-digest feeds",
                          created=utcnow())
    if out_path is None:
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
        return
    from digest.services.storage.files import open_private
    with open_private(out_path, "wb") as file:  # feed URLs may carry their readers' keys
        file.write(document)
    err.print(f"Wrote {counted(len(rows), 'feed')} to {out_path}.", markup=False)


@feeds.command("list")
@row_formats
@boundary
def feeds_list(row_format: RowFormat) -> None:
    """List feeds with their last fetch, status, entry count and what it skipped."""
    from digest.services.feeds.collect import list_feeds
    from digest.services.storage.models import describe_skips
    columns = [Column("id"), Column("name"), Column("url"),
               Column("last_fetched_at", "last fetch (UTC)",
                      lambda when: f"{when:%Y-%m-%d %H:%M}" if when else "", "-"),
               Column("status", placeholder="never fetched"),
               Column("error", show=lambda error: error or ""),
               Column("entries"),
               Column("skipped_by_last_read", "skipped by the last read",
                      describe_skips, "-")]
    print_rows(columns, ({"id": f.id, "name": f.name, "url": f.url,
                          "last_fetched_at": f.last_fetched_at, "status": f.last_status,
                          "error": f.last_error, "entries": f.entry_count,
                          "skipped_by_last_read": dict(f.skipped)}
                         for f in list_feeds(state().ctx.db)),
               row_format, empty="No feeds yet. Add one with `digest feeds add URL` or "
                                 "`digest feeds import FILE.opml`.")


@feeds.command("remove")
@click.argument("feed")
@boundary
def feeds_remove(feed: str) -> None:
    """Remove a feed (by id, URL or name); its collected entries stay."""
    from digest.services.feeds.collect import remove_feed
    removed = remove_feed(state().ctx.db, feed)
    out.print(f"Removed feed {removed.name} ({removed.url}).", markup=False)


def print_collect(report: CollectReport) -> None:
    """Summarize a collection, naming every failed feed and why, and counting the entries
    skipped by reason (`--verbose` names each)."""
    from digest.services.storage.models import FeedStatus, describe_skips
    ok = sum(1 for f in report.feeds if f.status == FeedStatus.OK)
    unchanged = sum(1 for f in report.feeds if f.status == FeedStatus.NOT_MODIFIED)
    skipped = describe_skips(report.skipped)
    err.print(f"Collected {counted(len(report.feeds), 'feed')}: "
              f"{counted(report.new, 'new entry', 'new entries')} "
              f"({ok} read, {unchanged} unchanged, {len(report.failed)} failed)"
              + (f"; skipped {skipped}." if skipped else "."))
    for f in report.feeds:
        # Escaped: an error or a warning can quote a feed's own text (an entry's title).
        if f.status == "error":
            err.print(f"  [red]failed[/red] {escape(f.url)}: {escape(f.error or '')}")
        elif f.warning:
            err.print(f"  [yellow]warning[/yellow] {escape(f.url)}: {escape(f.warning)}")


def collect_first(ctx: Context, list_name: str | None = None) -> CollectReport:
    """Collect every feed and say how it went: what `collect` does, and what `send` and
    `preview` do first unless told `--no-collect` (for ``list_name``, which must exist:
    a mistyped list is said before anything is fetched)."""
    if list_name is not None:
        from subscribers.lists import get_list
        with ctx.db.session() as session:
            get_list(session, list_name)
    report = _collect_with_progress(ctx)
    print_collect(report)
    return report


def _collect_with_progress(ctx: Context) -> CollectReport:
    from digest.services.feeds.collect import collect
    with progress_bar("Fetching feeds", enabled=_interactive()) as update:
        total = [0]
        done = [0]

        def started(n: int) -> None:
            total[0] = n
            update(0, n)

        def fetched(_result: object) -> None:
            done[0] += 1
            update(done[0], total[0])

        return collect(ctx.db, ctx.settings, on_start=started, on_fetched=fetched)


@contextmanager
def metrics_file(path: Path | None) -> Iterator[None]:
    """Write this run's metrics to ``path`` at the end (node_exporter's textfile
    collector), also when the run fails; helper processes' counts are added in."""
    if path is None:
        yield
        return
    import os
    import shutil
    import tempfile
    own = None
    # prometheus_client picks one-process or shared mode when first imported; in a fresh
    # process (the CLI's case) the helpers of --jobs share a folder with this one.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and "prometheus_client" not in sys.modules:
        own = tempfile.mkdtemp(prefix="digest-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own
    try:
        yield
    finally:
        from digest.services.telemetry.metrics import write_textfile
        try:
            write_textfile(path)
        except OSError as e:
            err.print(f"[red]could not write --metrics-file {path}:[/red] {e}")
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


METRICS_FILE = click.option(
    "--metrics-file", "metrics_file_path", type=click.Path(dir_okay=False, path_type=Path),
    help="At the end, write this run's metrics here in Prometheus text format (for "
         "node_exporter's textfile collector), also when it fails.")


@click.command("collect")
@METRICS_FILE
@boundary
def collect_cmd(metrics_file_path: Path | None) -> None:
    """Fetch every feed and store new entries."""
    tls.prepare()  # while the database opens and the fetching code loads
    with metrics_file(metrics_file_path):
        collect_first(state().ctx)


# --- issues --------------------------------------------------------------------------

@click.command("preview")
@list_option("The list whose next issue to show.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("preview.html"), show_default=True, help="Where to write the HTML.")
@click.option("--text", "text_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the plain-text part here.")
@click.option("--check-links", is_flag=True,
              help="Also check every link of the issue; exit 1 when one is broken.")
@click.option("--no-collect", is_flag=True, help="Do not fetch feeds first.")
@boundary
def preview_cmd(list_name: str, out_path: Path, text_path: Path | None,
                check_links: bool, no_collect: bool) -> None:
    """Collect, then write the next issue as it would be sent; nothing is sent and no
    issue is recorded."""
    if not no_collect:
        tls.prepare()  # while the building code loads and the database opens
    from digest.services.building.drafts import draft_issue
    from subscribers.lists import get_list
    ctx = state().ctx
    if no_collect:
        with ctx.db.session() as session:
            get_list(session, list_name)
    else:
        collect_first(ctx, list_name)
    draft = draft_issue(ctx, list_name)
    if draft is None:
        out.print(f"Nothing new for list {list_name!r}: no issue to preview"
                  + (" (feeds not fetched: --no-collect)." if no_collect else "."))
        return
    write_preview(ctx, draft, out_path, text_path)
    if check_links and not _links_ok(ctx, draft):
        sys.exit(1)


def _links_ok(ctx: Context, draft: Draft) -> bool:
    """Check the draft's links (our own pages aside); print what is wrong; True if none
    is broken."""
    from digest.services.feeds.linkcheck import check_links, issue_links
    urls = issue_links(draft.rendered.html, ctx.settings.base_url)
    with err.status(f"Checking {counted(len(urls), 'link')}…"):
        results = check_links(urls, allow_private=ctx.settings.fetch_allow_private)
    broken = [r for r in results if r.broken]
    other = [r for r in results if r.state in ("redirect", "unchecked")]
    if broken or other:
        table = Table("link", "state", "detail")
        for r in broken + other:
            table.add_row(r.url, {"broken": "[red]broken[/red]", "redirect": "redirects",
                                  "unchecked": "not checked"}[r.state], r.detail)
        print_table(table)
    out.print(f"Links: {len(results)} checked, {len(broken)} broken, "
              f"{sum(r.state == 'redirect' for r in results)} redirecting.")
    return not broken


def write_preview(ctx: Context, draft: Draft, out_path: Path, text_path: Path | None) -> None:
    """Write a draft's HTML (and text) with a sample recipient's values filled in."""
    from digest.services.building.drafts import write_preview_files
    write_preview_files(ctx, draft, out_path, text_path)
    out.print(f"Issue {draft.number} of {draft.list_name}: {draft.rendered.subject!r}, "
              f"{counted(sum(len(s.entries) for s in draft.sections), 'entry', 'entries')} in "
              f"{counted(len(draft.sections), 'section')}, "
              f"HTML {draft.rendered.html_bytes / 1000:.1f} KB.")
    out.print(f"Wrote {out_path}" + (f" and {text_path}" if text_path else "") + ".")
    for warning in draft.rendered.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")


def print_send(report: SendReport) -> None:
    """The final summary of a send, naming failures."""
    from digest.services.storage.models import DeliveryStatus
    c = report.counts
    pending = c[DeliveryStatus.PENDING]
    err.print(f"Issue {report.number} of {report.list_name} ({report.subject!r}): "
              f"{c[DeliveryStatus.ACCEPTED]} accepted, {c[DeliveryStatus.FAILED]} failed, "
              f"{c[DeliveryStatus.UNCERTAIN]} uncertain, {c[DeliveryStatus.SKIPPED]} skipped"
              + (f", {pending} pending" if pending else "")
              + f"; {report.sent_now} sent by this run.")
    for email, reason in report.failures[:20]:
        err.print(f"  [red]{email}[/red]: {reason}")
    if len(report.failures) > 20:
        err.print(f"  … and more: `digest issues show {report.issue_id}`")
    if c[DeliveryStatus.UNCERTAIN]:
        err.print("Uncertain messages may or may not have gone out; resend them with "
                  "`digest send --list " + report.list_name + " --resend-uncertain`.")


@contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """While inside, SIGTERM sets ``stop`` (a send then stops at its next batch boundary,
    and the next send resumes it) instead of killing the process mid-batch."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("send")
@list_option("The list to send to.")
@click.option("--no-collect", is_flag=True, help="Do not fetch feeds first.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--resend-uncertain", is_flag=True,
              help="Send again to recipients whose delivery is uncertain.")
@click.option("--sandbox", is_flag=True,
              help="SendGrid sandbox mode: requests are validated, nothing is delivered.")
@click.option("--worker", is_flag=True,
              help="Only help send the issue of this list that is being sent (several "
                   "workers on PostgreSQL share its batches); never collect or build one.")
@click.option("--wait-for-issue", type=click.FloatRange(0), default=0.0, metavar="SECONDS",
              help="With --worker: wait up to SECONDS for an issue of the list to start "
                   "being sent.")
@click.option("--jobs", "-j", type=click.IntRange(1, 32), default=1, show_default=True,
              metavar="N", help="Processes that send together (this one plus N-1 workers).")
@METRICS_FILE
@boundary
def send_cmd(list_name: str, no_collect: bool, yes: bool, resend_uncertain: bool,  # noqa: PLR0913 - a click command: one parameter per option
             sandbox: bool, worker: bool, wait_for_issue: float, jobs: int,
             metrics_file_path: Path | None) -> None:
    """Collect, build the next issue of a list and send it to its active subscribers.

    Running it again never sends an issue twice to anyone; an interrupted send resumes.
    Exits with status 1 when any delivery failed or is uncertain.
    """
    with metrics_file(metrics_file_path):
        _send(list_name, no_collect, yes, resend_uncertain, sandbox, worker, wait_for_issue,
              jobs)


def _send(list_name: str, no_collect: bool, yes: bool, resend_uncertain: bool,  # noqa: PLR0913 - the send command's options, passed on
          sandbox: bool, worker: bool, wait_for_issue: float, jobs: int) -> None:
    if not no_collect and not worker:
        tls.prepare()  # while the pipeline loads and the database opens
    from digest.services.delivery.workers import SendHelpers
    from digest.services.pipeline import RunEvents, RunRequest, run_list
    ctx = state().ctx
    interactive = _interactive()

    # A worker or a sandbox run starts no helpers of its own.
    helpers = SendHelpers(list_name, 0 if worker or sandbox else jobs - 1,
                          config_path=state().config_path, overrides=state().overrides)
    sending = [False]  # whether an issue started going out
    stop = threading.Event()

    def start_helpers() -> None:
        helpers.start()

    def confirm(draft: Draft, audience: int) -> bool:
        people = counted(audience, "subscriber")
        go = yes or not interactive or click.confirm(
            f"Send issue {draft.number} {draft.rendered.subject!r} "
            f"({counted(sum(len(s.entries) for s in draft.sections), 'entry', 'entries')}) "
            f"to {people} of "
            f"{list_name}?", err=True)
        if go:
            start_helpers()  # they start up while the issue and its deliveries are recorded
        return go

    if not no_collect and not worker:
        collect_first(ctx, list_name)
    with progress_bar(f"Sending {list_name}", enabled=interactive) as update, \
            _stop_on_sigterm(stop):

        class Events(RunEvents):
            """The terminal's part: ask, draw the bar, start helpers, stop on SIGTERM."""

            def confirm(self, draft: Draft, audience: int) -> bool:
                return confirm(draft, audience)

            def issue_started(self, issue_id: int) -> None:
                sending[0] = True
                start_helpers()

            def progress(self, done: int, total: int) -> None:
                update(done, total)

            def should_stop(self) -> bool:
                return stop.is_set()

        request = RunRequest(list_name, collect_first=False, resend_uncertain=resend_uncertain,
                             sandbox=sandbox, join_only=worker, wait_for_issue=wait_for_issue)
        with helpers:
            result = run_list(ctx, request, Events())
    for failed in helpers.failures if sending[0] else []:
        err.print(f"[yellow]a worker exited with status {failed.returncode}:[/yellow] "
                  f"{escape(failed.stderr)}")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    if result.declined:
        err.print("Not sent.")
        return
    if result.send is None:
        err.print(f"No issue of {list_name!r} is being sent; nothing to do." if worker else
                  f"Nothing new for list {list_name!r} since its last issue; nothing sent.")
        return
    if result.resumed:
        err.print(f"Resumed issue {result.send.number}, whose send had been interrupted.")
    print_send(result.send)
    if result.send.stopped:
        err.print(f"Stopped before the end; `digest send --list {list_name}` resumes it.")
    if not result.send.ok or result.send.stopped:
        sys.exit(1)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print it as one JSON object.")
@boundary
def status_cmd(as_json: bool) -> None:
    """The service at a glance: database, feeds, schedules, lists, and what needs a person.

    Exits with status 1 when something needs a person (uncertain deliveries, a feed
    failing for 3 days or more, an issue held for approval, a stopped send).
    """
    from digest.services.operations.status import gather
    from digest.services.storage.models import DeliveryStatus, describe_skips
    status = gather(state().ctx)
    if as_json:
        import json
        click.echo(json.dumps(status.as_json(), ensure_ascii=False, indent=2))
        sys.exit(0 if status.healthy else 1)

    def when(value: datetime | None) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else "-"

    head = "[green]at head[/green]" if status.schema_at_head else "[red]behind[/red]"
    out.print(f"[bold]Database[/bold] {status.database} ({status.backend}), schema "
              f"{status.schema} {head}")
    feeds_table = Table("feed", "last success (UTC)", "failures in a row", "last error",
                        "entries this week", "skipped by the last read", title="Feeds",
                        title_justify="left")
    for f in status.feeds:
        # Escaped: a name or an error can hold a feed's own text.
        feeds_table.add_row(escape(f"{f.name}\n{f.url}"), when(f.last_success),
                            f"[red]{f.failures}[/red] since {when(f.failing_since)}"
                            if f.failures else "0", escape(f.last_error or ""),
                            str(f.entries_this_week), describe_skips(f.skipped) or "-")
    print_table(feeds_table)
    if status.schedules:
        sched = Table("schedule", "list", "next fire", "last slot", "last outcome",
                      title="Schedules", title_justify="left")
        for s in status.schedules:
            sched.add_row(s.name, s.list, "paused" if s.paused else
                          (f"{s.next_fire:%a %Y-%m-%d %H:%M %Z}" if s.next_fire else "-"),
                          (s.last_slot or "-").replace("T", " "),
                          (s.last_outcome or "never ran")
                          + (f": {s.last_message}" if s.last_message else ""))
        print_table(sched)
    lists_table = Table("list", SubscriptionStatus.ACTIVE, "unconfirmed", "last issue", "status",
                        "when (UTC)", DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED,
                        DeliveryStatus.UNCERTAIN, title="Lists", title_justify="left")
    for li in status.lists:
        lists_table.add_row(li.name, str(li.active), str(li.unconfirmed),
                            str(li.last_issue or "-"), li.last_issue_status or "-",
                            when(li.last_issue_at), str(li.accepted), str(li.failed),
                            f"[red]{li.uncertain}[/red]" if li.uncertain else "0")
    print_table(lists_table)
    out.print(f"Suppressions added this week: {status.suppressions_this_week}")
    for note in status.notes:
        out.print(f"Note: {note}", markup=False)
    if status.healthy:
        out.print("[green]Nothing needs a person.[/green]")
        return
    out.print("[bold red]Needs a person:[/bold red]")
    for item in status.needs_attention:
        out.print(f"  • {item}", markup=False)
    sys.exit(1)


@click.group("issues")
def issues_group() -> None:
    """Issues that were sent: list, show."""


@issues_group.command("list")
@list_option("Only the issues of this list.", required=False)
@row_formats
@boundary
def issues_list(list_name: str | None, row_format: RowFormat) -> None:
    """List issues, newest first, with their delivery counts."""
    from digest.services.delivery.reports import issue_rows
    from digest.services.storage.models import DeliveryStatus
    columns = [Column("id"), Column("list"), Column("number", "no."), Column("subject"),
               Column("status"), Column("created_at", "created (UTC)",
                                        lambda when: f"{when:%Y-%m-%d %H:%M}"),
               *(Column(s) for s in (DeliveryStatus.ACCEPTED, DeliveryStatus.FAILED,
                                     DeliveryStatus.UNCERTAIN))]
    print_rows(columns, ({"id": row.id, "list": row.list_name, "number": row.number,
                          "subject": row.subject, "status": row.status,
                          "created_at": row.created_at, DeliveryStatus.ACCEPTED: row.accepted,
                          DeliveryStatus.FAILED: row.failed,
                          DeliveryStatus.UNCERTAIN: row.uncertain}
                         for row in issue_rows(state().ctx, list_name)),
               row_format, empty="No issues yet.")


@issues_group.command("show")
@click.argument("issue_id", type=int)
@boundary
def issues_show(issue_id: int) -> None:
    """Show one issue: sections, delivery counts and failures."""
    from digest.services.delivery.reports import describe_issue
    for line in describe_issue(state().ctx, issue_id):
        out.print(line, markup=False)


# --- lists and subscribers -------------------------------------------------------------

@click.group("lists")
def lists_group() -> None:
    """Mailing lists: create, edit, list, show, delete."""


WHEN_NOTHING_MATCHES_HELP = ("For readers whose keywords have nothing new: skip sends them "
                             "no email, full sends them the whole issue.")
LANGUAGE_HELP = "Language of its emails (<html lang>), e.g. en, ar, fr."
LOOKBACK_HELP = ("Days an issue of this list looks back for entries, 1 to 3650; 0 goes "
                 "back to the lookback_days setting (7 unless set).")


def _lookback_days(days: int | None) -> str:
    """A list's window in words: its own, or the setting's."""
    setting = state().loaded.settings.lookback_days
    return (counted(days, "day") if days else
            f"{counted(setting, 'day')} (the lookback_days setting)")


@lists_group.command("create")
@list_option("The new list's name: lower-case letters, digits, - and _.")
@click.option("--title", help="The title shown in emails (default: from the name).")
@click.option("--when-nothing-matches", type=click.Choice([w.value for w in WhenNothingMatches]),
              default=WhenNothingMatches.SKIP.value, show_default=True,
              help=WHEN_NOTHING_MATCHES_HELP)
@click.option("--language", default="en", show_default=True, help=LANGUAGE_HELP)
@click.option("--lookback-days", type=click.IntRange(0, 3650), metavar="DAYS",
              help=LOOKBACK_HELP)
@boundary
def lists_create(list_name: str, title: str | None, when_nothing_matches: str,
                 language: str, lookback_days: int | None) -> None:
    """Create a list (`digest lists edit` sets its logo and what entries show)."""
    from subscribers.lists import create_list, edit_list
    created = create_list(state().ctx.db, list_name, title,
                          when_nothing_matches=when_nothing_matches)
    if language != "en" or lookback_days:
        edit_list(state().ctx.db, list_name, language=language, lookback_days=lookback_days)
    out.print(f"Created list {created.name} ({created.title}).", markup=False)


@lists_group.command("edit")
@list_option("The list to change.")
@click.option("--title", help="A new title.")
@click.option("--when-nothing-matches", type=click.Choice([w.value for w in WhenNothingMatches]),
              help=WHEN_NOTHING_MATCHES_HELP)
@click.option("--language", help=LANGUAGE_HELP)
@click.option("--logo", "logo_url", metavar="URL",
              help='Masthead logo (a wide PNG or JPEG, by URL); "" removes it.')
@click.option("--logo-alt", help="The logo's text for screen readers (default: the title).")
@click.option("--logo-width", type=click.IntRange(1, 5000),
              help="The logo's width in pixels (default: read from the image).")
@click.option("--logo-height", type=click.IntRange(1, 5000),
              help="The logo's height in pixels (default: read from the image).")
@click.option("--entry-parts", metavar="PARTS",
              help="What each entry shows besides its title, in order, comma-separated: "
                   "image, lead, summary, read_also, keywords.")
@click.option("--lead-length", "lead_max_chars", type=int,
              help="Longest lead, in characters; it is cut at the end of a sentence.")
@click.option("--lookback-days", type=click.IntRange(0, 3650), metavar="DAYS",
              help=LOOKBACK_HELP)
@boundary
def lists_edit(list_name: str, title: str | None, when_nothing_matches: str | None,  # noqa: PLR0913 - a click command: one parameter per option
               language: str | None, logo_url: str | None, logo_alt: str | None,
               logo_width: int | None, logo_height: int | None, entry_parts: str | None,
               lead_max_chars: int | None, lookback_days: int | None) -> None:
    """Change a list's title, what readers with unmatched keywords get, how its emails
    look, or how many days back its issues look."""
    from subscribers.lists import edit_list
    size = (logo_width, logo_height) if logo_width and logo_height else None
    if logo_url and size is None:
        from digest.services.feeds.fetch import image_sizes
        settings = state().loaded.settings
        size = image_sizes([logo_url], timeout=settings.fetch_timeout,
                           allow_private=settings.fetch_allow_private).get(logo_url)
        if size is None:
            raise InvalidInputError(f"could not read the size of the logo {logo_url}",
                                    hint="give it with --logo-width and --logo-height")
    edited = edit_list(state().ctx.db, list_name, title=title,
                       when_nothing_matches=when_nothing_matches, language=language,
                       logo_url=logo_url, logo_alt=logo_alt, logo_size=size,
                       entry_parts=entry_parts, lead_max_chars=lead_max_chars,
                       lookback_days=lookback_days)
    out.print(f"List {edited.name}: {edited.title}; when nothing matches a reader's keywords: "
              f"{edited.when_nothing_matches}; language {edited.language}; entries show "
              f"{edited.entry_parts.replace(',', ', ') or 'their title only'} (lead up to "
              f"{counted(edited.lead_max_chars, 'character')})"
              + (f"; logo {edited.logo_url} ({edited.logo_width}×{edited.logo_height}, "
                 f"alt {edited.logo_alt!r})" if edited.logo_url else "")
              + f"; issues look back {_lookback_days(edited.lookback_days)}.", markup=False)


@lists_group.command("list")
@row_formats
@boundary
def lists_list(row_format: RowFormat) -> None:
    """List the lists with subscriber counts by status."""
    from subscribers.lists import summarize_lists
    columns = [Column("name"), Column("title"), *(Column(s) for s in SubscriptionStatus)]
    print_rows(columns, ({"name": summary.name, "title": summary.title,
                          **{s: summary.counts[s] for s in SubscriptionStatus}}
                         for summary in summarize_lists(state().ctx.db)),
               row_format, empty="No lists yet. Create one with `digest lists create --list "
                                 "NAME`.")


@lists_group.command("show")
@list_option("The list to show.")
@boundary
def lists_show(list_name: str) -> None:
    """Show a list: its settings, subscribers by status and its latest issues."""
    from digest.services.delivery.reports import issue_rows
    from subscribers.lists import get_list, summarize_lists
    with state().ctx.db.session() as session:
        look = get_list(session, list_name)  # a clear error when there is no such list
        session.expunge(look)
    [summary] = [s for s in summarize_lists(state().ctx.db) if s.name == list_name]
    out.print(f"{summary.name}: {summary.title}", markup=False)
    out.print(f"When nothing matches a reader's keywords: {summary.when_nothing_matches}")
    out.print(f"Emails: language {look.language}; entries show "
              f"{look.entry_parts.replace(',', ', ') or 'their title only'} (lead up to "
              f"{counted(look.lead_max_chars, 'character')}); "
              + (f"logo {look.logo_url} ({look.logo_width}×{look.logo_height})"
                 if look.logo_url else "no logo"), markup=False)
    out.print(f"Issues look back {_lookback_days(look.lookback_days)}.", markup=False)
    out.print("Subscribers: " + ", ".join(f"{k} {v}" for k, v in summary.counts.items()))
    rows = issue_rows(state().ctx, list_name, limit=5)
    if not rows:
        out.print("No issues yet.")
    for row in rows:
        out.print(f"Issue {row.number} ({row.status}, {row.created} UTC): {row.subject} — "
                  f"{row.accepted} accepted, {row.failed} failed, {row.uncertain} uncertain",
                  markup=False)


@lists_group.command("delete")
@list_option("The list to delete.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@boundary
def lists_delete(list_name: str, yes: bool) -> None:
    """Delete a list with its subscriptions and issues."""
    from subscribers.lists import delete_list
    if not yes and _interactive():
        click.confirm(f"Delete list {list_name} with its subscriptions and issues?",
                      abort=True, err=True)
    delete_list(state().ctx.db, list_name)
    out.print(f"Deleted list {list_name}.", markup=False)


@click.group("subscribers")
def subscribers_group() -> None:
    """Subscribers: add, list, show, remove, forget, import, export."""


@subscribers_group.command("add")
@click.argument("email")
@list_option("The list to subscribe the address to.")
@click.option("--name", default="", help="The subscriber's name, for the greeting.")
@click.option("--keywords", default="", help="Only these sections (;-separated).")
@click.option("--confirm", "double_opt_in", is_flag=True,
              help="Double opt-in: email a confirmation link; pending until it is clicked.")
@boundary
def subscribers_add(email: str, list_name: str, name: str, keywords: str,
                    double_opt_in: bool) -> None:
    """Subscribe an address to a list (active at once, or pending with --confirm)."""
    from subscribers.subscriptions import add_subscriber
    wanted = [k.strip() for k in keywords.split(";") if k.strip()]
    if double_opt_in:
        from subscribers.optin import OptIn, request_subscription
        sent = request_subscription(state().ctx, list_name, email, name=name,
                                    keywords=wanted, source="cli")
        out.print({
            OptIn.SENT: f"Sent a confirmation link to {sent.email}; pending until it is "
                        "clicked.",
            OptIn.ALREADY: f"{sent.email} is already subscribed to {list_name}.",
            OptIn.THROTTLED: f"A confirmation went to {sent.email} minutes ago; not sent "
                             "again.",
            OptIn.REFUSED: f"{sent.email} bounced, complained or was forgotten; not "
                           "subscribed.",
        }[sent.outcome])
        if sent.outcome == OptIn.REFUSED:
            sys.exit(1)
        return
    result = add_subscriber(state().ctx.db, list_name, email, name=name, keywords=wanted)
    messages = {
        "added": f"Subscribed {result.email} to {list_name}.",
        "updated": f"Updated {result.email} on {list_name}.",
        "unchanged": f"{result.email} is already subscribed to {list_name}.",
        "suppressed": f"{result.email} left {list_name} or is suppressed; not re-subscribed.",
    }
    out.print(messages[result.outcome])
    if result.outcome == "suppressed":
        sys.exit(1)


@subscribers_group.command("list")
@list_option("The list whose subscribers to show.")
@click.option("--status", type=click.Choice([s.value for s in SubscriptionStatus]),
              help="Only subscriptions in this state (default: every state).")
@row_formats
@boundary
def subscribers_list(list_name: str, status: str | None, row_format: RowFormat) -> None:
    """List a list's subscribers: address, name, state, keywords, since when."""
    from subscribers.subscriptions import list_subscriptions
    rows = list_subscriptions(state().ctx.db, list_name, status)
    columns = [Column("email"), Column("name"), Column("status"),
               Column("keywords", placeholder="all"),
               Column("since", "since (UTC)", lambda when: f"{when:%Y-%m-%d}")]
    print_rows(columns, ({"email": r.email, "name": r.name, "status": r.status,
                          "keywords": list(r.keywords), "since": r.created_at} for r in rows),
               row_format)
    if row_format is RowFormat.TABLE:
        out.print(f"{counted(len(rows), 'subscriber')}.")


@subscribers_group.command("show")
@click.argument("email")
@boundary
def subscribers_show(email: str) -> None:
    """Show one subscriber and every list they are on."""
    from subscribers.subscriptions import show_subscriber
    person = show_subscriber(state().ctx.db, email)
    out.print(f"{person.email}" + (f" ({person.name})" if person.name else "")
              + f", known since {person.created_at:%Y-%m-%d}", markup=False)
    for sub in person.subscriptions:
        out.print(f"  {sub.list_name}: {sub.status}, topics: "
                  f"{'; '.join(sub.keywords) or 'all'}, source {sub.source}, since "
                  f"{sub.created_at:%Y-%m-%d}", markup=False)


@subscribers_group.command("remove")
@click.argument("email")
@list_option("The list to unsubscribe the address from.")
@boundary
def subscribers_remove(email: str, list_name: str) -> None:
    """Unsubscribe an address (kept as unsubscribed, so no import revives it)."""
    from subscribers.subscriptions import remove_subscriber
    changed = remove_subscriber(state().ctx.db, list_name, email)
    out.print(f"Unsubscribed {email} from {list_name}." if changed
              else f"{email} was already unsubscribed from {list_name}.")


@subscribers_group.command("forget")
@click.argument("email")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@boundary
def subscribers_forget(email: str, yes: bool) -> None:
    """Erase a person's data; only a hash stays, so they are never mailed again."""
    from subscribers.subscriptions import forget_subscriber
    if not yes and _interactive():
        click.confirm(f"Erase {email} from every list?", abort=True, err=True)
    existed = forget_subscriber(state().ctx.db, email)
    out.print(f"Forgot {email}." if existed else
              f"{email} was not known; it is now suppressed all the same.")


@subscribers_group.command("import")
@click.argument("path", metavar="FILE",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@list_option("The list to import the subscribers into.")
@boundary
def subscribers_import(path: Path, list_name: str) -> None:
    """Import FILE, a CSV (header: email, and optionally name, keywords separated by ;).

    Rejected rows are listed with their line numbers and written to FILE.rejects.csv.
    Addresses that left the list or were forgotten are never re-activated.
    """
    from subscribers.imports import import_csv
    with progress_bar(f"Importing {path.name}", enabled=_interactive()) as update:
        report = import_csv(state().ctx.db, list_name, path, on_progress=update)
    out.print(f"{counted(report.rows, 'row')}: {report.added} added, {report.updated} updated, "
              f"{report.unchanged} unchanged, {len(report.rejected)} rejected, "
              f"{report.suppressed} suppressed (left the list or forgotten; not re-added).")
    for line, reason in report.rejected[:50]:
        out.print(f"  line {line}: {reason}", markup=False)
    if len(report.rejected) > 50:
        out.print(f"  … {len(report.rejected) - 50} more")
    if report.rejects_path:
        out.print(f"Rejected rows are in {report.rejects_path}.", markup=False)


@subscribers_group.command("export")
@list_option("The list whose subscribers to export.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")
@click.option("--status", type=click.Choice([*(s.value for s in SubscriptionStatus), "all"]),
              default=SubscriptionStatus.ACTIVE.value, show_default=True,
              help="Only subscriptions in this state, or all of them.")
@boundary
def subscribers_export(list_name: str, out_path: Path | None, status: str) -> None:
    """Export a list's subscribers as CSV, in the format import reads."""
    from subscribers.imports import export_csv
    wanted = None if status == "all" else status
    if out_path is None:
        export_csv(state().ctx.db, list_name, sys.stdout, status=wanted)
        return
    from digest.services.storage.files import open_private
    with open_private(out_path, "w", encoding="utf-8", newline="") as handle:  # addresses
        count = export_csv(state().ctx.db, list_name, handle, status=wanted)
    err.print(f"Wrote {counted(count, 'subscriber')} to {out_path}.", markup=False)


# --- demo ------------------------------------------------------------------------------

@click.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("digest-demo"), show_default=True,
              help="The demo's own folder, for demo.db, digest.toml, outbox/, images/ and "
                   "preview.html; run again, it replaces only what it wrote there.")
@boundary
def demo_cmd(directory: Path) -> None:
    """Run the whole job offline on bundled sample feeds, in a folder of its own.

    It leaves a working desk: the database, its settings (digest.toml), the preview and
    the emails; then it prints the commands that go on from there. It shows warnings
    only; -v shows every log line too.
    """
    import logging
    import shutil

    from digest.edges.demo import digest_command, run_demo
    if not click.get_current_context().find_root().params.get("verbose"):
        # The demo tells its own story; the log lines of each step would only interrupt.
        logging.getLogger().setLevel(logging.WARNING)
    command = digest_command(sys.argv[0], cwd=Path.cwd(), which=shutil.which("digest"),
                             executable=sys.executable)
    run_demo(directory, console=err, interactive=_interactive(), progress=progress_bar,
             command=command)


# Registered with the top-level group by digest.edges.cli.
COMMANDS = [
    config_cmd,
    db,
    feeds,
    collect_cmd,
    preview_cmd,
    send_cmd,
    status_cmd,
    issues_group,
    lists_group,
    subscribers_group,
    demo_cmd,
]
