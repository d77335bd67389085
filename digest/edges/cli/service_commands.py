"""`digest serve`, `digest scheduler`, `digest schedules …` and `digest editors …`."""

from __future__ import annotations

import re
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta

import click

from digest.core.words import counted
from digest.edges.cli.base import boundary, err, list_option, out, state
from digest.edges.cli.output import Column, RowFormat, print_rows, row_formats
from digest.errors import InvalidInputError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(text: str, option: str) -> timedelta:
    """"90s", "30m", "6h" or "1d" as a timedelta; a clear error otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInputError(f"{option} {text!r} is not a duration like 30m, 6h or 1d")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


# --- schedules ---------------------------------------------------------------------------

@click.group("schedules")
def schedules_group() -> None:
    """Schedules: add, list, pause, resume, run, remove, history.

    A schedule sends a list's next issue by itself, at the times it names.
    """


@schedules_group.command("add")
@click.argument("name")
@list_option("The list this schedule sends.")
@click.option("--cron", "expression", metavar="EXPRESSION",
              help='When it fires, as cron: "0 8 * * mon" (day names or 0-7). An '
                   'alternative to --every: give one of the two.')
@click.option("--every", "friendly", metavar="PHRASE",
              help='When it fires, in words: "weekly on monday at 08:00", "daily at '
                   '07:30", "monthly on day 1 at 09:00". An alternative to --cron.')
@click.option("--timezone", required=True, help="IANA zone, e.g. Europe/London.")
@click.option("--send-when-empty", is_flag=True,
              help="Send even when nothing is new (default: skip that week).")
@click.option("--hold-for-approval", is_flag=True,
              help="Build the issue, then wait for an editor to approve it.")
@click.option("--approval-wait", default="2h", show_default=True,
              help="How long after the slot an approval may come (e.g. 2h).")
@click.option("--misfire-grace", default="6h", show_default=True,
              help="A slot missed by less runs once on start-up; by more, it is skipped.")
@boundary
def schedules_add(name: str, list_name: str, expression: str | None, friendly: str | None,  # noqa: PLR0913 - a click command: one parameter per option
                  timezone: str, send_when_empty: bool, hold_for_approval: bool,
                  approval_wait: str, misfire_grace: str) -> None:
    """Add a schedule for a list."""
    from schedules.service import add_schedule
    if expression and friendly:
        raise click.UsageError("--cron and --every are alternatives: give one of them, "
                               "not both.")
    if not expression and not friendly:
        raise click.UsageError("say when the schedule fires, with --cron or --every.")
    view = add_schedule(state().ctx.db, name, list_name, expression or friendly or "",
                        timezone, skip_empty=not send_when_empty,
                        hold_for_approval=hold_for_approval,
                        approval_wait=duration(approval_wait, "--approval-wait"),
                        misfire_grace=duration(misfire_grace, "--misfire-grace"))
    out.print(f"Added schedule {view.name} for {view.list_name}: {view.expression} "
              f"({view.timezone}).", markup=False)
    _print_fires(view.next_fires)


def _print_fires(fires: list[datetime]) -> None:
    for fire in fires:
        out.print(f"  next: {fire:%a %Y-%m-%d %H:%M %Z} ({fire.astimezone(UTC):%Y-%m-%d %H:%M} "
                  "UTC)", markup=False)


def _fires(fires: list[datetime]) -> str:
    return "\n".join(f"{f:%a %Y-%m-%d %H:%M %Z} · {f.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
                     for f in fires) or "paused"


@schedules_group.command("list")
@row_formats
@boundary
def schedules_list(row_format: RowFormat) -> None:
    """Every schedule with its next three fire times, local and UTC."""
    from schedules.service import list_schedules
    columns = [Column("name"), Column("list"), Column("expression", "when"),
               Column("timezone", "zone"),
               Column("paused", show=lambda paused: "yes" if paused else "no"),
               Column("next_fires", "next three (local · UTC)", _fires),
               Column("skip_empty", "skips empty weeks",
                      lambda skip: "yes" if skip else "no, sends when empty"),
               Column("approval_wait_minutes", "holds for approval",
                      lambda wait: f"{wait} min" if wait is not None else "no"),
               Column("misfire_grace_minutes", "misfire grace", lambda grace: f"{grace} min")]
    print_rows(columns, ({"name": view.name, "list": view.list_name,
                          "expression": view.expression, "timezone": view.timezone,
                          "paused": view.paused, "next_fires": view.next_fires,
                          "skip_empty": view.skip_empty,
                          "approval_wait_minutes": view.approval_wait_seconds // 60
                          if view.hold_for_approval else None,
                          "misfire_grace_minutes": view.misfire_grace_seconds // 60}
                         for view in list_schedules(state().ctx.db)),
               row_format, empty="No schedules yet. Add one with `digest schedules add`.")


@schedules_group.command("pause")
@click.argument("name")
@boundary
def schedules_pause(name: str) -> None:
    """Stop a schedule from firing until it is resumed."""
    from schedules.service import set_paused
    changed = set_paused(state().ctx.db, name, True)
    out.print(f"Paused {name}." if changed else f"{name} was already paused.")


@schedules_group.command("resume")
@click.argument("name")
@boundary
def schedules_resume(name: str) -> None:
    """Let a paused schedule fire again (from its next slot)."""
    from schedules.service import set_paused
    changed = set_paused(state().ctx.db, name, False)
    out.print(f"Resumed {name}." if changed else f"{name} was not paused.")


@schedules_group.command("remove")
@click.argument("name")
@boundary
def schedules_remove(name: str) -> None:
    """Delete a schedule and its history."""
    from schedules.service import remove_schedule
    remove_schedule(state().ctx.db, name)
    out.print(f"Removed schedule {name}.")


@schedules_group.command("run")
@click.argument("name")
@boundary
def schedules_run(name: str) -> None:
    """Fire a schedule now: its due slot if nobody ran it, else its next slot."""
    from digest.services.storage.db import utcnow
    from digest.services.storage.schedule_models import RunStatus
    from schedules.runner import manual_slot, run_slot
    from schedules.service import find_schedule
    ctx = state().ctx
    now = utcnow()
    with ctx.db.session() as session:
        schedule = find_schedule(session, name)
        session.expunge(schedule)
    slot = manual_slot(ctx, schedule, now)
    result = run_slot(ctx, schedule.id, slot, trigger="manual", now=now)
    out.print(f"{name}, slot {slot:%Y-%m-%d %H:%M %Z}: {result.status}"
              + (f" — {result.message}" if result.message else ""), markup=False)
    if result.status in (RunStatus.FAILED, RunStatus.TAKEN):
        sys.exit(1)


@schedules_group.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1),
              help="How many runs to show, newest first.")
@row_formats
@boundary
def schedules_history(name: str, limit: int, row_format: RowFormat) -> None:
    """Schedule NAME's runs: slot, started, finished, issue, counts, outcome."""
    from schedules.service import history
    columns = [Column("slot", "slot (local)", lambda slot: slot.replace("T", " ")),
               Column("started_at", "started (UTC)"),
               Column("finished_at", "finished (UTC)"), Column("issue"),
               Column("counts", show=lambda counts: ", ".join(
                   f"{k} {v}" for k, v in sorted(counts.items()))),
               Column("status", "outcome"), Column("message"), Column("trigger", "by"),
               Column("attempts", "tries")]
    print_rows(columns, ({"slot": run.slot_key, "started_at": run.started_at,
                          "finished_at": run.finished_at, "issue": run.issue_id,
                          "counts": dict(run.counts), "status": run.status,
                          "message": run.message, "trigger": run.trigger,
                          "attempts": run.attempts}
                         for run in history(state().ctx.db, name, limit)),
               row_format, empty=f"Schedule {name} has not run yet.")


# --- daemons -----------------------------------------------------------------------------

@click.command("scheduler")
@boundary
def scheduler_cmd() -> None:
    """Run the scheduler alone (no web app) until SIGTERM or Ctrl-C."""
    from schedules.daemon import Daemon
    daemon = Daemon(state().ctx)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    daemon.start()
    err.print("Scheduler running; it sends only while it holds the scheduler lock.")
    stop.wait()
    err.print("Stopping: no new runs; a send in progress stops at a batch boundary.")
    daemon.stop()


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, e.g. in a container).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port to listen on.")
@click.option("--no-scheduler", is_flag=True, help="Serve the web app only.")
@boundary
def serve_cmd(host: str, port: int, no_scheduler: bool) -> None:
    """Run the web app and the scheduler in one process (uvicorn)."""
    import uvicorn
    from starlette.concurrency import run_in_threadpool

    from digest.edges.web.app import create_app
    from schedules.daemon import Daemon
    ctx = state().ctx
    daemon = None if no_scheduler else Daemon(ctx)

    async def start() -> None:
        if daemon is not None:
            daemon.start()

    async def stop() -> None:
        if daemon is not None:
            await run_in_threadpool(daemon.stop)

    def scheduler_state() -> str:
        return "off" if daemon is None else "leader" if daemon.leading else "standby"

    app = create_app(ctx, on_start=start, on_stop=stop, scheduler_state=scheduler_state)
    err.print(f"Serving on http://{host}:{port} "
              f"({'web app only' if no_scheduler else 'web app and scheduler'}); "
              f"public links use {ctx.settings.base_url}")
    # uvicorn turns SIGTERM and SIGINT into a clean shutdown, which stops the scheduler.
    # Behind a reverse proxy, uvicorn takes the client address from X-Forwarded-For only
    # when the request comes from one of forwarded_allow_ips.
    proxies = ctx.settings.forwarded_allow_ips.strip()
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=bool(proxies),
                forwarded_allow_ips=proxies or None)


# --- editors -----------------------------------------------------------------------------

@click.group("editors")
def editors_group() -> None:
    """Web app accounts: add, list, remove, sign-out."""


@editors_group.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@boundary
def editors_add(name: str, password_stdin: bool) -> None:
    """Create an editor (or set a new password); the password is asked for, never echoed."""
    from digest.services.building.editors import add_editor
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True,
                                err=True)
    if add_editor(state().ctx.db, name, password):
        out.print(f"Editor {name} can sign in.")
    else:
        out.print(f"New password for {name}; every session of theirs has ended.")


@editors_group.command("list")
@row_formats
@boundary
def editors_list(row_format: RowFormat) -> None:
    """Editors and their last sign-in."""
    from digest.services.building.editors import list_editors
    columns = [Column("name"), Column("last_sign_in", "last sign-in (UTC)",
                                      lambda last: f"{last:%Y-%m-%d %H:%M}" if last else "never")]
    print_rows(columns, ({"name": name, "last_sign_in": last}
                         for name, last in list_editors(state().ctx.db)),
               row_format, empty="No editors yet. Add one with `digest editors add NAME`.")


@editors_group.command("remove")
@click.argument("name")
@boundary
def editors_remove(name: str) -> None:
    """Delete an editor account; every session of theirs ends at once."""
    from digest.services.building.editors import remove_editor
    if not remove_editor(state().ctx.db, name):
        raise InvalidInputError(f"no editor named {name!r}")
    out.print(f"Removed editor {name}; every session of theirs has ended.")


@editors_group.command("sign-out")
@click.argument("name")
@boundary
def editors_sign_out(name: str) -> None:
    """End every session of an editor (a lost laptop, a shared computer)."""
    from digest.services.building.editors import end_sessions, list_editors
    db = state().ctx.db
    if name not in {n for n, _ in list_editors(db)}:
        raise InvalidInputError(f"no editor named {name!r}")
    ended = end_sessions(db, name)
    out.print(f"Ended {counted(ended, 'session')} of {name}.", markup=False)


# Registered with the top-level group by digest.edges.cli.
COMMANDS = [
    schedules_group,
    scheduler_cmd,
    serve_cmd,
    editors_group,
]
